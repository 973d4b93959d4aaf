"""A replicated control plane (issue 14): 3 etcd members on loopback (tests/etcd_server.py
EtcdCluster); one member is SIGKILLed while puts go on, and the write gap is timed: from the kill
to the first put acknowledged after it. Two cases: the member the client uses (not the raft
leader), and the raft leader. Ours: the scheduler's Store (scheduler/store.py: one gRPC target of
every member, pick_first), puts in a loop. Peer, in the same run: etcd's own Go client, `etcdctl
--endpoints=<all three> put` in a loop (its gap includes one process start, ~10-20 ms, shown).
Median of --runs runs, each on a fresh cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from scheduler.main import parse_endpoints
from scheduler.store import Put, Store, StoreError, Unavailable
from tests.bench.common import load
from tests.etcd_server import EtcdCluster

ETCDCTL = "/usr/bin/etcdctl"


def _victim(c: EtcdCluster, case: str) -> int:
    leader = c.leader()
    return leader if case == "leader" else (0 if leader != 0 else 1)


def ours(case: str) -> float:
    with EtcdCluster(3).start() as c:
        k = _victim(c, case)
        # the member in use is the first of the list: put the victim first for "in use"
        order = [k] + [i for i in range(3) if i != k] if case == "in-use" else list(range(3))
        urls = ",".join(c.members[i].endpoint for i in order)

        async def main() -> float:
            store = await Store.connect(endpoints=parse_endpoints(urls))
            try:
                for i in range(50):
                    await store.commit([Put(b"/dockyard/bench/k", str(i).encode(), None)])
                c.kill9(k)
                t0 = time.monotonic()
                while True:
                    try:
                        await store.commit([Put(b"/dockyard/bench/k", b"after", None)])
                        return time.monotonic() - t0
                    except (Unavailable, StoreError):
                        await asyncio.sleep(0.01)
            finally:
                await store.close()

        return asyncio.run(main())


def peer(case: str) -> tuple[float, float]:
    """(gap, one etcdctl put's own time on a healthy cluster)."""
    with EtcdCluster(3).start() as c:
        k = _victim(c, case)
        order = [k] + [i for i in range(3) if i != k] if case == "in-use" else list(range(3))
        urls = ",".join(c.members[i].endpoint for i in order)
        cmd = [ETCDCTL, "--endpoints", urls, "--command-timeout", "5s", "put", "/dockyard/bench/k"]
        env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
        t = time.monotonic()
        for _ in range(5):
            subprocess.run([*cmd, "before"], check=True, capture_output=True, env=env, timeout=30)
        one = (time.monotonic() - t) / 5
        c.kill9(k)
        t0 = time.monotonic()
        while subprocess.run([*cmd, "after"], capture_output=True, env=env, timeout=30).returncode != 0:
            time.sleep(0.01)
        return time.monotonic() - t0, one


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    print("| member killed | dockyard Store gap, s (median) | etcdctl gap, s (median) | etcdctl put alone, s | "
          "ratio | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in ("in-use", "leader"):
        o = [ours(case) for _ in range(a.runs)]
        p = [peer(case) for _ in range(a.runs)]
        mo, mp = statistics.median(o), statistics.median(x for x, _ in p)
        one = statistics.median(y for _, y in p)
        print(f"| {case} | {mo:.3f} ({', '.join(f'{x:.2f}' for x in o)}) | {mp:.3f} "
              f"({', '.join(f'{x:.2f}' for x, _ in p)}) | {one:.3f} | {mo / mp:.2f}x | {load()} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
