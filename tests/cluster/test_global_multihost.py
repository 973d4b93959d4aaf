"""A global service across hosts made of network namespaces (tests/multihost.py): one task per
node, a node that joins gets one, a drained node loses its task and gets one back when active
again, a label constraint picks the nodes. A scheduler on a real etcd in the root namespace."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.cluster_harness import SchedulerProcess, cli, running, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, cluster, join, multihost_session_check_fixture  # noqa: F401

pytestmark = [pytest.mark.multinode, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

AGENT = """
services:
  agent:
    image: busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy:
      mode: global
"""


def containers_per_host(c: Cluster, service: str) -> Counter[str]:
    """Running containers of `service` on each host, asked of each host's agent."""
    n: Counter[str] = Counter()
    for h in c:
        for ct in h.stub.ListContainers(apb.ListContainersRequest(filters={"label": "dockyard.task"}),
                                        timeout=10).containers:
            if ct.labels.get("dockyard.service") == service:
                n[h.name] += 1
    return n


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[tuple[Cluster, SchedulerProcess, Path]]:
    base = tmp_path_factory.mktemp("global")
    with cluster(3, base, busybox_tar_path) as c:
        etcd = EtcdServer.start()
        sched = SchedulerProcess(base / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}")
        try:
            sched.start()
            for h in (c[1], c[2]):  # host3 joins later, in the test
                join(h, sched.address)
            wait_for(lambda: len([n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                  if n.status == "ready"]) == 2, 30, "2 nodes ready")
            yield c, sched, base
        finally:
            sched.stop()
            etcd.stop()


def test_global_service_follows_joins_and_drains(env: tuple[Cluster, SchedulerProcess, Path]) -> None:
    c, sched, base = env

    def ok(*args: str) -> str:
        r = cli(sched.address, *args)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    stack = base / "global.yaml"
    stack.write_text(AGENT)
    ok("stack", "deploy", "-c", str(stack), "g")
    wait_for(lambda: containers_per_host(c, "g_agent") == {"host1": 1, "host2": 1}, 30, "one task on each node")
    # a node that joins gets one
    join(c[3], sched.address)
    wait_for(lambda: containers_per_host(c, "g_agent") == {"host1": 1, "host2": 1, "host3": 1}, 40,
             "host3 got one when it joined")
    assert sorted(t.name for t in running(sched, "g_agent")) == ["g_agent.1", "g_agent.2", "g_agent.3"]
    # a drained node loses it, and nothing moves elsewhere
    ok("node", "drain", "--no-move", "host2")
    wait_for(lambda: containers_per_host(c, "g_agent") == {"host1": 1, "host3": 1}, 30, "host2's task stopped")
    assert Counter(t.node for t in running(sched, "g_agent")) == {"host1": 1, "host3": 1}
    ok("node", "activate", "host2")
    wait_for(lambda: containers_per_host(c, "g_agent") == {"host1": 1, "host2": 1, "host3": 1}, 30,
             "host2 got one back")
    ls = ok("service", "ls")
    row = next(line.split() for line in ls.splitlines() if line.startswith("g_agent "))
    assert row[1:3] == ["global", "3/3"], ls
    # a constraint picks the nodes; a label change follows
    ok("node", "label", "--add", "edge=yes", "host1")
    r = cli(sched.address, "service", "create", "--name", "edge", "--mode", "global", "--constraint",
            "node.labels.edge==yes", "--stop-grace-period", "1s", "busybox:latest", "sleep", "3600")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: containers_per_host(c, "edge") == {"host1": 1}, 30, "edge only on host1")
    ok("service", "rm", "edge")
    ok("stack", "rm", "g")
    wait_for(lambda: not containers_per_host(c, "g_agent") and not containers_per_host(c, "edge"), 30,
             "everything stopped")
