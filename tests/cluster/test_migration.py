"""Agent-to-agent migration on one machine: two agents (two "hosts" with their own roots, bridges
and TCP node APIs on loopback), a container moved live with CRIU and cold by stop-copy-start."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.agent_harness import AgentProcess, free_port, import_busybox

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.slow]

COUNTER = "echo hi > /tmp/index.html; httpd -p 80 -h /tmp; i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")
    a = AgentProcess(tmp_path_factory.mktemp("source"))
    b = AgentProcess(tmp_path_factory.mktemp("target"))
    for x in (a, b):
        x.tcp = f"127.0.0.1:{free_port()}"  # type: ignore[attr-defined]
        x.extra_args = ["--listen", x.tcp, "--insecure"]  # type: ignore[attr-defined]
    try:
        a.start()
        b.start()
        import_busybox(a, busybox_tar_path)  # only the source has the image: migration sends it
        yield a, b
    finally:
        a.destroy()
        b.destroy()


def _numbers(a: AgentProcess, ref: str) -> list[int]:
    return [int(x) for x in a.cli("logs", ref).stdout.split() if x.isdigit()]


def test_live_migration_keeps_memory_files_and_ports(pair: tuple[AgentProcess, AgentProcess]) -> None:
    a, b = pair
    cid = a.run_detached("--name", "mover", "-p", "127.0.0.1::80", "-e", "K=v", "-m", "64m", "busybox", "sh", "-c", COUNTER)
    a.cli("exec", cid, "sh", "-c", "echo before > /root/f", check=True)
    a.wait_for(lambda: len(_numbers(a, cid)) > 10, what="counting")
    for x in (a, b):  # known once `criu check` ran at the agent's start
        x.wait_for(lambda x=x: "Post-copy migration: yes" in x.cli("info").stdout, 20, what="post-copy possible")
    r = a.cli("migrate", "--live", "--to", b.tcp, "mover")  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stderr
    assert "downtime" in r.stdout
    assert "post-copy" in r.stderr and "pages:" in r.stderr, r.stderr  # both ends can: lazy pages
    print("\n" + r.stderr + r.stdout)
    last = _numbers(a, cid)[-1] if a.cli("logs", cid).returncode == 0 else None
    assert a.cli("ps", "-a", "-q").stdout == ""  # the source copy is gone
    b.wait_for(lambda: len(_numbers(b, "mover")) > 3, what="counting on the target")
    nums = _numbers(b, "mover")
    assert nums[0] > 10 and (last is None or nums[0] == last + 1)  # went on, did not start over
    doc = b.inspect("mover")
    assert "K=v" in doc["Config"]["Env"] and doc["HostConfig"]["Memory"] == 64 << 20
    assert b.cli("exec", "mover", "cat", "/root/f").stdout == "before\n"
    port = b.cli("port", "mover", "80").stdout.strip().rsplit(":", 1)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as resp:
        assert resp.read() == b"hi\n"
    b.cli("rm", "-f", "mover", check=True)


def test_cold_migration_keeps_files(pair: tuple[AgentProcess, AgentProcess]) -> None:
    a, b = pair
    cid = a.run_detached("--name", "cold", "busybox", "sh", "-c", "test -e /root/f && echo restarted; sleep 600")
    a.cli("exec", cid, "sh", "-c", "echo written > /root/f; rm /bin/vi", check=True)
    r = a.cli("migrate", "--cold", "--to", b.tcp, "cold")  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stderr
    assert b.inspect("cold")["State"]["Running"]
    assert b.cli("exec", "cold", "sh", "-c", "cat /root/f; test -e /bin/vi || echo vi-gone").stdout.split() == [
        "written", "vi-gone"]
    b.wait_for(lambda: "restarted" in b.cli("logs", "cold").stdout, what="the command started again")
    assert a.cli("ps", "-a", "-q").stdout == ""
    b.cli("rm", "-f", "cold", check=True)


def _lazy_dumps(root: Path) -> list[int]:
    """Pids of `criu dump --lazy-pages` runs on containers under this agent root."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if b"dump" in argv and b"--lazy-pages" in argv and any(str(root).encode() in a for a in argv):
            found.append(int(d.name))
    return found


