"""The `dockyard` command's start-up: the fast commands (deploy/entry.py FAST) import nothing heavy,
their option parser agrees with click's, the launcher runs them, and the agent's local API answers
as its gRPC API does (agent/local_api.py)."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from agent import local_wire as wire
from deploy import cli, options
from tests.agent_harness import REPO, AgentProcess

# What no fast command may import: each costs 10-75 ms of a start on this machine; and the
# standard modules that together cost 12-15 ms of CPU (re, json, socket and their enum and
# collections: agent/local_wire.py says how they are done without).
HEAVY = ("grpc", "google.protobuf", "click", "yaml", "asyncssh", "rich", "prometheus_client", "deploy.cli",
         "deploy.bootstrap", "deploy.stack", "agent.images", "protos", "typing", "dataclasses", "inspect",
         "re", "json", "socket", "selectors", "enum", "collections", "signal", "struct")


def _imports_of(argv: list[str]) -> tuple[int, list[str], str]:
    """Run deploy.entry.main(argv) in a fresh `python -I -S` (as the launcher does); its exit status,
    the heavy modules it imported, and its stdout."""
    code = ("import sys\n"
            f"sys.path[0:0] = {[str(REPO), *_site()]!r}\n"
            "from deploy.entry import main\n"
            "rc = main(sys.argv[1:])\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}"
            f" or any(m.startswith(h + '.') for h in {HEAVY!r}))\n"
            "sys.stderr.write(repr([rc, heavy]))\n")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, *argv], capture_output=True, text=True, timeout=60)
    rc, heavy = ast.literal_eval(r.stderr.strip().splitlines()[-1])
    return rc, heavy, r.stdout


def _site() -> list[str]:
    import site

    return site.getsitepackages()


def test_the_fast_path_constants_are_the_settings_ones() -> None:
    """Written out where they are used, because importing their modules costs more than a fast
    command may (common.settings: tomllib, typing; common.transport: grpc)."""
    from common import settings, transport
    from deploy import entry

    assert f"unix://{settings.AGENT_SOCKET}" == entry.DEFAULT_HOST
    assert transport.MAX_MESSAGE == wire.MAX_FRAME


def test_version_imports_nothing_heavy() -> None:
    rc, heavy, out = _imports_of(["--version"])
    assert (rc, heavy, out) == (0, [], "dockyard, version 0.1.0\n")


@pytest.mark.parametrize("argv", [
    ["--name", "web", "-e", "A=1", "-eB=2", "--env=C=3", "-it", "--rm", "busybox", "sh", "-c", "x"],
    ["-d", "--network", "none", "-p", "8080:80", "-p8081:81", "-m", "64m", "--cpus=0.5", "busybox"],
    ["--pids-limit", "-1", "-c", "512", "--entrypoint", "", "busybox", "--rm", "-x"],
    ["--net", "host", "-l", "a=b", "--label", "c=d", "-w", "/tmp", "-u", "1:2", "busybox", "--", "ls"],
    ["--security-opt", "seccomp=unconfined", "--restart", "on-failure:3", "--stop-timeout", "5", "busybox"],
])
def test_fast_parser_agrees_with_click(argv: list[str]) -> None:
    ctx = cli.run.make_context("run", list(argv))
    values, args = options.parse(options.RUN, argv, interspersed=False)
    want = {k: v for k, v in ctx.params.items() if k not in ("image", "command")}
    assert values == want
    assert args == [ctx.params["image"], *ctx.params["command"]]


@pytest.mark.parametrize("argv", [
    ["--help"], ["--nope", "busybox"], ["--name"], ["-c", "x", "busybox"], ["--rm=1", "busybox"], ["-Z", "busybox"],
])
def test_fast_parser_leaves_to_click_what_it_is_unsure_of(argv: list[str]) -> None:
    with pytest.raises(options.Unsupported):
        options.parse(options.RUN, argv, interspersed=False)
    with pytest.raises((click.exceptions.Exit, click.UsageError)):
        cli.run.make_context("run", list(argv))


def test_ps_parser_agrees_with_click() -> None:
    argv = ["-a", "-q", "--no-trunc", "-f", "name=x", "--filter=label=a=b", "--format", "json"]
    ctx = cli.ps.make_context("ps", list(argv))
    assert options.parse(options.PS, argv) == (ctx.params, [])


@pytest.mark.parametrize(("command", "table", "argv"), [
    ("start", "START", ["-a", "-i", "c1", "c2"]), ("stop", "STOP", ["-t", "3", "c1"]),
    ("stop", "STOP", ["--time=-1", "c1"]), ("kill", "KILL", ["-s", "TERM", "c1"]), ("rm", "RM", ["-f", "a", "b"]),
])
def test_lifecycle_parsers_agree_with_click(command: str, table: str, argv: list[str]) -> None:
    ctx = getattr(cli, command).make_context(command, list(argv))
    values, refs = options.parse(getattr(options, table), argv)
    assert {**values, "containers": tuple(refs)} == ctx.params


def test_launcher_script(tmp_path: Path) -> None:
    from deploy import launcher

    path = tmp_path / "dockyard"
    launcher.write(str(path))
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith(f"#!{sys.executable} -IS\n")
    r = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "PYTHONPATH": "/nonexistent"})
    assert (r.returncode, r.stdout) == (0, "dockyard, version 0.1.0\n")


def test_no_agent_is_reported_through_grpc(tmp_path: Path) -> None:
    """Nothing serves the local API: the command goes to click and gRPC, which say so as before."""
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "-H", f"unix://{tmp_path}/none.sock", "ps"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1
    assert r.stderr.startswith(f"Cannot connect to the dockyard agent at unix://{tmp_path}/none.sock.")


# --- with a real agent ------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("argv", [["ps", "-a"], ["run", "--rm", "--network", "none", "busybox", "true"],
                                  ["create", "--name", "startup-c", "busybox", "true"],
                                  ["container", "ls", "-a"],  # docker's group forms take the same path
                                  ["container", "run", "--rm", "--network", "none", "busybox", "true"],
                                  # volumes and a tmpfs go as typed: the agent parses them
                                  ["run", "--rm", "--network", "none", "-v", "startupv:/a", "--mount",
                                   "type=tmpfs,dst=/m", "--tmpfs", "/t:size=1m", "busybox", "true"]])
def test_fast_commands_import_nothing_heavy(clean_agent: AgentProcess, argv: list[str]) -> None:
    rc, heavy, out = _imports_of(["-H", clean_agent.host, *argv])
    assert rc == 0 and heavy == [], (rc, heavy, out)


@pytest.mark.root
def test_launcher_runs_the_fast_path(clean_agent: AgentProcess, tmp_path: Path) -> None:
    from deploy import launcher

    path = tmp_path / "dockyard"
    launcher.write(str(path))
    r = subprocess.run([str(path), "-H", clean_agent.host, "run", "--rm", "busybox", "sh", "-c", "echo hi; exit 4"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (4, "hi\n")
    cid = subprocess.run([str(path), "-H", clean_agent.host, "run", "-d", "--name", "fastd", "busybox", "sleep", "30"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    ps = subprocess.run([str(path), "-H", clean_agent.host, "ps"], capture_output=True, text=True, timeout=60,
                        check=True).stdout
    assert cid[:12] in ps and "fastd" in ps and "Up " in ps
    r = subprocess.run([str(path), "-H", clean_agent.host, "run", "--rm", "no-such-image:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 125 and r.stderr.startswith("Error response from daemon: ") and "no-such-image" in r.stderr


@pytest.mark.root
def test_fast_run_pipes_stdin(clean_agent: AgentProcess, tmp_path: Path) -> None:
    from deploy import launcher

    path = tmp_path / "dockyard"
    launcher.write(str(path))
    r = subprocess.run([str(path), "-H", clean_agent.host, "run", "-i", "--rm", "busybox", "wc", "-c"],
                       input=b"x" * 1_000_000, capture_output=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, b"1000000"), r.stderr
    rc, heavy, _ = _imports_of(["-H", clean_agent.host, "run", "-i", "--rm", "busybox", "true"])
    assert (rc, heavy) == (0, [])


@pytest.mark.root
def test_lifecycle_verbs_go_the_fast_way(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("--name", "verbs", "busybox", "sleep", "60")
    for argv, out in ((["stop", "-t", "0", "verbs"], "verbs\n"), (["start", "verbs"], "verbs\n"),
                      (["kill", "-s", "KILL", cid[:12]], f"{cid[:12]}\n"), (["rm", "-f", "verbs", "nope"], "verbs\n")):
        rc, heavy, stdout = _imports_of(["-H", clean_agent.host, *argv])
        assert heavy == [] and stdout == out, (argv, heavy, stdout)
        assert rc == (1 if "nope" in argv else 0)
    assert clean_agent.cli("ps", "-a", "-q").stdout == ""


def _local_call(a: AgentProcess, frames: list[bytes]) -> list[tuple[bytes, Any]]:
    """Frames sent raw to the agent's local API socket; the frames it answers (it closes after a call)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(wire.socket_path(str(a.socket)))
        for f in frames:
            s.sendall(f)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return _frames(data)


