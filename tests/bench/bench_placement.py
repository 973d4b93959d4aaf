"""Placement throughput: 100,000 tasks onto 5,000 simulated nodes, every placement persisted in etcd.

    python -m tests.bench.bench_placement [--nodes 5000] [--tasks 100000] [--services 1000]

Starts its own etcd (Debian's etcd-server, loopback, temp dir), writes the nodes and services,
then times the scheduler's real path: reconcile (filters, scorers, limited scan) -> Plan ->
executor (guarded transactions of <= 128 ops, several in flight). Services are reconciled in
chunks so the CPU work of one chunk overlaps the etcd round trips of the previous one. At the end
it re-reads everything from etcd, checks that every task is placed and no node is over capacity,
and reports the scheduler process's RSS with all nodes and tasks loaded.

Target (DESIGN.md): >= 5,000 placements/s on 2 cores. Nomad's published C1M: 3,750/s on 5 servers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.executor import ApplyResult, Executor
from scheduler.model import (
    NANO,
    Node,
    NodeStatus,
    PlacementSpec,
    PortSpec,
    Resources,
    ResourceSpec,
    Service,
    ServiceSpec,
)
from scheduler.placement import ClusterState, Pipeline
from scheduler.reconcile import Migrate, Place, Plan, new_service, reconcile
from scheduler.store import Store
from tests.etcd_server import running_etcd


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process, from /proc (the scheduler's own, or etcd's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def make_nodes(n: int, rng: random.Random) -> list[Node]:
    zones = ["a", "b", "c", "d"]
    return [
        Node(
            name=f"node-{i:05d}",
            address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7700",
            labels={"zone": zones[i % len(zones)], "disk": "ssd" if i % 3 else "hdd"},
            capacity=Resources(rng.choice([4, 8, 16]) * NANO, rng.choice([8, 16, 32]) << 30),
            role="worker",
            images=frozenset({f"app-{i % 50}:1"}),
        )
        for i in range(n)
    ]


def make_services(n_services: int, n_tasks: int) -> list[ServiceSpec]:
    per = n_tasks // n_services
    specs = []
    for i in range(n_services):
        kind = i % 10
        placement = PlacementSpec()
        ports: tuple[PortSpec, ...] = ()
        if kind == 0:
            placement = PlacementSpec(constraints=("node.labels.disk == ssd",))
        elif kind == 1:
            placement = PlacementSpec(spread=("node.labels.zone",))
        elif kind == 2:
            placement = PlacementSpec(constraints=("node.labels.zone != d",), max_replicas_per_node=2)
        elif kind == 3:
            ports = (PortSpec(target=80, published=20000 + i),)
        specs.append(ServiceSpec(
            name=f"svc-{i:04d}", image=f"app-{i % 50}:1", replicas=per + (1 if i < n_tasks % n_services else 0),
            ports=ports, placement=placement,
            resources=ResourceSpec(reservations=Resources(NANO // 10 * (1 + i % 3), (128 << 20) * (1 + i % 4))),
            strategy="binpack" if kind == 4 else "spread",
        ))
    return specs


@dataclass
class Result:
    nodes: int
    tasks: int
    placed: int
    pending: int
    seconds: float
    decide_seconds: float
    transactions: int
    conflicts: int
    rss_loaded: int
    rss_peak: int
    etcd_rss: int
    rebuild_seconds: float
    cpu_self: float
    cpu_etcd: float
    load: str
    failover_seconds: float
    failover_tasks: int
    failover_services: int


async def run(n_nodes: int, n_tasks: int, n_services: int, chunk: int, concurrency: int, host: str,
              port: int, etcd_rss: Callable[[], int], etcd_pid: int, tls: Any = None, server_name: str = "") -> Result:
    rng = random.Random(42)
    store = await Store.connect(host, port, tls=tls, server_name=server_name)
    nodes = make_nodes(n_nodes, rng)
    specs = make_services(n_services, n_tasks)
    services: dict[str, Service] = {s.name: new_service(s, 0.0) for s in specs}
    # Setup, not timed: the cluster as agents and `dockyard deploy` would have written it.
    await store.commit_batches([store.put_node_op(n) for n in nodes], concurrency=concurrency)
    await store.commit_batches([store.put_service_op(s) for s in services.values()], concurrency=concurrency)
    snap = await store.snapshot()
    for n in snap.nodes.values():
        n.status = nodes[0].status  # the benchmark has no heartbeats: every simulated node is ready

    ids = itertools.count()
    counter = itertools.count()

    def new_id() -> str:
        return f"{next(ids):012x}"

    pipeline = Pipeline()
    executor = Executor(store, concurrency=concurrency)
    names = sorted(snap.services)
    node_list = list(snap.nodes.values())
    placed = pending = transactions = conflicts = 0
    decide = 0.0
    gc.freeze()  # the loaded records are long-lived: keep the collector from rescanning them
    c0, e0 = cpu_seconds(), cpu_seconds(etcd_pid)
    t0 = time.perf_counter()
    # One planning state for the whole run (usage accumulates as chunks are placed), one plan per
    # chunk of services, each chunk's writes in flight while the next chunk is decided.
    cluster = ClusterState(node_list, [], lambda t: snap.services[t.service].spec, rng)
    inflight: set[asyncio.Task[ApplyResult]] = set()
    results: list[asyncio.Task[ApplyResult]] = []
    for start in range(0, len(names), chunk):
        d0 = time.perf_counter()
        part = {n: snap.services[n] for n in names[start:start + chunk]}
        plan: Plan = reconcile(part, [], node_list, 1.0, new_id=new_id, rng=rng, pipeline=pipeline,
                               cluster=cluster)
        decide += time.perf_counter() - d0
        for a in plan.actions:
            if isinstance(a, Place):
                if a.task.node is None:
                    pending += 1
                else:
                    placed += 1
        next(counter)
        job = asyncio.create_task(executor.apply(plan))
        inflight.add(job)
        job.add_done_callback(inflight.discard)
        results.append(job)
        while len(inflight) > 4:  # bounded pipeline: a few plans being written while the next is decided
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)
    for job in results:
        res = await job
        transactions += res.transactions
        conflicts += len(res.dropped)
    elapsed = time.perf_counter() - t0
    cpu_self, cpu_etcd = cpu_seconds() - c0, cpu_seconds(etcd_pid) - e0
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    del results, plan
    gc.unfreeze()
    gc.collect()

    # Verify from etcd, and measure the memory of a scheduler that holds the whole cluster (as a
    # restarted scheduler rebuilds it: one snapshot of everything, plus the kept ClusterState).
    r0 = time.perf_counter()
    check = await store.snapshot()
    rebuild = time.perf_counter() - r0
    used: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    for t in check.tasks.values():
        if t.node is not None:
            spec = check.services[t.service].spec
            used[t.node] += spec.resources.reservations.nano_cpus
            mem[t.node] += spec.resources.reservations.memory_bytes
    for name, n in check.nodes.items():
        assert used[name] <= n.capacity.nano_cpus and mem[name] <= n.capacity.memory_bytes, f"{name} overcommitted"
    assert len(check.tasks) == n_tasks, f"{len(check.tasks)} tasks in etcd, want {n_tasks}"
    gc.collect()
    loaded = rss()

    # A node is lost: re-plan only the services with tasks on it, against the kept ClusterState,
    # and commit the moves (the leader's path from "lease expired" to "placed elsewhere").
    for n in check.nodes.values():
        n.status = NodeStatus.READY
    victim = max(check.nodes, key=lambda name: cluster.nodes[name].tasks)
    on_victim = cluster.nodes[victim].tasks
    f0 = time.perf_counter()
    check.nodes[victim].status = NodeStatus.DOWN
    cluster.set_node(check.nodes[victim])
    affected = {t.service for t in check.tasks.values() if t.node == victim and t.live}
    moved_plan = reconcile({s: check.services[s] for s in affected},
                           [t for t in check.tasks.values() if t.service in affected], check.nodes.values(), 2.0,
                           new_id=new_id, rng=rng, pipeline=pipeline, cluster=cluster)
    moved = await executor.apply(moved_plan)
    failover = time.perf_counter() - f0
    assert not moved.dropped and len(moved_plan.of(Migrate)) == on_victim
    result = Result(n_nodes, n_tasks, placed, pending, elapsed, decide, transactions, conflicts, loaded,
                    rss("VmHWM"), etcd_rss(), rebuild, cpu_self, cpu_etcd, load, failover,
                    len(moved_plan.of(Migrate)), len(affected))
    del check
    await store.close()
    return result


def table(r: Result) -> str:
    rate = r.tasks / r.seconds
    rows = [
        ("nodes", f"{r.nodes:,}"),
        ("tasks persisted", f"{r.tasks:,} ({r.placed:,} placed, {r.pending:,} pending)"),
        ("wall time", f"{r.seconds:.2f} s (deciding {r.decide_seconds:.2f} s, overlapped with writes)"),
        ("etcd transactions", f"{r.transactions:,} (<= 128 ops each), {r.conflicts} dropped on conflict"),
        ("placements/s", f"{rate:,.0f}   (target >= 5,000; Nomad C1M published: 3,750 on 5 servers)"),
        ("decisions/s alone", f"{r.tasks / r.decide_seconds:,.0f}"),
        ("CPU used", f"scheduler {r.cpu_self:.1f} s, etcd {r.cpu_etcd:.1f} s (2 cores; 1-min load {r.load} at the end)"),
        ("per scheduler CPU-second", f"{r.tasks / r.cpu_self:,.0f} placements (what an uncontended core would do)"),
        ("node lost -> moves committed", f"{r.failover_seconds * 1000:.0f} ms ({r.failover_tasks} tasks of "
                                          f"{r.failover_services} services re-planned and written)"),
        ("rebuild from etcd", f"{r.rebuild_seconds:.2f} s (one snapshot: nodes, services, tasks)"),
        ("scheduler RSS, all loaded", f"{r.rss_loaded / (1 << 20):.0f} MiB (peak {r.rss_peak / (1 << 20):.0f} MiB)"),
        ("etcd RSS", f"{r.etcd_rss / (1 << 20):.0f} MiB"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


@contextmanager
def scheduler_etcd(tls: bool) -> Iterator[tuple[Any, int, Any, str]]:
    """The scheduler's own embedded etcd (scheduler/main.py), plaintext or as `dockyard scheduler`
    runs it by default: https with client certificates of etcd's own CA (scheduler/etcd_tls.py).
    Yields (process, port, client bundle or None, server name)."""
    import tempfile

    from scheduler import etcd_tls
    from scheduler.main import EmbeddedEtcd

    with tempfile.TemporaryDirectory(prefix="dockyard-bench-etcd-") as d:
        pki_ = etcd_tls.ensure(Path(d)) if tls else None
        e = EmbeddedEtcd(Path(d), pki_)
        e.start()
        try:
            assert e.proc is not None
            yield (e.proc, e.port, pki_.client_bundle() if pki_ else None, etcd_tls.ETCD_NAME if pki_ else "")
        finally:
            e.stop()


def compare_tls(args: argparse.Namespace) -> int:
    """Plaintext and TLS etcd in the same run, alternating (plain, TLS, plain, TLS ...), each on a
    fresh etcd; the ratio of the medians is what TLS costs placement (target >= 0.90)."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.rounds):
        for tls in (False, True):
            with scheduler_etcd(tls) as (proc, port, bundle, name):
                def etcd_rss(pid: int = proc.pid) -> int:
                    with open(f"/proc/{pid}/status") as f:
                        return next((int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:")), 0)
                r = asyncio.run(asyncio.wait_for(
                    run(args.nodes, args.tasks, args.services, args.chunk, args.concurrency, "127.0.0.1", port,
                        etcd_rss, proc.pid, tls=bundle, server_name=name), timeout=280))
            rate = r.tasks / r.seconds
            rates[tls].append(rate)
            print(f"round {i + 1} {'TLS      ' if tls else 'plaintext'}: {rate:,.0f} placements/s "
                  f"({r.tasks:,} tasks, {r.seconds:.2f} s, load {r.load})", flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    ratio = med[True] / med[False]
    print(f"median plaintext {med[False]:,.0f}/s, TLS {med[True]:,.0f}/s: TLS = {ratio:.2f}x plaintext "
          f"(target >= 0.90); load {os.getloadavg()[0]:.2f}")
    return 0 if ratio >= 0.9 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=10, help="services per plan")
    ap.add_argument("--concurrency", type=int, default=8, help="transactions in flight")
    ap.add_argument("--tls-compare", action="store_true",
                    help="plaintext and mutual-TLS etcd (the scheduler's default) in the same run, alternating")
    ap.add_argument("--rounds", type=int, default=2, help="with --tls-compare: rounds of (plaintext, TLS)")
    args = ap.parse_args(argv)
    if args.tls_compare:
        return compare_tls(args)
    with running_etcd(extra_args=("--quota-backend-bytes", str(4 << 30))) as server:
        r = asyncio.run(asyncio.wait_for(
            run(args.nodes, args.tasks, args.services, args.chunk, args.concurrency, server.host, server.port,
                server.rss_bytes, server.process.pid),
            timeout=280))
    print(table(r))
    return 0 if r.tasks / r.seconds >= 5000 else 1


if __name__ == "__main__":
    sys.exit(main())
