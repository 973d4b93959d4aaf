"""A replicated control plane on three real etcd members on loopback (tests/etcd_server.py
EtcdCluster): the store reaches etcd through every member and goes on through another when the
one it uses dies, or when the raft leader dies; no acknowledged write is lost. With a scheduler
and an agent on it: the running container is never stopped or doubled, the node stays ready."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import cluster_pb2 as cpb
from scheduler.main import parse_endpoints
from scheduler.store import Put, Store, StoreError, Unavailable, grpc_target
from tests.cluster_harness import JoinedAgent, SchedulerProcess, cli, running, wait_for
from tests.etcd_server import EtcdCluster

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def members() -> Iterator[EtcdCluster]:
    with EtcdCluster(3).start() as c:
        yield c


def _connected_ports(ports: list[int]) -> set[int]:
    """Which of these loopback ports this process holds an established TCP connection to (its
    own sockets only: each etcd member connects to its own client port too)."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            ours.add(link[8:-1])
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] == "01" and f[9] in ours:  # ESTABLISHED, ours
                remote = int(f[2].split(":")[1], 16)
                if remote in ports:
                    found.add(remote)
    return found


def _write_through_a_death(c: EtcdCluster, kill: int, tag: str) -> tuple[list[int], float]:
    """Unguarded puts in a loop; after 30 acknowledged, member `kill` gets SIGKILL; 30 more are
    acknowledged after it. Returns the acknowledged numbers and the longest a put waited."""

    async def main() -> tuple[list[int], float]:
        store = await Store.connect(endpoints=parse_endpoints(c.endpoints), timeout=5.0)
        acked: list[int] = []
        worst = 0.0
        try:
            i = 0
            while len(acked) < 60:
                if len(acked) == 30 and c.members[kill].process.poll() is None:
                    c.kill9(kill)
                t0 = time.monotonic()
                while True:  # a put that failed unacknowledged is sent again (it is idempotent)
                    try:
                        await store.commit([Put(f"/dockyard/test/{tag}/{i:04d}".encode(), str(i).encode(), None)])
                        break
                    except (Unavailable, StoreError):
                        if time.monotonic() - t0 > 30:
                            raise
                        await asyncio.sleep(0.05)
                worst = max(worst, time.monotonic() - t0)
                acked.append(i)
                i += 1
        finally:
            await store.close()
        return acked, worst

    return asyncio.run(main())


def _stored(c: EtcdCluster, tag: str) -> set[int]:
    live = next(m for m in c.members if m.process.poll() is None)
    return {int(v) for _, v in live.range(f"/dockyard/test/{tag}/")}


def test_the_store_names_every_member_in_one_target() -> None:
    assert grpc_target([("127.0.0.1", 1), ("127.0.0.1", 2)]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target([("::1", 1), ("::1", 2)]) == "ipv6:[::1]:1,[::1]:2"
    assert grpc_target([("localhost", 5)]) == "localhost:5"
    with pytest.raises(ValueError, match="no etcd endpoint"):
        grpc_target([])
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        grpc_target([("127.0.0.1", 1), ("::1", 2)])


def test_the_member_the_store_uses_dies_and_no_acknowledged_write_is_lost(members: EtcdCluster) -> None:
    ports = [m.port for m in members.members]

    async def which() -> set[int]:
        store = await Store.connect(endpoints=parse_endpoints(members.endpoints))
        try:
            await store.get_raw(b"/dockyard/x")
            return _connected_ports(ports)
        finally:
            await store.close()

    assert asyncio.run(which()) == {ports[0]}  # pick_first: the first member of the list
    acked, worst = _write_through_a_death(members, 0, "first")
    print(f"\nlongest put across the death of the member in use: {worst:.2f} s")
    assert set(acked) <= _stored(members, "first")
    assert worst < 10


def test_the_raft_leader_dies_and_no_acknowledged_write_is_lost(members: EtcdCluster) -> None:
    leader = members.leader()
    acked, worst = _write_through_a_death(members, leader, "leader")
    print(f"\nlongest put across the death of the raft leader (member {leader}): {worst:.2f} s")
    assert set(acked) <= _stored(members, "leader")
    assert members.leader() != leader
    assert worst < 15


@pytest.mark.root
@pytest.mark.parametrize("kill", ["first", "leader"])
def test_a_scheduler_on_three_members_keeps_its_container_when_a_member_dies(
        members: EtcdCluster, tmp_path: Path, busybox_tar_path: Path, kill: str) -> None:
    """The member the scheduler uses (the first of --etcd), or the raft leader, dies: the
    container runs on untouched (same id, one copy), the node stays ready through several of its
    3 s leases, and a scale after it is applied (written through another member)."""
    from tests.agent_harness import import_busybox

    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    sched = SchedulerProcess(tmp_path / "sched", etcd=members.endpoints)
    agent = JoinedAgent(tmp_path / "agent", join=sched.address, name="solo")
    try:
        sched.start()
        agent.start()
        import_busybox(agent, busybox_tar_path)
        wait_for(lambda: [n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes if n.status == "ready"],
                 30, "the node ready")
        stack = tmp_path / "s.yaml"
        stack.write_text("services:\n  w:\n    image: busybox:latest\n"
                         "    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1 & wait; done\"]\n")
        r = cli(sched.address, "deploy", "-f", str(stack), "--name", "r")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(running(sched, "r_w")) == 1, 60, "r_w running")

        def containers() -> list[str]:
            return sorted(c.id for c in agent.task_containers() if c.state == "running")

        (first,) = containers()
        members.kill9(0 if kill == "first" else members.leader())
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert containers() == [first], "the running container was stopped or doubled"
            time.sleep(0.5)
        nodes = sched.stub.ListNodes(cpb.Empty(), timeout=10).nodes
        assert [n.status for n in nodes] == ["ready"], nodes
        r = cli(sched.address, "service", "scale", "r_w=2")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: len(running(sched, "r_w")) == 2 and len(containers()) == 2, 60, "2 running")
        assert first in containers()
    finally:
        try:
            agent.destroy()
        finally:
            sched.stop()
