"""`python -m tests.bench reconcile`: after many create/delete/migrate cycles, one agent killed and
started again and one etcd compaction, is every host's kernel exactly what etcd says (issue 18's
"reconcile diff 0")? 3 netns hosts with real agents, a scheduler and etcd (tests/multihost.py).

A cycle scales the service between 2 and 4 tasks (two tasks created or two removed: their
addresses allocated or freed, every host's FDB and neighbour entries added or deleted); every
--move-every cycles a task is migrated cold to another host (its address kept, its VTEP moved).
Then host2's agent is killed (SIGKILL) and started again, and etcd is compacted at its current
revision (a watch that resumes from an older revision must list again). The diff: for every host,
the VXLAN device's FDB entries (MAC -> VTEP) and neighbour entries (IP -> MAC) read with `bridge`
and `ip` in the host's namespace, against the endpoints of `network inspect` that are not on that
host; missing, wrong and extra entries all count. The peer is the published target (0) and the
time it took to get there after the last event.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from agent.runtime.network.overlay import Overlays
from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.bench.bench_mesh import _join
from tests.bench.common import load
from tests.cluster_harness import SchedulerProcess, cli, running, wait_for
from tests.etcd_server import running_etcd
from tests.images import busybox_tar
from tests.multihost import Cluster, Host, sweep_stale


def kernel_tables(h: Host, vni: int) -> tuple[dict[str, str], dict[str, str]]:
    """(MAC -> VTEP, IP -> MAC) of the network's VXLAN device on host h ({} if it has none)."""
    dev = Overlays(h.bridge, h.ip).vxlan_name(vni)
    fdb: dict[str, str] = {}
    neigh: dict[str, str] = {}
    r = h.run("bridge", "-j", "fdb", "show", "dev", dev)
    if r.returncode != 0:
        return fdb, neigh
    for e in json.loads(r.stdout or "[]"):
        if e.get("dst") and e.get("mac") != "00:00:00:00:00:00":
            fdb[e["mac"]] = e["dst"]
    for e in json.loads(h.run("ip", "-j", "neigh", "show", "dev", dev).stdout or "[]"):
        if e.get("lladdr"):
            neigh[e["dst"]] = e["lladdr"]
    return fdb, neigh


CHECKED = [0]   # kernel entries compared by the last diff (so that a 0 is not a diff of nothing)


def diff(c: Cluster, net: dict[str, object]) -> tuple[int, list[str]]:
    endpoints = [e for e in net["endpoints"] if isinstance(e, dict)]  # type: ignore[attr-defined]
    vni = int(net["vni"])  # type: ignore[call-overload]
    n, details = 0, []
    CHECKED[0] = 0
    for h in c:
        want_fdb = {e["mac"]: e["vtep"] for e in endpoints if e["node"] != h.name and e.get("vtep")}
        want_neigh = {e["ip"]: e["mac"] for e in endpoints if e["node"] != h.name and e.get("vtep")}
        fdb, neigh = kernel_tables(h, vni)
        has_local = any(e["node"] == h.name for e in endpoints)
        if not has_local and not fdb and not neigh:
            continue   # no endpoint here: the host may keep no device for the network at all
        CHECKED[0] += len(set(want_fdb) | set(fdb)) + len(set(want_neigh) | set(neigh))
        for k in set(want_fdb) | set(fdb):
            if want_fdb.get(k) != fdb.get(k):
                n += 1
                details.append(f"{h.name} fdb {k}: want {want_fdb.get(k)} have {fdb.get(k)}")
        for k in set(want_neigh) | set(neigh):
            if want_neigh.get(k) != neigh.get(k):
                n += 1
                details.append(f"{h.name} neigh {k}: want {want_neigh.get(k)} have {neigh.get(k)}")
    return n, details


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--move-every", type=int, default=10)
    args = ap.parse_args(argv)
    sweep_stale()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        base = Path(tmp)
        tar = busybox_tar(base / "busybox.tar")
        with running_etcd() as etcd, Cluster(3, base, busybox_tar=tar) as c:
            s = SchedulerProcess(base / "sched", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}",
                                 metrics=False)
            try:
                s.start()
                for h in c:
                    _join(h, s.address)
                wait_for(lambda: len([n for n in s.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                      if n.status == "ready"]) == 3, 30, "3 nodes")

                def ok(*a: str, timeout: float = 120) -> str:
                    r = cli(s.address, *a, timeout=timeout)
                    assert r.returncode == 0, f"{a}: {r.stdout}{r.stderr}"
                    return str(r.stdout)

                def inspect() -> dict[str, object]:
                    d: dict[str, object] = json.loads(ok("network", "inspect", "recnet"))[0]
                    return d

                print(f"load average before: {load()}", flush=True)
                ok("network", "create", "recnet")
                ok("service", "create", "-d", "--name", "rc", "--network", "recnet", "--replicas", "2",
                   "busybox:latest", "sleep", "36000")
                wait_for(lambda: len(running(s, "rc")) == 2, 60, "2 tasks")
                t0 = time.monotonic()
                moves = 0
                for i in range(args.cycles):
                    want = 4 if i % 2 == 0 else 2
                    ok("service", "scale", f"rc={want}")
                    wait_for(lambda w=want: len(running(s, "rc")) == w, 90, f"{want} tasks (cycle {i})")
                    if args.move_every and i % args.move_every == args.move_every - 1:
                        t = running(s, "rc")[0]
                        target = next(h.name for h in c if h.name != t.node)
                        ok("migrate", t.name, "--to", target, "--cold", timeout=180)
                        moves += 1
                cycles_s = time.monotonic() - t0
                mid, _ = diff(c, inspect())
                h2 = next(h for h in c if h.name == "host2")
                h2.restart_agent(hard=True)
                status = json.loads(subprocess.run(
                    ["etcdctl", "--endpoints", etcd.endpoint, "endpoint", "status", "-w", "json"],
                    capture_output=True, text=True, check=True).stdout)
                rev = int(status[0]["Status"]["header"]["revision"])
                subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "compact", str(rev)], check=True,
                               capture_output=True)
                t1 = time.monotonic()
                last: tuple[int, list[str]] = (-1, [])

                def settled() -> bool:
                    nonlocal last
                    last = diff(c, inspect())
                    return last[0] == 0

                try:
                    wait_for(settled, 60, "reconcile diff 0")
                except AssertionError:
                    pass
                converge = time.monotonic() - t1
                print(f"| cycles | migrations | cycles took | diff right after the cycles | agent restart + etcd "
                      f"compaction at revision {rev}: diff (entries compared) | time to diff 0 | load |")
                print(f"| {args.cycles} | {moves} | {cycles_s:.0f} s | {mid} | {last[0]} ({CHECKED[0]}) | "
                      f"{converge:.1f} s | {load()} |")
                for d in last[1][:20]:
                    print("  ", d)
                return 0 if last[0] == 0 else 1
            finally:
                s.stop()


if __name__ == "__main__":
    raise SystemExit(main())
