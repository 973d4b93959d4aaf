"""CRIU on real dockyard containers: dump a running container's process tree and restore it with its
memory intact (a shell counter continues where it was), on this host and from an archive."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.slow]

COUNTER = "echo hi > /tmp/index.html; httpd -p 80 -h /tmp; i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"


@pytest.fixture(autouse=True)
def _need_criu() -> None:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")


def _numbers(a: AgentProcess, ref: str) -> list[int]:
    return [int(x) for x in a.cli("logs", ref).stdout.split() if x.isdigit()]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return bytes(r.read())


def test_checkpoint_and_restore_keep_memory(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.run_detached("--name", "counter", "-p", "127.0.0.1::80", "busybox", "sh", "-c", COUNTER)
    a.wait_for(lambda: len(_numbers(a, cid)) > 10, what="counting")
    r = a.cli("checkpoint", cid)
    assert r.returncode == 0, r.stderr
    assert a.inspect(cid)["State"]["Status"] == "exited"
    before = _numbers(a, cid)
    last = before[-1]
    assert before == list(range(1, last + 1))
    time.sleep(0.5)
    assert _numbers(a, cid) == before  # nothing runs while checkpointed
    a.cli("restore", cid, check=True)
    a.wait_for(lambda: len(_numbers(a, cid)) > len(before) + 5, what="counting after restore")
    after = _numbers(a, cid)
    # The counter lives in the shell's memory: it goes on from `last`, it does not start at 1 again.
    assert after[: len(before) + 5] == list(range(1, last + 6))
    status = Path(f"/proc/{a.inspect(cid)['State']['Pid']}/status").read_text()
    assert "Seccomp:\t2" in status and "Seccomp_filters:\t1" in status, status  # CRIU gave the filter back
    port = a.cli("port", cid, "80").stdout.strip().rsplit(":", 1)[1]
    assert _get(f"http://127.0.0.1:{port}/index.html") == b"hi\n"


def test_checkpoint_archive_restores_elsewhere(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    cid = a.run_detached("--name", "mover", "busybox", "sh", "-c", COUNTER)
    a.cli("exec", cid, "sh", "-c", "echo kept > /root/file; rm /bin/vi", check=True)
    a.wait_for(lambda: len(_numbers(a, cid)) > 10, what="counting")
    archive = tmp_path / "ckpt.tar.zst"
    a.cli("checkpoint", "-o", str(archive), cid, check=True)
    last = _numbers(a, cid)[-1]
    a.cli("rm", cid, check=True)
    new = a.cli("restore", "-i", str(archive), "--name", "moved", check=True).stdout.strip()
    a.wait_for(lambda: len(_numbers(a, new)) > 3, what="counting after restore")
    assert _numbers(a, new)[0] == last + 1
    r = a.cli("exec", new, "sh", "-c", "cat /root/file; test -e /bin/vi || echo vi-gone")
    assert r.stdout.split() == ["kept", "vi-gone"]


def test_checkpoint_refusals_and_bad_archives(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    tty = a.run_detached("-t", "busybox", "sleep", "60")
    r = a.cli("checkpoint", tty)
    assert r.returncode != 0 and "terminal" in r.stderr
    assert a.inspect(tty)["State"]["Running"]
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    r = a.cli("restore", "-i", str(bad))
    assert r.returncode != 0 and "corrupt" in r.stderr
    assert len(a.cli("ps", "-a", "-q").stdout.split()) == 1  # nothing half-made
    r = a.cli("restore", tty)
    assert r.returncode != 0


def test_established_tcp_connection_survives_checkpoint_on_this_host(clean_agent: AgentProcess) -> None:

    a = clean_agent
    cid = a.run_detached("--name", "tcp", "busybox", "sh", "-c", "nc -l -p 9000 > /tmp/got; sleep 600")
    ip = a.inspect(cid)["NetworkSettings"]["IPAddress"]
    s = a.wait_for(lambda: _try_connect(ip, 9000), what="nc listening")
    try:
        s.sendall(b"before\n")
        time.sleep(0.3)
        a.cli("checkpoint", cid, check=True)
        a.cli("restore", cid, check=True)  # same host: same address, the connection goes on
        s.sendall(b"after\n")
    finally:
        s.close()
    a.wait_for(lambda: a.cli("exec", cid, "cat", "/tmp/got").stdout == "before\nafter\n", what="both lines")


def _try_connect(ip: str, port: int):  # type: ignore[no-untyped-def]
    import socket

    try:
        return socket.create_connection((ip, port), timeout=1)
    except OSError:
        return None


def test_files_written_before_an_earlier_move_survive_the_next(clean_agent: AgentProcess, tmp_path: Path) -> None:
    """A restored container's writable layer is all it wrote, wherever: moved twice, the file (and the
    deletion) of before the first move is still there (found by the soak: a restored container's
    changes sat in a read-only layer below a fresh upper dir, and the next move carried only that)."""
    a = clean_agent
    cid = a.run_detached("--name", "twice", "busybox", "sh", "-c", COUNTER)
    a.cli("exec", cid, "sh", "-c", "echo first > /root/first; rm /bin/vi", check=True)
    archive = tmp_path / "one.tar.zst"
    a.cli("checkpoint", "-o", str(archive), cid, check=True)
    a.cli("rm", cid, check=True)
    moved = a.cli("restore", "-i", str(archive), "--name", "twice-1", check=True).stdout.strip()
    a.cli("exec", moved, "sh", "-c", "echo second > /root/second", check=True)
    again = tmp_path / "two.tar.zst"
    a.cli("checkpoint", "-o", str(again), moved, check=True)
    a.cli("rm", moved, check=True)
    last = a.cli("restore", "-i", str(again), "--name", "twice-2", check=True).stdout.strip()
    r = a.cli("exec", last, "sh", "-c", "cat /root/first /root/second; test -e /bin/vi || echo vi-gone")
    assert r.stdout.split() == ["first", "second", "vi-gone"], r.stdout + r.stderr


def test_a_failed_criu_restore_ends_promptly_and_leaves_nothing(clean_agent: AgentProcess) -> None:
    """criu itself failing the restore (here a checkpoint image gone): the error comes back at once
    and the container's cgroup goes. The shim's restore child sits in that cgroup, and used to
    freeze itself removing it (the CLI then hung until its timeout, the shim forever)."""
    a = clean_agent
    cid = a.run_detached("busybox", "sleep", "300")
    a.cli("checkpoint", cid, check=True)
    images = Path(a.inspect(cid)["State"].get("Checkpoint") or a.root / "containers" / cid / "checkpoint")
    for core in images.glob("core-*.img"):
        core.unlink()
    t0 = time.monotonic()
    r = a.cli("restore", cid, timeout=30)
    assert r.returncode != 0 and "restore failed: criu restore" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 15
    assert not a.inspect(cid)["State"]["Running"]
