"""Live moves of a task on a cluster network between netns hosts, with TCP echoes through them: the
harness of tests/cluster/test_cluster_overlay_migration.py and tests/bench/bench_netmove.py.

    with overlay_cluster(base, busybox_tar) as env:          # 3 hosts, etcd, a scheduler, CRIU
        got, downtime, total, out = live_move_with_echoes(env, "net1", "10.253.1.0/24", conns=20, interval=0.1)

The server task listens on `conns` ports and echoes (busybox `nc -l -e cat`); the client task, on
another host, sends "PORT N" every `interval` seconds on one connection to each and prints what
comes back, so a printed line needs both directions through the moved address (a stream from the
server alone keeps arriving while the client's ACKs still go to the old host). The client's log
(the agent's timestamps) gives every echo's arrival; the numbers must go on 1, 2, 3 ... on every
connection (nothing lost, repeated or reopened), and the longest wait between two echoes is the
connection's blackout.
"""

from __future__ import annotations

import calendar
import contextlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.cluster_harness import SchedulerProcess, cli, running, tasks, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, Host, cluster, join

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
    command: ["sh", "-c", "for p in $$(seq {first} {last}); do (i=0; while :; do i=$$((i+1)); echo \\"$$p $$i\\"; sleep {interval}; done | nc {ip} $$p) & done; wait"]
    networks: [{net}]
    deploy:
      restart_policy: {{condition: none}}
      placement: {{constraints: ["{where}"]}}
networks:
  {net}: {{external: true}}
"""

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9})Z (\d+) (\d+)$")


def echoes(h: Host, cid: str) -> dict[int, list[tuple[float, int]]]:
    """Per connection (its port): (time the client printed it, number) for every echo, from the
    client's log with the agent's timestamps."""
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
        try:
            found: list[cpb.TaskInfo] = wait_for(lambda: running(self.sched, svc), 60, f"{svc} running")
        except AssertionError as e:
            states = [(t.name, t.node, t.state, t.error) for t in tasks(self.sched, svc, all_=True)]
            raise AssertionError(f"{e}; its tasks: {states}") from None
        return found[0]


@contextlib.contextmanager
def overlay_cluster(base: Path, busybox_tar: Path) -> Iterator[Env]:
    """3 netns hosts joined to a scheduler on a fresh etcd, every node ready with CRIU; the
    scheduler's fault hooks on (common/faults.py: a test holds a migration at a phase)."""
    with contextlib.ExitStack() as stack:
        c = stack.enter_context(cluster(3, base, busybox_tar))
        old = os.environ.get("DOCKYARD_FAULT_INJECTION")
        os.environ["DOCKYARD_FAULT_INJECTION"] = "1"
        stack.callback(lambda: os.environ.pop("DOCKYARD_FAULT_INJECTION", None) if old is None
                       else os.environ.__setitem__("DOCKYARD_FAULT_INJECTION", old))
        etcd = EtcdServer.start()
        stack.callback(etcd.stop)
        sched = SchedulerProcess(base / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}", metrics=False)
        stack.callback(sched.stop)
        sched.start()
        for h in c:
            join(h, sched.address)
        wait_for(lambda: len([n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                              if n.status == "ready" and n.capabilities.criu]) == 3, 40, "3 nodes ready with CRIU")
        yield Env(c, sched, base)


def live_move_with_echoes(env: Env, net: str, subnet: str, conns: int, interval: float, pause: str = "",
                          tag: str = "", source_client: bool = False
                          ) -> tuple[dict[int, list[tuple[float, int]]], float, float, str]:
    """An echo server task with `conns` listeners, a client task on another host with one connection
    to each, a live move of the server to the third host. Returns (echoes per connection, the
    migration's reported downtime and total seconds, the migrate output). `pause`: the scheduler
    waits there (common/faults.py), e.g. "finishing:3". `tag` names the stacks (default: conns);
    they are removed at the end, the network is left. source_client: one more client task on the
    server's own host (on the ports after the others'): it must reach the server where it went."""
    env.ok("network", "create", "--subnet", subnet, net)
    name = tag or str(conns)
    labels = f"\n      labels: {{dockyard.fault.pause: \"{pause}\"}}" if pause else ""
    # one listener per connection (nc -l takes one): the source client's are the next ports
    last = 7000 + conns * (2 if source_client else 1)
    srv = env.deploy(f"e{name}", ECHO_SERVER.format(net=net, last=last, labels=labels))
    ip = next(e["ip"] for e in json.loads(env.ok("network", "inspect", net))[0]["endpoints"] if e["task_id"] == srv.id)
    stacks = {f"t{name}": (7001, f"node.name != {srv.node}")}
    if source_client:
        stacks[f"s{name}"] = (7001 + conns, f"node.name == {srv.node}")
    clients = {st: env.deploy(st, ECHO_CLIENT.format(net=net, first=first, last=first + conns - 1, ip=ip,
                                                     interval=interval, where=where))
               for st, (first, where) in stacks.items()}
    remote = clients[f"t{name}"]

    def all_echoes() -> dict[int, list[tuple[float, int]]]:
        got: dict[int, list[tuple[float, int]]] = {}
        for c in clients.values():
            got.update(echoes(env.host(c.node), c.container_id))
        return got

    seen: list[dict[int, int]] = [{}]

    def flowing() -> bool:
        seen[0] = {p: len(v) for p, v in all_echoes().items()}
        return len(seen[0]) == conns * len(clients) and all(n > 10 for n in seen[0].values())

    try:
        wait_for(flowing, 60, "every echo flowing")
    except AssertionError as e:
        where = {st: c.node for st, c in clients.items()}
        raise AssertionError(f"{e}: echoes per connection {seen[0]}; server on {srv.node}, clients {where}") from None
    target = next(h.name for h in env.c if h.name not in (srv.node, remote.node))
    moved_at = time.time()
    out = env.ok("migrate", srv.name, "--to", target, "--live", timeout=180)
    m = re.search(r"downtime (\d+) ms, total ([\d.]+) s", out)
    assert m is not None, out
    moved = wait_for(lambda: [t for t in running(env.sched, srv.service) if t.node == target], 60, "running on target")[0]
    th = env.host(target)
    assert f"inet {ip}/" in str(th.cli("exec", moved.container_id, "ip", "-o", "addr", "show", "eth1").stdout)
    counts = {p: len(v) for p, v in all_echoes().items()}
    wait_for(lambda: all(len(v) > counts[p] + 10 for p, v in all_echoes().items()), 30,
             "every echo going on after the move")
    got = all_echoes()
    for p, series in got.items():
        nums = [n for _, n in series]
        assert nums == list(range(1, len(nums) + 1)), f"port {p}: numbers lost, repeated or the connection reopened"
    for st in [*clients, f"e{name}"]:
        env.ok("stack", "rm", st)
    return {p: [x for x in s if x[0] >= moved_at - 2] for p, s in got.items()}, int(m.group(1)) / 1000, \
        float(m.group(2)), out
