"""The routing mesh end to end on 3 hosts made of network namespaces (tests/multihost.py), a real
etcd and a scheduler: a service publishing 8080 (ingress mode, the default) with tasks on host1
and host2 only answers on all three hosts' addresses, host3's included where no task runs, from
outside (the root namespace, as a client would) and from the host itself (its address and
127.0.0.1), spread over both tasks; a task going away (scale 2 -> 1) stops receiving; `mode: host`
answers only where a task runs; a second service cannot take the same port. The stack names no
network, so its services share `m_default` (as Swarm's) and reach each other by name; `db` is in
dnsrr mode (its name answers with its tasks' addresses, no VIP). `stack-rm` removes the default
network too, and leaves no mesh rule, ingress bridge or address behind on any host."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.cluster_harness import SchedulerProcess, cli, running, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, Host, cluster, http_get, join, multihost_session_check_fixture  # noqa: F401

pytestmark = [pytest.mark.multinode, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

STACK = """
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "hostname > /tmp/name; exec httpd -f -p 80 -h /tmp"]
    ports: ["{port}:80"]
    deploy:
      replicas: 2
      placement: {{max_replicas_per_node: 1, constraints: ["node.name != host3"]}}
  local:
    image: busybox:latest
    command: ["sh", "-c", "hostname > /tmp/name; exec httpd -f -p 81 -h /tmp"]
    ports: [{{target: 81, published: {hport}, mode: host}}]
    deploy:
      placement: {{constraints: ["node.name == host1"]}}
  db:
    image: busybox:latest
    command: ["sleep", "3600"]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
"""


ASK = """
import json, socket, sys
from dnslib import DNSRecord
out = {}
for n in sys.argv[1:]:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.sendto(DNSRecord.question(n).pack(), ("127.0.0.11", 53))
    out[n] = [str(r.rdata) for r in DNSRecord.parse(u.recv(4096)).rr]
