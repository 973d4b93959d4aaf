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
from tests.cluster_harness import cli, running, wait_for
from tests.multihost import Host, multihost_session_check_fixture  # noqa: F401
from tests.overlay_moves import (
    ECHO_CLIENT,
    ECHO_SERVER,
    Env,
    echoes,
    live_move_with_echoes,
    overlay_cluster,
    stall,
)

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
    """The clients' packets reach the new host as soon as the restored socket can take them, from a
    third host and from the source host itself (its bridge port of the frozen copy is down): the
    longest gap between two echoes is the client's first retransmission after the downtime, plus
    at most 1 s (issue 18 asks for the downtime + 1 s, which TCP's doubling retransmission timer
    allows only while the downtime stays under about 1 s; at load 10 it is 1-2 s here). The
    scheduler is held 3 s before it finishes the move (the task's node changes in etcd then): the
    address must have followed the container long before that, at the switch (when it followed
    only the finish, the gap was 6.9 s for a downtime of 0.4 s)."""
    got, downtime, _total, out = live_move_with_echoes(env, "echonet", "10.253.1.0/24", 1, 0.05,
                                                       pause="finishing:3", source_client=True)
    assert sorted(got) == [7001, 7002]  # a client on a third host, and one on the source host
    worst = max(stall(s, 0) for s in got.values())
    bound = retransmission_after(downtime) + 1.0
    print(f"\n{out.strip()}\nlongest gap between echoes {worst * 1000:.0f} ms (downtime {downtime * 1000:.0f} ms, "
          f"bound {bound * 1000:.0f} ms)")
    assert worst <= bound, f"echoes stalled {worst:.2f} s for a downtime of {downtime:.2f} s"


def retransmission_after(downtime: float, rto: float = 0.3) -> float:
    """When a sender whose packets went unanswered from time 0 retransmits next after `downtime`:
    its timer doubles from about `rto` (Linux: at least 200 ms, more with a noisy RTT), so at
    rto, 3 rto, 7 rto, 15 rto ..."""
    k = 1
    while rto * (2 ** k - 1) < downtime:
        k += 1
    return rto * (2 ** k - 1)


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


def fdb_dst(h: Host, mac: str) -> str:
    """The VTEP host h's VXLAN FDB sends `mac` to ("" when it has no such entry: local, or none)."""
    for line in str(h.run("bridge", "fdb", "show").stdout).splitlines():
        f = line.split()
        if f and f[0] == mac and "dst" in f:
            return f[f.index("dst") + 1]
    return ""


def test_a_live_move_that_fails_after_the_switch_points_the_address_back(env: Env) -> None:
    """The target's agent dies while the source holds the frozen task (the agent's fault hook waits
    1.5 s after the dump, common/faults.py), after the address switched to the target: the source's
    copy runs on with its address, and the hosts point the address back at the source as soon as
    it reports the rollback, well before recovery settles the migration (which waits for the dead
    target's node to be declared down); a new connection from a third host reaches it.

    (The connection that was open does not survive this rollback: after CRIU's aborted post-copy
    dump the unfrozen tree has no TCP socket left. A CRIU-side finding, reported in issue 18.)"""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from scheduler.network import mac_for

    env.ok("network", "create", "--subnet", "10.253.4.0/24", "failnet")
    srv = env.deploy("ef", ECHO_SERVER.format(net="failnet", last=7002, labels=""))
    ip = address_of(env, "failnet", srv.id)
    client = env.deploy("tf", ECHO_CLIENT.format(net="failnet", first=7001, last=7001, ip=ip, interval=0.05,
                                                 where=f"node.name != {srv.node}"))
    ch, src = env.host(client.node), env.host(srv.node)
    # for the new connection after the rollback (the echo client exits with its lost connection)
    probe = env.deploy("pf", PROBE.format(net="failnet", on=client.node))
    wait_for(lambda: len(echoes(ch, client.container_id).get(7001, [])) > 10, 60, "the echo flowing")
    th = next(h for h in env.c if h.name not in (srv.node, client.node))
    mac = mac_for(ip)
    seen: list[tuple[float, str]] = []
    done = threading.Event()

    def watch() -> None:  # where the client's host sends the address, over time
        while not done.is_set():
            dst = fdb_dst(ch, mac)
            if not seen or seen[-1][1] != dst:
                seen.append((time.monotonic(), dst))
            time.sleep(0.05)

    pause = src.root / "fault-pause-after-dump"
    pause.write_text("1.5")  # the rollback comes well before the dead target's node is declared down (3 s)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            moving = pool.submit(cli, env.sched.address, "migrate", srv.name, "--to", th.name, "--live", timeout=180)
            wait_for(lambda: list((src.root / "containers").glob("*/lazy-dump.json")), 30, "the source frozen")
            th.kill9()
            r = moving.result()
            returned = time.monotonic()
    finally:
        done.set()
        watcher.join()
        pause.unlink(missing_ok=True)
        if not th.agent_alive():
            th.restart_agent()
    print("\n" + (r.stdout + r.stderr).strip())
    assert r.returncode != 0 and "rolled back" in r.stdout + r.stderr, r.stdout + r.stderr
    src_vtep, th_vtep = src.ip, th.ip
    print("the client host's FDB entry for the address: " + ", ".join(
        f"{dst or '-'} at {t - returned:+.2f} s" for t, dst in seen) + " (relative to the command's end)")
    dsts = [d for _, d in seen]
    assert th_vtep in dsts, f"the address never switched to {th_vtep}: {seen}"
    back_at = next(t for t, d in seen[dsts.index(th_vtep):] if d == src_vtep)
    assert back_at < returned - 1.0, f"pointed back at the source only {back_at - returned:+.2f} s from the end"
    back = wait_for(lambda: [t for t in running(env.sched, "ef_echo") if t.node == srv.node], 60, "running on the source")
    assert back[0].id == srv.id and address_of(env, "failnet", srv.id) == ip
    r2 = ch.cli("exec", probe.container_id, "sh", "-c", f"echo again | timeout 5 nc {ip} 7002", timeout=20)
    assert "again" in str(r2.stdout), (r2.stdout, r2.stderr)
    wait_for(lambda: any(n.name == th.name and n.status == "ready"
                         for n in env.sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes), 60, "target back")
    for name in ("pf", "tf", "ef"):
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
