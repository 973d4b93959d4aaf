"""Live migration of a task on a cluster network between two netns hosts keeps its overlay address
and an established TCP connection from a task on a third host (tests/multihost.py, real CRIU).

The server task streams a counter over one TCP connection; the client task on another host
writes what it receives to a file (its stdin held open: a half-closed connection is not one CRIU
restores). After `dockyard migrate --live` the server runs on a third host
with the same address on eth1, and the client's file keeps growing with the next numbers: the
connection was neither reset nor reopened."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.cluster_harness import SchedulerProcess, cli, running, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, Host, cluster, join, multihost_session_check_fixture  # noqa: F401

pytestmark = [pytest.mark.multinode, pytest.mark.criu, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

SERVER = """
services:
  srv:
    image: busybox:latest
    command: ["sh", "-c", "i=0; while :; do i=$$((i+1)); echo $$i; sleep 0.05; done | nc -l -p 7000"]
    networks: [mignet]
    deploy:
      restart_policy: {condition: none}
networks:
  mignet: {external: true}
"""

CLIENT = """
services:
  cli:
    image: busybox:latest
    command: ["sh", "-c", "sleep 3600 | nc {ip} 7000 > /tmp/got; echo closed >> /tmp/got; sleep 3600"]
    networks: [mignet]
    deploy:
      restart_policy: {{condition: none}}
      placement: {{constraints: ["node.hostname != {avoid}"]}}
networks:
  mignet: {{external: true}}
"""


# The echo: each client connection sends "PORT N" every INTERVAL seconds and prints what comes back,
# so a line printed needs both directions through the moved address (a stream from the server
# alone keeps arriving while the client's ACKs still go to the old host).
ECHO_SERVER = """
services:
  echo:
    image: busybox:latest
    command: ["sh", "-c", "for p in $$(seq 7001 {last}); do nc -l -p $$p -e cat & done; wait"]
    networks: [{net}]
    deploy:{labels}
      restart_policy: {{condition: none}}
networks:
  {net}: {{external: true}}
"""

ECHO_CLIENT = """
services:
  talk:
    image: busybox:latest
    command: ["sh", "-c", "for p in $$(seq 7001 {last}); do (i=0; while :; do i=$$((i+1)); echo \\"$$p $$i\\"; sleep {interval}; done | nc {ip} $$p) & done; wait"]
    networks: [{net}]
    deploy:
      restart_policy: {{condition: none}}
      placement: {{constraints: ["node.hostname != {avoid}"]}}
networks:
  {net}: {{external: true}}
