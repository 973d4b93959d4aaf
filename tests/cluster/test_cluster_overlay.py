"""A cluster network end to end on 3 hosts made of network namespaces (tests/multihost.py): a real
etcd and a scheduler, an agent joined on every host. `dockyard network create`, a stack whose
service is on it with one task per host, each task's eth1 with its allocated address and MTU,
TCP between tasks on different hosts over VXLAN, names at 127.0.0.11 (task, service, alias,
tasks.NAME; another stack's private network invisible), the agents' reconcile repairing an FDB
entry deleted behind their back, and the network's removal leaving no link behind."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.cluster_harness import SchedulerProcess, cli, running, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, Host, cluster, join, multihost_session_check_fixture  # noqa: F401

pytestmark = [pytest.mark.multinode, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

STACK = """
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "hostname > /tmp/name; exec httpd -f -p 80 -h /tmp"]
    networks:
      appnet:
        aliases: [www]
    deploy:
      replicas: 3
      placement: {max_replicas_per_node: 1}
networks:
  appnet: {external: true}
"""

PRIVATE = """
services:
  db:
    image: busybox:latest
    command: ["sleep", "3600"]
    networks: [private]
networks:
  private: {}
"""


class Env:
    def __init__(self, c: Cluster, etcd: EtcdServer, sched: SchedulerProcess, tmp: Path) -> None:
        self.c, self.etcd, self.sched, self.tmp = c, etcd, sched, tmp

    def ok(self, *args: str) -> str:
        r = cli(self.sched.address, *args)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def stack_file(self, name: str, text: str) -> Path:
        p = self.tmp / f"{name}.yaml"
        p.write_text(text)
        return p

    def host(self, name: str) -> Host:
        return next(h for h in self.c if h.name == name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("ovl")
    with cluster(3, base, busybox_tar_path) as c:
        etcd = EtcdServer.start()
        # A 10 s node lease: the overlay test restarts host1's agent (kill -9) and expects its
        # container adopted in place; under load the restart took longer than the default 3 s
        # lease, the node went down, its task moved away and "TCP after the agent's restart"
        # waited on a container that was being stopped. No test here needs a node lost.
        sched = SchedulerProcess(base / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}", metrics=False,
                                 ttl=10)
        try:
            sched.start()
            for h in c:
                join(h, sched.address)
            wait_for(lambda: len([n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                  if n.status == "ready"]) == 3, 30, "3 nodes ready")
            yield Env(c, etcd, sched, base)
        finally:
            sched.stop()
            etcd.stop()


def container_of(env: Env, task: Any) -> tuple[Host, str]:
    h = env.host(task.node)
    return h, task.container_id


def tcp_get(h: Host, cid: str, ip: str) -> str:
    r = h.cli("exec", cid, "sh", "-c", f"printf 'GET /name HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80", timeout=30)
    return r.stdout if isinstance(r.stdout, str) else r.stdout.decode()


def test_tasks_on_three_hosts_reach_each_other_over_the_overlay(env: Env) -> None:
    env.ok("network", "create", "-d", "overlay", "--subnet", "10.252.0.0/24", "appnet")
    f = env.tmp / "o.yaml"
    f.write_text(STACK)
    env.ok("deploy", "-f", str(f), "--name", "o")
    ts = wait_for(lambda: len(running(env.sched, "o_web")) == 3 and running(env.sched, "o_web"), 60, "3 running")
    assert sorted(t.node for t in ts) == ["host1", "host2", "host3"]
    net = json.loads(env.ok("network", "inspect", "appnet"))[0]
    ips = {e["task_id"]: e["ip"] for e in net["endpoints"]}
    assert len(ips) == 3 and all(ip.startswith("10.252.0.") for ip in ips.values())
    assert {e["node"]: e["vtep"] for e in net["endpoints"]} == {h.name: h.ip for h in env.c}

    # each container: eth1 with its address, MTU 1450; eth0 (the host's bridge) untouched
    for t in ts:
        h, cid = container_of(env, t)
        out = h.cli("exec", cid, "ip", "-o", "addr", "show", "eth1").stdout
        assert f"inet {ips[t.id]}/24" in str(out), out
        assert "mtu 1450" in str(h.cli("exec", cid, "ip", "link", "show", "eth1").stdout)

    # every task reaches both others across hosts (TCP over VXLAN), by their overlay addresses
    def all_reach() -> bool:
        for t in ts:
            h, cid = container_of(env, t)
            for other in ts:
                if other.id != t.id and other.name not in tcp_get(h, cid, ips[other.id]):
                    return False
        return True

    wait_for(all_reach, 30, "every task reaching the others", every=0.5)

    # names, from the resolver at 127.0.0.11 inside each container
    env.ok("deploy", "-f", str(env.stack_file("p", PRIVATE)), "--name", "p")
    db = wait_for(lambda: running(env.sched, "p_db"), 60, "p_db running")[0]
    db_ip = json.loads(env.ok("network", "inspect", "p_private"))[0]["endpoints"][0]["ip"]
    t1 = next(t for t in ts if t.node == "host1")
    h1 = env.host("host1")
    assert "nameserver 127.0.0.11" in str(h1.cli("exec", t1.container_id, "cat", "/etc/resolv.conf").stdout)

    seen: list[str] = []

    def lookup(name: str) -> list[str]:
        r = h1.cli("exec", t1.container_id, "nslookup", name, timeout=30)
        seen.append(f"{name}: {r.stdout!r} {r.stderr!r}")
        return sorted(set(re.findall(r"10\.25[0-9]\.[0-9]+\.[0-9]+", str(r.stdout))))

    every = sorted(ips.values())
    wait_for(lambda: lookup("tasks.web") == every, 20, "tasks.web: every task")
    assert lookup("tasks.o_web") == lookup("tasks.www") == every, seen
    vip = net["vips"][0]["ip"] if net.get("vips") else json.loads(env.ok("network", "inspect", "appnet"))[0]["vips"][0]["ip"]
    assert vip not in every and vip.startswith("10.252.0.")
    assert lookup("web") == lookup("o_web") == lookup("www") == [vip], seen
    # the VIP: each connection DNATed (in the client's own namespace) to one of the ready tasks
    answered = {tcp_get(h1, t1.container_id, vip).strip().splitlines()[-1] for _ in range(12)}
    assert len(answered) >= 2 and answered <= {t.name for t in ts}, answered
    t2 = next(t for t in ts if t.node == "host2")
    assert lookup(t2.name) == [ips[t2.id]] and lookup(f"{t2.name}.{t2.id}") == [ips[t2.id]]
    assert db_ip not in lookup("db") and db_ip not in lookup("p_db")  # another stack's private network
    assert db.node  # (placed and running: the name exists, just not here)
    env.ok("stack-rm", "p")

    # an FDB entry deleted behind the agent's back is put back by its periodic reconcile
    mac = "02:42:" + ":".join(f"{int(b):02x}" for b in ips[t2.id].split("."))
    vx = next(ln.split(":")[1].strip().split("@")[0] for ln in h1.run("ip", "-o", "link", "show", "type",
                                                                       "vxlan").stdout.splitlines())
    assert f"{mac} dst {env.host('host2').ip} self permanent" in h1.run("bridge", "fdb", "show", "dev", vx).stdout
    h1.run("bridge", "fdb", "del", mac, "dev", vx, "self", check=True)
    wait_for(lambda: f"{mac} dst {env.host('host2').ip} self permanent" in
             h1.run("bridge", "fdb", "show", "dev", vx).stdout, 15, "the FDB entry repaired")
    assert t2.name in tcp_get(h1, t1.container_id, ips[t2.id])

    # the agent killed (kill -9) and started again: the tables were never touched, the adopted
    # container's resolver is back, the stream of names and connections goes on
    h1.restart_agent(hard=True)
    wait_for(lambda: t2.name in tcp_get(h1, t1.container_id, ips[t2.id]), 20, "TCP after the agent's restart")
    wait_for(lambda: lookup("tasks.web") == every, 20, "names again after the agent's restart")
    assert f"{mac} dst {env.host('host2').ip} self permanent" in h1.run("bridge", "fdb", "show", "dev", vx).stdout

    # removal: the stack, then the network; no overlay link is left on any host
    r = cli(env.sched.address, "network", "rm", "appnet")
    assert r.returncode != 0 and "in use by service o_web" in r.stderr
    env.ok("stack-rm", "o")
    wait_for(lambda: not [c for h in env.c for c in h.stub.ListContainers(
        apb.ListContainersRequest(filters={"label": "dockyard.task"}), timeout=5).containers], 30,
        "the task containers stopped")
    wait_for(lambda: cli(env.sched.address, "network", "rm", "appnet").returncode == 0, 30, "network rm")
    wait_for(lambda: all(not h.run("ip", "-o", "link", "show", "type", "vxlan").stdout.strip()
                         and "master do" not in h.run("ip", "-o", "link", "show").stdout for h in env.c),
             20, "no overlay link left")


PEER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7100)); s.listen(1); s.settimeout(30)
print("ready", flush=True)
c, addr = s.accept(); c.sendall(f"from {addr[0]}".encode()); c.close()
"""


def test_a_container_reaches_beyond_its_host_masqueraded(env: Env) -> None:
    """Egress (the agent's default --ip-forward and --ip-masq, in a netns host): a plain container on
    host1 connects to host2's underlay address, and host2 sees host1's address (masqueraded)."""
    import subprocess
    import sys

    h1, h2 = env.host("host1"), env.host("host2")
    nat = h1.run("iptables", "-t", "nat", "-S", "POSTROUTING").stdout
    assert f"-s {h1.subnet} ! -o {h1.bridge}" in nat and "MASQUERADE" in nat
    assert h1.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    peer = subprocess.Popen(["nsenter", f"--net=/run/netns/{h2.netns}", "--", sys.executable, "-c", PEER, h2.ip],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "ready"
        r = h1.cli("run", "--rm", "busybox", "sh", "-c", f"nc -w 5 {h2.ip} 7100 </dev/null", timeout=60)
        assert f"from {h1.ip}" in str(r.stdout), (r.stdout, r.stderr)
    finally:
        peer.kill()
        peer.wait()
