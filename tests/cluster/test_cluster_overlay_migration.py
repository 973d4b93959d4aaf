"""Live migration of a task on a cluster network between two netns hosts keeps its overlay address
and an established TCP connection from a task on a third host (tests/multihost.py, real CRIU).

The server task streams a counter over one TCP connection; the client task on another host
writes what it receives to a file (its stdin held open: a half-closed connection is not one CRIU
restores). After `dockyard migrate --live` the server runs on a third host
with the same address on eth1, and the client's file keeps growing with the next numbers: the
connection was neither reset nor reopened."""

from __future__ import annotations

import json
import os
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
        found: list[cpb.TaskInfo] = wait_for(lambda: running(self.sched, svc), 60, f"{svc} running")
        return found[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None or os.geteuid() != 0:
        pytest.skip("needs root and CRIU (deploy/install-criu.sh)")
    base = tmp_path_factory.mktemp("ovlmig")
    with cluster(3, base, busybox_tar_path) as c:
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