def test_page_source_lost_while_pages_are_pulled_keeps_the_source_copy(
        pair: tuple[AgentProcess, AgentProcess]) -> None:
    """Post-copy's own risk: the target runs while its memory still comes from the source. Here the
    source's page server (criu dump) dies half-way: the target's watchdog kills its copy (it would
    run on with zeros for memory), CRIU's tree on the source runs on, with its memory and its network."""
    import os
    import signal

    from protos import agent_pb2 as pb

    a, b = pair
    # 400 MiB to pull: long enough (about a second here) to cut the transfer in the middle
    hold = "x=$(head -c 314572800 /dev/urandom | base64 -w 0); echo held; " + COUNTER
    cid = a.run_detached("--name", "pulled", "busybox", "sh", "-c", hold)
    a.wait_for(lambda: len(_numbers(a, cid)) > 5, 120, what="memory held and counting")
    phases, killed = [], []
    try:
        for p in a.stub.MigrateContainer(pb.MigrateRequest(id=cid, target=b.tcp, live=True), timeout=120):
            phases.append(p.phase)
            if p.phase == "pages":  # the target runs it and pulls its pages: cut the source off
                for pid in _lazy_dumps(a.root):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        raise AssertionError(f"the migration succeeded: {phases}")
    except grpc.RpcError as e:
        assert "while its memory was pulled" in (e.details() or ""), e.details()
    assert killed, "the pages were all pulled before the page server could be killed"
    assert a.inspect(cid)["State"]["Running"]
    before = _numbers(a, cid)[-1]
    a.wait_for(lambda: _numbers(a, cid)[-1] > before + 3, 10, what="counting on at the source")
    assert _numbers(a, cid).count(1) == 1  # its memory: it went on, did not start over
    r = a.cli("exec", cid, "timeout", "5", "wget", "-q", "-O-", "http://127.0.0.1/index.html")
    assert r.stdout == "hi\n", r  # CRIU's network lock is gone
    b.wait_for(lambda: b.cli("ps", "-a", "-q").stdout == "", 10, what="the target's copy removed")
    assert "its memory could not all be pulled from the source, so it was killed" in b.log.read_text()
    assert not list((a.root / "containers").glob("*/lazy-[cd]*"))  # no lazy-checkpoint/ or lazy-dump.json
    a.cli("rm", "-f", cid, check=True)


def test_removing_the_source_copy_while_pages_are_pulled_does_not_cut_them_off(
        pair: tuple[AgentProcess, AgentProcess]) -> None:
    """What a new scheduler leader does when it finds the target running the task: it removes the
    source copy, maybe while pages are still being pulled. criu's page server holds the pages in its
    pipes, so the target still gets all of them: the 200 MB string it holds has its full length
    (a page that never came would read as zeros and cut it short)."""
    from protos import agent_pb2 as pb

    a, b = pair
    n = 200_000_000  # base64 of 150 MB
    hold = (f"x=$(head -c {n * 3 // 4} /dev/urandom | base64 -w 0); i=0; while :; do i=$((i+1)); echo $i; "
            "[ $((i % 20)) = 0 ] && echo len=${#x}; sleep 0.05; done")
    cid = a.run_detached("--name", "cutoff", "busybox", "sh", "-c", hold)
    a.wait_for(lambda: f"len={n}" in a.cli("logs", cid).stdout, 120, what="memory held")
    removed_during_pull = False
    for p in a.stub.MigrateContainer(pb.MigrateRequest(id=cid, target=b.tcp, live=True), timeout=120):
        if p.phase == "pages":
            removed_during_pull = bool(_lazy_dumps(a.root))
            a.stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))
    assert removed_during_pull, "every page was in before the source copy could be removed"
    assert a.cli("ps", "-a", "-q").stdout == ""
    b.wait_for(lambda: "len=" in b.cli("logs", "cutoff").stdout, 20, what="the length printed on the target")
    lens = [x for x in b.cli("logs", "cutoff").stdout.split() if x.startswith("len=")]
    assert set(lens) == {f"len={n}"}, lens
    assert _numbers(b, "cutoff")[0] > 20  # went on from where it was
    b.cli("rm", "-f", "cutoff", check=True)


