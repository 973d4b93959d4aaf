"""`python -m tests.bench tls`: what the cluster's TLS costs (issue 13).

1. An agent's join: token -> read the CA from the join port's handshake -> digest check -> key and
   CSR -> certificate issued by the scheduler's JoinServicer (CA and tokens in a real etcd) ->
   verified and written 0600. The peer figure is the issue's target (under 1 s; Swarm publishes none).
2. A CLI call's handshake: a new blocking channel and its first unary call (what each `dockyard`
   command pays once), plaintext and mutual TLS against the same servicer in the same run; and a warm
   call on an open channel. The server runs on its own event loop thread in this process.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.join import join
from common import pki, transport
from common.transport import Role
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg
from scheduler import tls
from scheduler.store import Store
from tests.bench.common import load
from tests.etcd_server import EtcdServer

JOINS = 20
CALLS = 200


class Status(pbg.SchedulerServicer):
    async def Status(self, request: pb.Empty, context: Any) -> pb.SchedulerStatus:
        return pb.SchedulerStatus(replica="bench")


def _ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs) * 1000:.2f} ms, p90 {xs[int(len(xs) * 0.9)] * 1000:.2f} ms"


def bench_join(etcd: EtcdServer, base: Path) -> list[float]:
    async def main() -> list[float]:
        store = await Store.connect(etcd.host, etcd.port)
        cca = await tls.ensure_ca(store)
        ident = transport.Identity(Role.SCHEDULER, tls.scheduler_bundle(cca, "bench"))
        srv = transport.server(ident)
        pbg.add_JoinServicer_to_server(tls.JoinServicer(store), srv)  # type: ignore[no-untyped-call]
        port = transport.serve(srv, "127.0.0.1:0", ident, client_auth=False)
        await srv.start()
        times = []
        try:
            for i in range(JOINS):
                t0 = time.perf_counter()
                await join(f"127.0.0.1:{port}", cca.tokens["worker"], name=f"b{i}", tls_dir=base / f"j{i}")
                times.append(time.perf_counter() - t0)
        finally:
            await srv.stop(None)
            await store.close()
        return times

    return asyncio.run(main())


def bench_calls() -> dict[str, tuple[list[float], list[float]]]:
    ca = pki.make_ca("bench")
    sched = transport.Identity(Role.SCHEDULER, pki.issue_bundle(ca, node_id="s", role="scheduler",
                                                                sans=[transport.SCHEDULER_NAME]))
    admin = transport.Identity(Role.CLI, pki.issue_bundle(ca, node_id="admin", role="admin", sans=[]))
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}
    servers: list[Any] = []

    async def start() -> None:
        for name, ident, authz in (("plaintext", transport.SCHEDULER, None),
                                   ("mutual TLS", sched, tls.authorizer(tls.ClusterCA(ca, {})))):
            srv = transport.server(ident, authz)
            pbg.add_SchedulerServicer_to_server(Status(), srv)  # type: ignore[no-untyped-call]
            ports[name] = transport.serve(srv, "127.0.0.1:0", ident)
            await srv.start()
            servers.append(srv)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    out = {}
    try:
        for name, ident in (("plaintext", transport.CLI), ("mutual TLS", admin)):
            addr = f"127.0.0.1:{ports[name]}"
            first, warm = [], []
            for _ in range(CALLS // 4):
                t0 = time.perf_counter()
                with transport.dial_blocking(addr, ident, Role.SCHEDULER) as ch:
                    pbg.SchedulerStub(ch).Status(pb.Empty(), timeout=5)  # type: ignore[no-untyped-call]
                first.append(time.perf_counter() - t0)
            with transport.dial_blocking(addr, ident, Role.SCHEDULER) as ch:
                stub = pbg.SchedulerStub(ch)  # type: ignore[no-untyped-call]
                stub.Status(pb.Empty(), timeout=5)
                for _ in range(CALLS):
                    t0 = time.perf_counter()
                    stub.Status(pb.Empty(), timeout=5)
                    warm.append(time.perf_counter() - t0)
            out[name] = (first, warm)
    finally:
        for srv in servers:
            asyncio.run_coroutine_threadsafe(srv.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    return out


def main() -> int:
    with EtcdServer.start() as etcd, tempfile.TemporaryDirectory() as d:
        print(f"load average before: {load()}")
        joins = bench_join(etcd, Path(d))
        print(f"join, token -> certificate written ({JOINS} joins): {_ms(joins)}; target < 1000 ms; load {load()}")
    calls = bench_calls()
    plain_first, plain_warm = calls["plaintext"]
    tls_first, tls_warm = calls["mutual TLS"]
    for name, (first, warm) in calls.items():
        print(f"{name:>10}: new channel + first call {_ms(first)}; warm call {_ms(warm)}")
    added = statistics.median(tls_first) - statistics.median(plain_first)
    print(f"CLI handshake: mutual TLS adds {added * 1000:.2f} ms to a new channel's first call "
          f"({statistics.median(tls_first) / statistics.median(plain_first):.2f}x plaintext); warm call "
          f"{statistics.median(tls_warm) / statistics.median(plain_warm):.2f}x plaintext; load {load()}")
    return 0
