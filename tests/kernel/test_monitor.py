"""The container monitor (agent/runtime/monitor/monitor.c): what stays of a shim while a container runs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from agent.runtime import monitor
from tests.agent_harness import AgentProcess, import_busybox
from tests.images import busybox_tar

pytestmark = pytest.mark.root


def _info(a: AgentProcess, cid: str) -> dict[str, int]:
    return dict(json.loads((a.root / "containers" / cid / "init.pid").read_text()))


def _private_kib(pid: int) -> int:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        fields[k] = int(v.split()[0])
    return fields["Private_Clean"] + fields["Private_Dirty"]


def test_the_long_lived_process_is_the_small_monitor_and_the_init_is_its_child(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sleep", "60")
    info = _info(clean_agent, cid)
    shim, init = int(info["shim_pid"]), int(info["pid"])
    assert os.readlink(f"/proc/{shim}/exe") == str(monitor.BINARY)
    stat = Path(f"/proc/{init}/stat").read_text()
    assert int(stat[stat.rindex(")") + 2:].split()[1]) == shim  # the init's parent
    # A forked CPython kept ~2.8 MiB private; the monitor must stay far below the 2 MiB target.
    assert _private_kib(shim) < 1024, _private_kib(shim)
    clean_agent.cli("rm", "-f", cid, check=True)
    clean_agent.wait_for(lambda: not os.path.exists(f"/proc/{shim}"), 5, "the monitor to exit and be reaped")


@pytest.mark.slow
def test_log_is_docker_json_file_with_partial_lines_and_bad_utf8(clean_agent: AgentProcess) -> None:
    script = "printf 'q\"b\\\\s\\tc\\001 \\303\\251 \\377\\n'; printf 'err\\n' >&2; printf 'partial'"
    cid = clean_agent.run_detached("--name", "logfmt", "busybox", "sh", "-c", script)
    assert clean_agent.cli("wait", cid).stdout.strip() == "0"
    lines = (clean_agent.root / "containers" / cid / "container.log").read_bytes().splitlines()
    entries = [json.loads(ln) for ln in lines]
    assert all(list(e) == ["log", "stream", "time"] for e in entries), entries
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["time"]) for e in entries)
    out = [e["log"] for e in entries if e["stream"] == "stdout"]
    err = [e["log"] for e in entries if e["stream"] == "stderr"]
    # Valid UTF-8 (é) passes through; the lone 0xff byte becomes U+FFFD, as docker's reader does.
    assert "".join(out) == 'q"b\\s\tc\x01 \u00e9 \ufffd\npartial'
    assert out[-1] == "partial"  # no newline: a partial entry, as json-file writes it
    assert err == ["err\n"]
    logs = clean_agent.cli("logs", "logfmt")
    assert logs.stdout.endswith("partial") and "\u00e9" in logs.stdout
    clean_agent.cli("rm", "logfmt", check=True)


@pytest.mark.slow
def test_a_missing_program_fails_the_start_like_docker(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--name", "noexec", "busybox", "/no/such/program")
    assert r.returncode == 127, (r.returncode, r.stderr)
    assert "/no/such/program" in r.stderr
    state = clean_agent.inspect("noexec")["State"]
    assert state["ExitCode"] == 127 and "/no/such/program" in state["Error"]
    clean_agent.cli("rm", "noexec", check=True)


@pytest.mark.slow
def test_an_execve_failure_after_the_start_reaches_the_log_and_the_exit_status(
        clean_agent: AgentProcess, tmp_path: Path) -> None:
    # An executable file that is no program: only execve itself can tell, after the start, so the
    # init reports it to the monitor, which logs it and puts it in exit.json.
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN printf 'not a program' > /x && chmod +x /x\n")
    clean_agent.cli("build", "-t", "badexec", str(tmp_path), check=True, timeout=120)
    r = clean_agent.cli("run", "--name", "badexec", "badexec", "/x")
    assert r.returncode == 126, (r.returncode, r.stderr)
    assert r.stderr.lower().count("exec format error") == 1, r.stderr  # once: the container's output
    state = clean_agent.inspect("badexec")["State"]
    assert state["ExitCode"] == 126 and "/x" in state["Error"], state
    assert "/x" in clean_agent.cli("logs", "badexec").stderr
    clean_agent.cli("rm", "badexec", check=True)
    clean_agent.cli("rmi", "badexec", check=True)


@pytest.mark.slow
def test_cgroup_favor_dynmods_mounts_its_hierarchy_for_the_agents_life(tmp_path: Path) -> None:
    a = AgentProcess(tmp_path / "fdm")
    a.extra_args = ["--cgroup-favor-dynmods"]
    point = str(a.root / "cgroup-dynmods")
    try:
        a.start()
        mounts = Path("/proc/self/mounts").read_text()
        assert any(ln.split()[1] == point and "favordynmods" in ln and "name=dockyard" in ln
                   for ln in mounts.splitlines()), mounts
        import_busybox(a, busybox_tar(tmp_path / "busybox.tar"))
        r = a.cli("run", "--rm", "busybox", "cat", "/proc/self/cgroup")
        assert r.returncode == 0 and "name=dockyard" in r.stdout, r.stdout
        a.stop()
        assert point not in Path("/proc/self/mounts").read_text()
        assert not os.path.exists(point)
    finally:
        a.destroy()


@pytest.mark.slow
def test_a_client_that_stops_reading_or_speaks_garbage_does_not_stall_the_container(clean_agent: AgentProcess) -> None:
    import socket
    import struct
    import time

    cid = clean_agent.run_detached("busybox", "sh", "-c",
                                   "sleep 1; i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done")
    sock = clean_agent.root / "run" / f"{cid[:12]}.sock"
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(sock))  # and never reads: the monitor drops it after its send timeout
    bad = socket.socket(socket.AF_UNIX)
    bad.connect(str(sock))
    bad.sendall(struct.pack(">cI", b"i", 1 << 30))  # a frame longer than the monitor takes: dropped
    t0 = time.monotonic()
    assert clean_agent.cli("wait", cid, timeout=60).stdout.strip() == "0"
    assert time.monotonic() - t0 < 30
    out = clean_agent.cli("logs", cid).stdout.splitlines()
    assert len(out) == 20000 and out[0] == "line0" and out[-1] == "line19999", (len(out), out[:2], out[-2:])
    stuck.close()
    bad.close()