def test_target_agent_killed_while_pages_are_pulled_the_move_completes(
        pair: tuple[AgentProcess, AgentProcess]) -> None:
    """The target's lazy-pages daemon (and its watchdog) run in a session of their own: the agent
    dying does not stop the pull. The move completes, and the next agent adopts the container."""
    from protos import agent_pb2 as pb

    a, b = pair
    n = 200_000_000
    hold = (f"x=$(head -c {n * 3 // 4} /dev/urandom | base64 -w 0); i=0; while :; do i=$((i+1)); echo $i; "
            "[ $((i % 20)) = 0 ] && echo len=${#x}; sleep 0.05; done")
    cid = a.run_detached("--name", "orphaned", "busybox", "sh", "-c", hold)
    a.wait_for(lambda: f"len={n}" in a.cli("logs", cid).stdout, 120, what="memory held")
    pulling = False
    try:
        for p in a.stub.MigrateContainer(pb.MigrateRequest(id=cid, target=b.tcp, live=True), timeout=120):
            if p.phase == "pages":
                pulling = bool(_lazy_dumps(a.root))
                b.kill9()
            last = p
        assert last.phase == "done" and pulling, (last, pulling)
    finally:
        b.start()
    assert a.cli("ps", "-a", "-q").stdout == ""
    assert b.inspect("orphaned")["State"]["Running"]
    b.wait_for(lambda: "len=" in b.cli("logs", "orphaned").stdout, 20, what="the length printed on the target")
    lens = [x for x in b.cli("logs", "orphaned").stdout.split() if x.startswith("len=")]
    assert set(lens) == {f"len={n}"}, lens
    b.cli("rm", "-f", "orphaned", check=True)


def test_failed_migration_rolls_back(pair: tuple[AgentProcess, AgentProcess]) -> None:
    a, _ = pair
    cid = a.run_detached("--name", "stay", "busybox", "sh", "-c", COUNTER)
    a.wait_for(lambda: len(_numbers(a, cid)) > 5, what="counting")
    r = a.cli("migrate", "--live", "--to", f"127.0.0.1:{free_port()}", "stay")  # nobody listens there
    assert r.returncode != 0 and "does not answer" in r.stderr
    assert a.inspect("stay")["State"]["Running"]
    a.cli("rm", "-f", "stay", check=True)


def test_live_migration_with_an_open_connection(pair: tuple[AgentProcess, AgentProcess]) -> None:
    """The container moves to another bridge and address: CRIU still restores its socket (the old
    address is kept on eth0), though the peer cannot reach it there."""

    a, b = pair
    cid = a.run_detached("--name", "conn", "busybox", "sh", "-c", "nc -l -p 9000 > /tmp/got; sleep 600")
    ip = a.inspect(cid)["NetworkSettings"]["IPAddress"]
    s = a.wait_for(lambda: _connect(ip, 9000), what="nc listening")
    try:
        s.sendall(b"hello\n")
        r = a.cli("migrate", "--live", "--to", b.tcp, "conn")  # type: ignore[attr-defined]
        assert r.returncode == 0, r.stderr
    finally:
        s.close()
    assert b.inspect("conn")["State"]["Running"]
    assert b.cli("exec", "conn", "cat", "/tmp/got").stdout == "hello\n"
    addrs = b.cli("exec", "conn", "ip", "-o", "addr", "show", "eth0").stdout
    assert ip in addrs and b.inspect("conn")["NetworkSettings"]["IPAddress"] in addrs
    b.cli("rm", "-f", "conn", check=True)


def _connect(ip: str, port: int):  # type: ignore[no-untyped-def]
    import socket

    try:
        return socket.create_connection((ip, port), timeout=1)
    except OSError:
        return None