print(json.dumps(out))
"""


class Env:
    def __init__(self, c: Cluster, sched: SchedulerProcess, tmp: Path) -> None:
        self.c, self.sched, self.tmp = c, sched, tmp

    def ok(self, *args: str) -> str:
        r = cli(self.sched.address, *args)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def host(self, name: str) -> Host:
        return next(h for h in self.c if h.name == name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("mesh")
    with cluster(3, base, busybox_tar_path) as c:
        etcd = EtcdServer.start()
        sched = SchedulerProcess(base / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}", metrics=False)
        try:
            sched.start()
            for h in c:
                join(h, sched.address)
            wait_for(lambda: len([n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                  if n.status == "ready"]) == 3, 30, "3 nodes ready")
            yield Env(c, sched, base)
        finally:
            sched.stop()
            etcd.stop()


def get(url: str) -> str:
    with contextlib.suppress(OSError):
        return http_get(url, timeout=3).strip()
    return ""


def mesh_rules(h: Host) -> str:
    return "\n".join(ln for table in ("nat", "filter")
                     for ln in h.run("iptables", "-w", "-t", table, "-S").stdout.splitlines() if "DY-MESH" in ln)


def test_a_published_port_answers_on_every_node_and_follows_the_tasks(env: Env) -> None:
    port, hport = 18080 + free_port() % 1000, 19080 + free_port() % 1000
    f = env.tmp / "m.yaml"
    f.write_text(STACK.format(port=port, hport=hport))
    env.ok("deploy", "-f", str(f), "--name", "m")
    web = wait_for(lambda: len(running(env.sched, "m_web")) == 2 and running(env.sched, "m_web"), 60, "2 web tasks")
    wait_for(lambda: running(env.sched, "m_local"), 60, "the host-mode task")
    assert sorted(t.node for t in web) == ["host1", "host2"]
    names = {t.name for t in web}
    h1, h2, h3 = env.host("host1"), env.host("host2"), env.host("host3")

    # every node answers, host3 (no task) included, and the answers come from both tasks
    for h in env.c:
        wait_for(lambda h=h: get(f"http://{h.ip}:{port}/name") in names, 30, f"the mesh on {h.name}")
    answered: set[str] = set()  # a task reported running joins each host's rules at the next map

    def both() -> bool:
        answered.add(get(f"http://{h3.ip}:{port}/name"))
        return answered == names

    wait_for(both, 30, f"answers from both tasks through host3 (so far {answered})", every=0.05)
    # from the node itself: its own address and 127.0.0.1
    assert h3.http_get(f"http://{h3.ip}:{port}/name").strip() in names
    assert h3.http_get(f"http://127.0.0.1:{port}/name").strip() in names
    # the task sees the entry node's ingress address (the SNAT that brings replies back through it)
    ingress = json.loads(env.ok("network", "inspect", "ingress"))[0]
    assert ingress["ingress"] and ingress["services"] == ["m_web"]
    node_ips = {e["node"]: e["ip"] for e in ingress["endpoints"] if e["task_id"].startswith("node:")}
    assert set(node_ips) == {"host1", "host2", "host3"}
    assert node_ips["host3"] in h3.run("ip", "-o", "addr").stdout
    # host3 reaches a task's ingress address itself: its bridge answers to the MAC its peers were
    # told (02:42 + the address), not the random one a bridge starts with
    task_ips = [e["ip"] for e in ingress["endpoints"] if e["service"] == "m_web"]
    assert len(task_ips) == 2
    assert all(h3.http_get(f"http://{ip}/name").strip() in names for ip in task_ips)
    # host mode: only host1, where its task runs, answers
    assert wait_for(lambda: get(f"http://{h1.ip}:{hport}/name"), 30, "host-mode port on host1") == "m_local.1"
    assert get(f"http://{h2.ip}:{hport}/name") == "" and get(f"http://{h3.ip}:{hport}/name") == ""

    # the stack's default network: every service on it, names between them, dnsrr without a VIP
    default = json.loads(env.ok("network", "inspect", "m_default"))[0]
    assert default["services"] == ["m_db", "m_local", "m_web"] and default["labels"]["com.docker.stack.namespace"] == "m"
    assert [v["service"] for v in default["vips"]] == ["m_local", "m_web"]  # none for dnsrr's m_db
    w1 = next(t for t in web if t.node == "host1")

    # Names are asked from the task's own network namespace with dnslib (busybox's nslookup in a
    # task sometimes gets no answer from 127.0.0.11 while a query from the same namespace does: an
    # open question, see the issue notes), then the address is reached over the overlay.
    pid = int(h1.stub.ListContainers(apb.ListContainersRequest(filters={"label": f"dockyard.task={w1.id}"}),
                                     timeout=5).containers[0].pid)

    def ask(*names: str) -> dict[str, list[str]]:
        r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", ASK, *names],
                           capture_output=True, text=True, timeout=30)
        return dict(json.loads(r.stdout)) if r.returncode == 0 else {}

    (vip_local,) = wait_for(lambda: ask("local").get("local"), 30, "local resolving")
    assert "m_local.1" in wait_for(lambda: "m_local.1" in str(h1.cli(
        "exec", w1.container_id, "sh", "-c", f"printf 'GET /name HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vip_local} 81",
        timeout=30).stdout) and "m_local.1", 30, "web reaching local at its VIP")
    wait_for(lambda: len(running(env.sched, "m_db")) == 2, 60, "2 db tasks")
    db_ips = sorted(e["ip"] for e in json.loads(env.ok("network", "inspect", "m_default"))[0]["endpoints"]
                    if e["service"] == "m_db")
    assert len(db_ips) == 2

    assert wait_for(lambda: sorted(ask("db").get("db", [])) == db_ips, 30, "db: its tasks' addresses")
    assert sorted(ask("tasks.db")["tasks.db"]) == db_ips

    # the port is the mesh's on every node: another service cannot publish it, in either mode
    r = cli(env.sched.address, "service", "create", "--name", "other", "-p", f"{port}:80", "busybox:latest",
            "sleep", "60")
    assert r.returncode != 0 and f"port {port}/tcp is already published by service m_web" in r.stderr, r.stderr

    # a task going away stops receiving: scaled to one, every answer is the one left
    env.ok("service", "scale", "m_web=1")
    left = wait_for(lambda: len(running(env.sched, "m_web")) == 1 and running(env.sched, "m_web"), 60, "one task")
    # (each host drops the gone task from its own rules when it hears of it: wait for all three)
    wait_for(lambda: {get(f"http://{h.ip}:{port}/name") for h in env.c for _ in range(4)} == {left[0].name}, 30,
             "only the remaining task answering, on every host")

    # removed: no mesh rule, no ingress bridge or address left on any host; the port is closed
    env.ok("stack-rm", "m")
    wait_for(lambda: all(not mesh_rules(h) for h in env.c), 30, "mesh rules gone on every host")
    wait_for(lambda: all(node_ips[h.name] not in h.run("ip", "-o", "addr").stdout for h in env.c), 30,
             "ingress addresses gone")
    wait_for(lambda: all(not h.run("ip", "-o", "link", "show", "type", "vxlan").stdout.strip() for h in env.c), 30,
             "no VXLAN device left")
    assert get(f"http://{h3.ip}:{port}/name") == ""
    assert "m_default" not in env.ok("network", "ls")


INTERNAL = """
services:
  app:
    image: busybox:latest
    command: ["sh", "-c", "hostname > /tmp/name; exec httpd -f -p 80 -h /tmp"]
    networks: [back]
    deploy: {placement: {constraints: ["node.name == host1"]}}
  db:
    image: busybox:latest
    command: ["sh", "-c", "hostname > /tmp/name; exec httpd -f -p 80 -h /tmp"]
    networks: [back]
    deploy: {placement: {constraints: ["node.name == host2"]}}
