"""kill -9 the agent: containers keep running, and the next agent adopts them (and learns the real
exit code of one that ended while no agent was there)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = pytest.mark.root


@pytest.mark.slow
def test_agent_kill9_and_adoption(clean_agent: AgentProcess) -> None:
    a = clean_agent
    ticker = a.run_detached("--name", "ticker", "-p", "127.0.0.1::80", "busybox", "sh", "-c",
                            "echo ok > /tmp/index.html; httpd -p 80 -h /tmp; "
                            "i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.1; done")
    short = a.run_detached("--name", "short", "busybox", "sh", "-c", "sleep 1.5; exit 7")
    pid = int(a.inspect(ticker)["State"]["Pid"])
    a.kill9()
    time.sleep(2.5)  # `short` ends while no agent runs
    os.kill(pid, 0)  # the container survived its agent
    a.start()
    assert a.inspect(ticker)["State"]["Status"] == "running"
    assert int(a.inspect(ticker)["State"]["Pid"]) == pid
    state = a.inspect(short)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 7)
    # Everything works on the adopted container: logs -f, exec, ports, stop.
    port = a.cli("port", ticker, "80").stdout.strip().rsplit(":", 1)[1]
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
        assert r.read() == b"ok\n"
    assert a.cli("exec", ticker, "cat", "/tmp/index.html").stdout == "ok\n"
    n = len(a.cli("logs", ticker).stdout.splitlines())
    a.wait_for(lambda: len(a.cli("logs", ticker).stdout.splitlines()) > n + 3, what="logs after adoption")
    a.cli("stop", "-t", "1", ticker, check=True)
    assert a.inspect(ticker)["State"]["Status"] == "exited"
    with __import__("pytest").raises(ProcessLookupError):
        os.kill(pid, 0)


def test_shim_killed_is_reported_and_cleaned(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.run_detached("busybox", "sleep", "60")
    import json

    info = json.loads((a.root / "containers" / cid / "init.pid").read_text())
    os.kill(info["shim_pid"], 9)
    state = a.wait_for(lambda: (s := a.inspect(cid)["State"])["Status"] == "exited" and s, what="exit")
    assert state["ExitCode"] == 255 and "shim" in state["Error"]
    a.cli("rm", cid, check=True)
    assert a.leftovers() == []


def test_userns_remap(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.run_detached("--userns", "remap", "busybox", "sh", "-c", "id -u > /tmp/me; sleep 60")
    pid = int(a.inspect(cid)["State"]["Pid"])
    assert os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    assert uid_map == ["0", "100000", "65536"]
    assert os.stat(f"/proc/{pid}").st_uid == 100000  # root inside is an unprivileged uid outside
    assert a.cli("exec", cid, "cat", "/tmp/me").stdout == "0\n"


def test_userns_remap_root_owns_the_image_files_through_idmapped_layers(clean_agent: AgentProcess) -> None:
    a = clean_agent
    r = a.cli("run", "--name", "idm", "--userns", "remap", "busybox", "sh", "-c",
              "stat -c '%u:%g' /bin/busybox /etc/hosts /; echo hi > /etc/motd && mkdir /srv2 && echo ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0:0", "0:0", "0:0", "ok"], r.stdout  # not nobody (65534)
    cid = a.inspect("idm")["Id"]
    # The image's layers are untouched (still owned by host root); the writable layer holds the
    # remapped ids, as docker's userns-remap does.
    snaps = a.root / "images" / "snapshots"
    motd = [p for p in snaps.glob("*/fs/etc/motd")]
    assert len(motd) == 1 and motd[0].stat().st_uid == 100000, motd
    busybox = [p for p in snaps.glob("*/fs/bin/busybox")]
    assert busybox and all(p.stat().st_uid == 0 for p in busybox)
    a.cli("rm", cid, check=True)
    assert a.leftovers() == []
