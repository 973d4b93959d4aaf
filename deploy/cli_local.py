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
from deploy.options import KILL, PS, RM, RUN, START, STOP, Opt, Unsupported, parse

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


def run(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(RUN, argv, interspersed=False)
        if not args or o["tty"] or o.get("cidfile"):  # a terminal: click's session (deploy/streams.py) sets it up
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
        call.send({"open": {"create": cfg, "start": True, "stdin": o["interactive"]}})
        return _attached(call, o["interactive"])
    except CallError as e:
        return _failed(e, host, RUN_ERROR)
    except NotServed as e:
        return _failed(CallError("UNAVAILABLE", str(e)), host, RUN_ERROR)


def create(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(RUN[:-1], argv, interspersed=False)  # RUN without -d: CONTAINER
        if not args or o.get("cidfile"):
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


def start(host: str, argv: Sequence[str]) -> int | None:
    return _each(host, argv, START, "StartContainer",
                 lambda o, ref: None if o["attach"] or o["interactive"] else {"id": ref})


def stop(host: str, argv: Sequence[str]) -> int | None:
    return _each(host, argv, STOP, "StopContainer", lambda o, ref: {"id": ref, "timeout": o["timeout"]})


def kill(host: str, argv: Sequence[str]) -> int | None:
    return _each(host, argv, KILL, "KillContainer", lambda o, ref: {"id": ref, "signal": o["sig"]})


def rm(host: str, argv: Sequence[str]) -> int | None:
    return _each(host, argv, RM, "RemoveContainer", lambda o, ref: {"id": ref, "force": o["force"], "volumes": o["volumes"]})


def _each(host: str, argv: Sequence[str], opts: Sequence[Opt], method: str,
          request: Callable[[dict[str, Any], str], dict[str, Any] | None]) -> int | None:
    """docker's multi-container verbs (deploy/cli.py _each): go on after an error, print each
    container that worked, exit 1 if any failed."""
    try:
        o, refs = parse(opts, argv)
        if not refs or any(request(o, ref) is None for ref in refs):
            return None
        cl = LocalClient(host)
        first = cl.open(method)  # nothing listens: None, before anything was asked
    except (Unsupported, NotServed):
        return None
    failed = False
    for i, ref in enumerate(refs):
        try:
            call = first if i == 0 else cl.open(method)
            try:
                call.send(request(o, ref) or {})
                for _ in call:
                    pass
            finally:
                call.close()
            display.echo(ref)
        except CallError as e:
            _failed(e, host)
            failed = True
        except NotServed as e:
            _failed(CallError("UNAVAILABLE", str(e)), host)
            failed = True
    return 1 if failed else 0


def _failed(e: CallError, host: str, code: int = 1) -> int:
    sys.stderr.write(daemon_error(e.code, e.details, host) + "\n")
    return code


def _attached(call: Call, stdin: bool) -> int:
    """Stream the container's output to ours until its exit status comes; our SIGINT, SIGTERM and
    SIGHUP go to the container, and with -i our stdin to its (as the gRPC session does)."""

    names = {_signal.SIGINT: "SIGINT", _signal.SIGTERM: "SIGTERM", _signal.SIGHUP: "SIGHUP"}
    if stdin:
        import _thread  # not threading: its import is a few ms, and this thread must not hold the exit

        _thread.start_new_thread(_pump_stdin, (call,))

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


def _pump_stdin(call: Call) -> None:
    from binascii import b2a_base64

    try:
        while data := os.read(0, 32768):
            call.send({"stdin": b2a_base64(data, newline=False).decode()})
        call.send({"close_stdin": True})
    except OSError:
        pass  # the call ended (its socket closed) while we read, or stdin is unreadable


# --- printing, shared with the click commands -------------------------------------------------

def _status(c: dict[str, Any], now: float) -> str:
    state = c["state"]
    if state == "running":
        health = c.get("health", "")
        note = {"": "", "starting": " (health: starting)"}.get(health, f" ({health})")
        return f"Up {display.human_duration(now - c['started_at'])}{note}"
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