networks:
  back: {internal: true}
"""


def test_an_internal_network_has_no_route_out(env: Env) -> None:
    """Tasks only on an internal network reach each other by name across hosts, and nothing else:
    no default route, host3's underlay address unreachable (a plain container reaches it: refused)."""
    f = env.tmp / "i.yaml"
    f.write_text(INTERNAL)
    env.ok("deploy", "-f", str(f), "--name", "i")
    app = wait_for(lambda: running(env.sched, "i_app"), 60, "app")[0]
    wait_for(lambda: running(env.sched, "i_db"), 60, "db")
    assert json.loads(env.ok("network", "inspect", "i_back"))[0]["internal"]
    h1, h3 = env.host("host1"), env.host("host3")

    def sh(cmd: str) -> str:
        r = h1.cli("exec", app.container_id, "sh", "-c", cmd, timeout=30)
        return str(r.stdout) + str(r.stderr)

    assert "default" not in sh("ip route")
    assert "i_db.1" in wait_for(lambda: "i_db.1" in sh("printf 'GET /name HTTP/1.0\\r\\n\\r\\n' | nc -w 3 db 80")
                                and sh("printf 'GET /name HTTP/1.0\\r\\n\\r\\n' | nc -w 3 db 80"), 30, "db by name")
    assert "unreachable" in sh(f"nc -w 2 {h3.ip} 9 </dev/null; echo rc=$?").lower()
    plain = h1.cli("run", "--rm", "busybox", "sh", "-c", f"nc -w 2 {h3.ip} 9 </dev/null; echo rc=$?", timeout=60)
    out = (str(plain.stdout) + str(plain.stderr)).lower()
    assert "refused" in out and "unreachable" not in out, plain  # reached host3, nothing listens on 9
    env.ok("stack-rm", "i")
    assert "i_back" not in env.ok("network", "ls")
