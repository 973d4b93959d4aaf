"""Live migration of a task on a cluster network between two netns hosts keeps its overlay address
and an established TCP connection from a task on a third host (tests/multihost.py, real CRIU).

The server task streams a counter over one TCP connection; the client task on another host
writes what it receives to a file (its stdin held open: a half-closed connection is not one CRIU
restores). After `dockyard migrate --live` the server runs on a third host
with the same address on eth1, and the client's file keeps growing with the next numbers: the
connection was neither reset nor reopened.

The echo test (tests/overlay_moves.py) needs both directions: the client's packets must reach the
new host, which they do from the switch on (the source froze the task), not only once the scheduler
finishes the move; it holds the scheduler 3 s before finishing to tell the two apart (6.9 s of
stall before the switch existed, under 1 s with it)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import cluster_pb2 as cpb
from tests.cluster_harness import running, wait_for
from tests.multihost import Host, multihost_session_check_fixture  # noqa: F401
from tests.overlay_moves import Env, live_move_with_echoes, overlay_cluster, stall

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
      placement: {{constraints: ["node.name != {avoid}"]}}
networks:
  mignet: {{external: true}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None or os.geteuid() != 0:
        pytest.skip("needs root and CRIU (deploy/install-criu.sh)")
    with overlay_cluster(tmp_path_factory.mktemp("ovlmig"), busybox_tar_path) as e:
        yield e


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


def test_live_migration_keeps_an_echo_going_in_both_directions(env: Env) -> None:
    """The longest gap between two echoes is the downtime plus at most 1 s (issue 18's target): the
    clients' packets reach the new host as soon as the restored socket can take them, from a third
    host and from the source host itself (its bridge port of the frozen copy is down). The scheduler
    is held 3 s before it finishes the move (the task's node changes in etcd then): the address must
    have followed the container long before that, at the switch."""
    got, downtime, _total, out = live_move_with_echoes(env, "echonet", "10.253.1.0/24", 1, 0.05,
                                                       pause="finishing:3", source_client=True)
    assert sorted(got) == [7001, 7002]  # a client on a third host, and one on the source host
    worst = max(stall(s, 0) for s in got.values())
    print(f"\n{out.strip()}\nlongest gap between echoes {worst * 1000:.0f} ms (downtime {downtime * 1000:.0f} ms)")
    assert worst <= downtime + 1.0, f"echoes stalled {worst:.2f} s for a downtime of {downtime:.2f} s"


WEB = """
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "echo hello > /tmp/index.html; httpd -f -p 80 -h /tmp"]
    networks: [{net}]
    deploy:
      restart_policy: {{condition: any, delay: 1s}}
      placement: {{constraints: ["node.name != {avoid}"]}}
networks:
  {net}: {{external: true}}
"""

PROBE = """
services:
  probe:
    image: busybox:latest
    command: ["sleep", "3600"]
    networks: [{net}]
    deploy:
      restart_policy: {{condition: none}}
      placement: {{constraints: ["node.name == {on}"]}}
networks:
  {net}: {{external: true}}
"""


def fetch(h: Host, cid: str, url: str) -> str:
    r = h.cli("exec", cid, "timeout", "3", "wget", "-qO-", url, timeout=20)  # (busybox wget -T crashes)
    return str(r.stdout).strip() or f"(exit {r.returncode}: {str(r.stderr).strip()})"


def reach(h: Host, cid: str, url: str, what: str, timeout: float = 30) -> None:
    """Until `url` answers "hello" from the container; else fail with its last answer."""
    seen = [""]

    def ok() -> bool:
        seen[0] = fetch(h, cid, url)
        return seen[0] == "hello"

    try:
        wait_for(ok, timeout, what, every=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}: {url} answered {seen[0]!r}") from None


def address_of(env: Env, net: str, task_id: str) -> str:
    return str(next(e["ip"] for e in json.loads(env.ok("network", "inspect", net))[0]["endpoints"]
                    if e["task_id"] == task_id))


def test_cold_migration_keeps_the_overlay_address(env: Env) -> None:
    """Cold: the task stops, its writable layer and config (with its overlays) move, it starts on
    the target with the same address; a client on a third host reaches it there by address and by
    name (tasks.NAME and the service's VIP)."""
    env.ok("network", "create", "--subnet", "10.253.2.0/24", "coldnet")
    client_host = env.c[1].name
    probe = env.deploy("pc", PROBE.format(net="coldnet", on=client_host))
    web = env.deploy("wc", WEB.format(net="coldnet", avoid=client_host))
    ip = address_of(env, "coldnet", web.id)
    ch = env.host(client_host)
    reach(ch, probe.container_id, f"http://{ip}/", "web reachable")
    target = next(h.name for h in env.c if h.name not in (web.node, client_host))
    out = env.ok("migrate", web.name, "--to", target, "--cold", timeout=180)
    assert f"to {target} (cold)" in out, out
    moved = wait_for(lambda: [t for t in running(env.sched, "wc_web") if t.node == target], 60, "running on target")[0]
    assert address_of(env, "coldnet", moved.id) == ip
    assert f"inet {ip}/" in str(env.host(target).cli("exec", moved.container_id, "ip", "-o", "addr", "show",
                                                      "eth1").stdout)
    for url in (f"http://{ip}/", "http://tasks.web/", "http://web/"):
        reach(ch, probe.container_id, url, f"{url} after the move")
    for name in ("wc", "pc"):
        env.ok("stack", "rm", name)


def test_a_task_rescheduled_off_a_dead_host_keeps_its_address_and_names(env: Env) -> None:
    """The host of a task dies (power cut): the task is placed on another host with the address it
    had, and a client reaches it by address, tasks.NAME and the VIP soon after (printed: seconds
    from the power cut). Last in this module: the host is brought back at the end."""
    env.ok("network", "create", "--subnet", "10.253.3.0/24", "deadnet")
    client_host = env.c[1].name
    probe = env.deploy("pd", PROBE.format(net="deadnet", on=client_host))
    web = env.deploy("wd", WEB.format(net="deadnet", avoid=client_host))
    ip = address_of(env, "deadnet", web.id)
    ch = env.host(client_host)
    reach(ch, probe.container_id, "http://tasks.web/", "web reachable")
    dead = env.host(web.node)
    t0 = time.monotonic()
    dead.kill()
    try:
        again = wait_for(lambda: [t for t in running(env.sched, "wd_web") if t.node != dead.name], 60,
                         "the task running elsewhere")[0]
        placed = time.monotonic() - t0
        assert address_of(env, "deadnet", again.id) == ip
        reached = {}
        for url in (f"http://{ip}/", "http://tasks.web/", "http://web/"):
            reach(ch, probe.container_id, url, f"{url} after the host died")
            reached[url] = time.monotonic() - t0
        print(f"\nhost {dead.name} died: task running on {again.node} after {placed:.1f} s; reached by "
              + ", ".join(f"{u} {s:.1f} s" for u, s in reached.items()))
        assert max(reached.values()) - placed < 10, reached
    finally:
        dead.revive()
        wait_for(lambda: any(n.name == dead.name and n.status == "ready"
                             for n in env.sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes), 60, "host back")