def _frames(data: bytes) -> list[tuple[bytes, Any]]:
    out = []
    while len(data) >= wire.HEADER_SIZE:
        kind, n = wire.header(data[:wire.HEADER_SIZE])
        if len(data) < wire.HEADER_SIZE + n:
            break
        body = data[wire.HEADER_SIZE:wire.HEADER_SIZE + n]
        out.append((kind, json.loads(body) if body else None))
        data = data[wire.HEADER_SIZE + n:]
    return out


@pytest.mark.root
def test_local_api_answers_as_grpc_does(clean_agent: AgentProcess) -> None:
    a = clean_agent
    info = _local_call(a, [wire.encode(wire.CALL, {"method": "Info"}), wire.encode(wire.MESSAGE, {})])
    assert info[0][0] == wire.MESSAGE and info[0][1]["name"] == f"test-{a.bridge}" and info[-1][0] == wire.END
    # errors carry gRPC's status names and the servicer's message
    missing = _local_call(a, [wire.encode(wire.CALL, {"method": "InspectContainer"}),
                              wire.encode(wire.MESSAGE, {"id": "no-such-container"})])
    assert missing[-1][0] == wire.ERROR and missing[-1][1]["code"] == "NOT_FOUND"
    assert "no-such-container" in missing[-1][1]["message"]
    bad = _local_call(a, [wire.encode(wire.CALL, {"method": "InspectContainer"}),
                          wire.encode(wire.MESSAGE, {"idd": "x"})])
    assert bad[-1][0] == wire.ERROR and bad[-1][1]["code"] == "INVALID_ARGUMENT" and "idd" in bad[-1][1]["message"]
    nope = _local_call(a, [wire.encode(wire.CALL, {"method": "Nope"})])
    assert nope == [(wire.ERROR, {"code": "UNIMPLEMENTED", "message": "no such call: {'method': 'Nope'}"})]
    # the socket goes with the agent
    assert Path(wire.socket_path(str(a.socket))).exists()
