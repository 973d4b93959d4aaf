"""The common one-host commands without click, grpc or protobuf: `run` (without -i or -t), `create`
and `ps`, through the agent's local API (deploy/local.py). deploy/entry.py sends them here.

Each returns the exit status, or None to hand the command to click (deploy/cli.py), which then
does it over gRPC: when the parser is unsure of the arguments (deploy/options.py), a value is bad
(click words the error), a terminal or stdin is wanted, or the agent serves no local API. None is
only returned before anything was sent, so nothing is done twice.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: it imports enum (agent/local_wire.py)
import os
import sys
import time

from deploy import display
from deploy.containers import RUN_ERROR, BadOption, build_config, start_error_code
from deploy.local import Call, CallError, LocalClient, NotServed, daemon_error
from deploy.options import PS, RUN, Unsupported, parse

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


def run(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(RUN, argv, interspersed=False)
        if not args or o["interactive"] or o["tty"]:
            return None
        cfg = build_config(args[0], args[1:], o)
        cl = LocalClient(host)
        if o["detach"]:
            created = cl.call("CreateContainer", {"config": cfg})
        else:
            call = cl.open("Attach")
    except (Unsupported, BadOption, NotServed):
        return None
    except CallError as e:
        return _failed(e, host, RUN_ERROR)
    try:
        if o["detach"]:
            cl.call("StartContainer", {"id": created["id"]})
            display.echo(created["id"])
            return 0
        # One call creates, starts and streams it, and ends with its exit status (after its removal
        # with --rm, as docker's run waits for).
        call.send({"open": {"create": cfg, "start": True}})
        return _attached(call)
    except CallError as e:
        return _failed(e, host, RUN_ERROR)
    except NotServed as e:
        return _failed(CallError("UNAVAILABLE", str(e)), host, RUN_ERROR)


def create(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(RUN[:-1], argv, interspersed=False)  # RUN without -d: CONTAINER
        if not args:
            return None
        cfg = build_config(args[0], args[1:], o)
        created = LocalClient(host).call("CreateContainer", {"config": cfg})
    except (Unsupported, BadOption, NotServed):
        return None
    except CallError as e:
        return _failed(e, host)
    display.echo(created["id"])
    return 0


def ps(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(PS, argv)
        if args:
            return None
        f = dict(x.partition("=")[::2] for x in o["filters"])
        resp = LocalClient(host).call("ListContainers", {"all": o["all_"], "filters": f})
    except (Unsupported, NotServed):
        return None
    except CallError as e:
        return _failed(e, host)
    print_containers(resp["containers"], o["quiet"], o["no_trunc"], o["fmt"])
    return 0


def _failed(e: CallError, host: str, code: int = 1) -> int:
    sys.stderr.write(daemon_error(e.code, e.details, host) + "\n")
    return code


def _attached(call: Call) -> int:
    """Stream the container's output to ours until its exit status comes; our SIGINT, SIGTERM and
    SIGHUP go to the container (as the gRPC session proxies them)."""

    names = {_signal.SIGINT: "SIGINT", _signal.SIGTERM: "SIGTERM", _signal.SIGHUP: "SIGHUP"}

    def proxy(signum: int, _frame: object) -> None:
        call.send({"signal": names[signum]})

    old: dict[int, Any] = {s: _signal.signal(s, proxy) for s in names}
    try:
        for out in call:
            if "stdout" in out or "stderr" in out:
                from binascii import a2b_base64

                fd, data = (1, out["stdout"]) if "stdout" in out else (2, out["stderr"])
                os.write(fd, a2b_base64(data))
            elif "exit" in out:
                ex = out["exit"]
                if ex.get("error"):  # it never ran: run's own error
                    os.write(2, (ex["error"].rstrip() + "\n").encode())
                    return start_error_code(ex["error"])
                return int(ex.get("exit_code", 0))
        raise CallError("INTERNAL", "the stream ended without an exit status")
    finally:
        for s, h in old.items():
            _signal.signal(s, h)
        call.close()


# --- printing, shared with the click commands -------------------------------------------------

def _status(c: dict[str, Any], now: float) -> str:
    state = c["state"]
    if state == "running":
        return f"Up {display.human_duration(now - c['started_at'])}"
    if state == "paused":
        return f"Up {display.human_duration(now - c['started_at'])} (Paused)"
    if state == "restarting":
        return f"Restarting ({c['exit_code']}) {display.ago(c['finished_at'])}"
    if state == "exited":
        if not c["finished_at"]:
            return "Created"
        return f"Exited ({c['exit_code']}) {display.ago(c['finished_at'])}"
    return str(state).capitalize()


def _ports(ports: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['protocol']}"
                     for p in ports)


def print_containers(cs: list[dict[str, Any]], quiet: bool, no_trunc: bool, fmt: str) -> None:
    """`ps`: ContainerSummary messages in their JSON form (every field present)."""
    if quiet:
        for c in cs:
            display.echo(c["id"] if no_trunc else c["id"][:12])
        return
    if fmt == "json":
        display.emit_json(cs)
        return
    now = time.time()
    cmd: Callable[[str], str] = str if no_trunc else display.trunc_command
    rows = [[c["id"] if no_trunc else c["id"][:12], c["image"], cmd(c["command"]), display.ago(c["created"]),
             _status(c, now), _ports(c["ports"]), c["name"]] for c in cs]
    display.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)