"""

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9})Z (\d+) (\d+)$")


def echoes(h: Host, cid: str) -> dict[int, list[tuple[float, int]]]:
    """Per connection (its port): (time the client printed it, number) for every echo, from the
    client's log with the agent's timestamps."""
    import calendar

    out = str(h.cli("logs", "-t", cid, timeout=30).stdout)
    got: dict[int, list[tuple[float, int]]] = {}
    for line in out.splitlines():
        m = _LOG_LINE.match(line.strip())
        if m is None:
            continue
        day, frac = m.group(1).split(".")
        t = calendar.timegm(time.strptime(day, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1e9
        got.setdefault(int(m.group(2)), []).append((t, int(m.group(3))))
    return got


def stall(series: list[tuple[float, int]], since: float) -> float:
    """The longest wait between two consecutive echoes after `since` (a wall-clock time)."""
    times = [t for t, _ in series if t >= since - 2]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class Env:
    def __init__(self, c: Cluster, sched: SchedulerProcess, tmp: Path) -> None:
        self.c, self.sched, self.tmp = c, sched, tmp

    def ok(self, *args: str, timeout: float = 120) -> str:
        r = cli(self.sched.address, *args, timeout=timeout)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def host(self, name: str) -> Host:
        return next(h for h in self.c if h.name == name)

    def deploy(self, name: str, text: str) -> cpb.TaskInfo:
        p = self.tmp / f"{name}.yaml"
        p.write_text(text)
        self.ok("deploy", "-f", str(p), "--name", name)
        svc = f"{name}_{text.split()[1].rstrip(':')}"
        return self.running_task(svc)

    def running_task(self, svc: str) -> cpb.TaskInfo:
        found: list[cpb.TaskInfo] = wait_for(lambda: running(self.sched, svc), 60, f"{svc} running")
        return found[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None or os.geteuid() != 0:
        pytest.skip("needs root and CRIU (deploy/install-criu.sh)")
    base = tmp_path_factory.mktemp("ovlmig")
    # the schedulers' hook (common/faults.py): a test holds a migration at a phase
    with pytest.MonkeyPatch.context() as monkey, cluster(3, base, busybox_tar_path) as c:
        monkey.setenv("DOCKYARD_FAULT_INJECTION", "1")
        etcd = EtcdServer.start()
        sched = SchedulerProcess(base / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}", metrics=False)
        try:
            sched.start()
            for h in c:
                join(h, sched.address)
            wait_for(lambda: len([n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                  if n.status == "ready" and n.capabilities.criu]) == 3, 40,
                     "3 nodes ready with CRIU")
            yield Env(c, sched, base)
        finally:
            sched.stop()
            etcd.stop()


def numbers(h: Host, cid: str) -> list[int]:
    out = str(h.cli("exec", cid, "cat", "/tmp/got", timeout=30).stdout)
    return [int(x) for x in out.split() if x.isdigit()]


def test_live_migration_keeps_the_overlay_address_and_a_tcp_stream(env: Env) -> None:
    env.ok("network", "create", "--subnet", "10.253.0.0/24", "mignet")
    srv = env.deploy("m", SERVER)
    net = json.loads(env.ok("network", "inspect", "mignet"))[0]
    ip = next(e["ip"] for e in net["endpoints"] if e["task_id"] == srv.id)
    client = env.deploy("c", CLIENT.format(ip=ip, avoid=srv.node))
    ch = env.host(client.node)
    wait_for(lambda: len(numbers(ch, client.container_id)) > 20, 30, "the stream flowing")
    target = next(h.name for h in env.c if h.name not in (srv.node, client.node))
    out = env.ok("migrate", srv.name, "--to", target, "--live", timeout=180)
    assert f"to {target} (live)" in out, out
    print("\n" + out.strip())
    moved = wait_for(lambda: [t for t in running(env.sched, "m_srv") if t.node == target], 60, "running on target")[0]
    assert moved.id == srv.id
    th = env.host(target)
    assert f"inet {ip}/24" in str(th.cli("exec", moved.container_id, "ip", "-o", "addr", "show", "eth1").stdout)
    before = len(numbers(ch, client.container_id))
    wait_for(lambda: len(numbers(ch, client.container_id)) > before + 40, 30, "the stream going on after the move")
    got = numbers(ch, client.container_id)
    assert got == list(range(got[0], got[0] + len(got))), "numbers lost or repeated: the connection was reopened"
    assert "closed" not in str(ch.cli("exec", client.container_id, "cat", "/tmp/got").stdout)


def live_move_with_echoes(env: Env, net: str, subnet: str, conns: int, interval: float, pause: str = ""
                          ) -> tuple[dict[int, list[tuple[float, int]]], float, float, str]:
    """An echo server task with `conns` listeners, a client task on another host with one connection
    to each, a live move of the server to the third host. Returns (echoes per connection, the
    migration's reported downtime and total seconds, the migrate output). `pause`: the scheduler
    waits there (common/faults.py), e.g. "finishing:3"."""
    env.ok("network", "create", "--subnet", subnet, net)
    last = 7000 + conns
    labels = f"\n      labels: {{dockyard.fault.pause: \"{pause}\"}}" if pause else ""
    srv = env.deploy(f"e{conns}", ECHO_SERVER.format(net=net, last=last, labels=labels))
    ip = next(e["ip"] for e in json.loads(env.ok("network", "inspect", net))[0]["endpoints"] if e["task_id"] == srv.id)
    client = env.deploy(f"t{conns}", ECHO_CLIENT.format(net=net, last=last, ip=ip, interval=interval, avoid=srv.node))
    ch = env.host(client.node)
    wait_for(lambda: len(echoes(ch, client.container_id)) == conns
             and all(len(v) > 10 for v in echoes(ch, client.container_id).values()), 60, "every echo flowing")
    target = next(h.name for h in env.c if h.name not in (srv.node, client.node))
    moved_at = time.time()
    out = env.ok("migrate", srv.name, "--to", target, "--live", timeout=180)
    m = re.search(r"downtime (\d+) ms, total ([\d.]+) s", out)
    assert m is not None, out
    moved = wait_for(lambda: [t for t in running(env.sched, srv.service) if t.node == target], 60, "running on target")[0]
    th = env.host(target)
    assert f"inet {ip}/" in str(th.cli("exec", moved.container_id, "ip", "-o", "addr", "show", "eth1").stdout)
    counts = {p: len(v) for p, v in echoes(ch, client.container_id).items()}
    wait_for(lambda: all(len(v) > counts[p] + 10 for p, v in echoes(ch, client.container_id).items()), 30,
             "every echo going on after the move")
    got = echoes(ch, client.container_id)
    for p, series in got.items():
        nums = [n for _, n in series]
        assert nums == list(range(1, len(nums) + 1)), f"port {p}: numbers lost, repeated or the connection reopened"
    for name in (f"t{conns}", f"e{conns}"):
        env.ok("stack", "rm", name)
    return {p: [x for x in s if x[0] >= moved_at - 2] for p, s in got.items()}, int(m.group(1)) / 1000, \
        float(m.group(2)), out


def test_live_migration_keeps_an_echo_going_in_both_directions(env: Env) -> None:
    """The longest gap between two echoes is the downtime plus at most 1 s (issue 18's target): the
    client's packets reach the new host as soon as the restored socket can take them. The scheduler
    is held 3 s before it finishes the move (the task's node changes in etcd then): the address must
    have followed the container long before that, at the switch."""
    got, downtime, _total, out = live_move_with_echoes(env, "echonet", "10.253.1.0/24", 1, 0.05,
                                                       pause="finishing:3")
    worst = max(stall(s, 0) for s in got.values())
    print(f"\n{out.strip()}\nlongest gap between echoes {worst * 1000:.0f} ms (downtime {downtime * 1000:.0f} ms)")
    assert worst <= downtime + 1.0, f"echoes stalled {worst:.2f} s for a downtime of {downtime:.2f} s"
