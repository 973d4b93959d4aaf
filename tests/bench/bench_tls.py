"""`python -m tests.bench tls`: what the cluster's TLS costs (issue 13).

1. An agent's join: token -> read the CA from the join port's handshake -> digest check -> key and
   CSR -> certificate issued by the scheduler's JoinServicer (CA and tokens in a real etcd) ->
   verified and written 0600. The peer figure is the issue's target (under 1 s; Swarm publishes none).
2. A CLI call's handshake: a new blocking channel and its first unary call (what each `dockyard`
   command pays once), plaintext and mutual TLS against the same servicer in the same run; and a warm
   call on an open channel. The server runs on its own event loop thread in this process.
3. A migration's archive stream, agent to agent: 64 MiB in 1 MiB chunks into a target's
   RestoreContainer, plaintext vs mutual TLS with the leader's migration grant checked by the
   target's Authorizer (agent/authz.py), in the same run (issue target: >= 70 % of plaintext).
4. A whole CLI process (`dockyard node ls`, the installed launcher) against a real `dockyard
   scheduler` (TLS, the default) and a real `dockyard scheduler --insecure`, each with its own etcd,
   alternating, CLI_RUNS rounds: what a user waits for, handshake and certificate loading included.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.authz import authorizer
from agent.join import join
from common import grants, pki, transport
from common.transport import Role
from protos import agent_pb2 as apb
from protos import agent_pb2_grpc as apbg
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg
from scheduler import tls
from scheduler.store import Store
from tests.bench.common import load
from tests.etcd_server import EtcdServer

JOINS = 20
CALLS = 200
CLI_RUNS = 15


def bench_cli_process(base: Path) -> dict[str, list[float]]:
    """Wall seconds of `dockyard node ls` as a whole process, plaintext and TLS, alternating."""
    import os

    from deploy import launcher
    from tests.bench.bench_cli import timed_wait4
    from tests.cluster_harness import SchedulerProcess

    dy = str(base / "dockyard")
    launcher.write(dy)
    scheds = {"plaintext": SchedulerProcess(base / "plain", tls=False, metrics=False),
              "mutual TLS": SchedulerProcess(base / "tls", tls=True, metrics=False)}
    out: dict[str, list[float]] = {k: [] for k in scheds}
    try:
        for s in scheds.values():
            s.start()
        (base / "home").mkdir()
        plain = {k: v for k, v in os.environ.items() if k != "DOCKYARD_CERT_PATH"}
        envs = {k: {**plain, "DOCKYARD_SCHEDULER": s.address, "HOME": str(base / "home"),  # no ~/.dockyard
                    **({"DOCKYARD_CERT_PATH": str(s.cert_path)} if s.tls else {})} for k, s in scheds.items()}
        for i in range(CLI_RUNS + 2):  # two warm-up rounds
            for k in scheds:
                wall, _ = timed_wait4([dy, "node", "ls"], envs[k])
                if i >= 2:
                    out[k].append(wall)
    finally:
        for s in scheds.values():
            s.stop()
    return out


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


STREAM_MIB = 64


class Sink(apbg.AgentServicer):
    async def RestoreContainer(self, request_iterator: Any, context: Any) -> apb.ContainerSummary:
        n = 0
        async for chunk in request_iterator:
            n += len(chunk.data)
        return apb.ContainerSummary(id=str(n))


def bench_stream(reps: int = 5) -> dict[str, list[float]]:
    """MiB/s of one archive stream, plaintext and mutual TLS + grant, alternating, ``reps`` each."""
    import time as _t

    ca = pki.make_ca("bench")
    target = pki.issue_bundle(ca, node_id="n2", role="agent", sans=[transport.node_name("n2")])
    source = transport.Identity(Role.AGENT, pki.issue_bundle(ca, node_id="n1", role="agent", sans=[]))
    leader = pki.issue_bundle(ca, node_id="s", role="scheduler", sans=[])
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}
    servers: list[Any] = []

    async def start() -> None:
        tident = transport.Identity(Role.AGENT, target)
        for name, ident, authz in (("plaintext", transport.AGENT, None),
                                   ("mutual TLS + grant", tident, authorizer(lambda: target))):
            srv = transport.server(ident, authz)
            apbg.add_AgentServicer_to_server(Sink(), srv)  # type: ignore[no-untyped-call]
            ports[name] = transport.serve(srv, "127.0.0.1:0", ident)
            await srv.start()
            servers.append(srv)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    data = b"\xa5" * (1 << 20)
    out: dict[str, list[float]] = {"plaintext": [], "mutual TLS + grant": []}
    try:
        for _ in range(reps):
            for name, ident in (("plaintext", transport.AGENT), ("mutual TLS + grant", source)):
                g = grants.sign(leader, grants.Grant("m", "c", "n1", "n2", _t.time() + 60))
                md = ((grants.METADATA, g),) if ident.tls else ()
                with transport.dial_blocking(f"127.0.0.1:{ports[name]}", ident, Role.AGENT, "n2") as ch:
                    stub = apbg.AgentStub(ch)  # type: ignore[no-untyped-call]
                    chunks = lambda: (apb.RestoreChunk(data=data) for _ in range(STREAM_MIB))  # noqa: E731
                    stub.RestoreContainer(chunks(), timeout=60, metadata=md)  # warm: the handshake is not timed
                    t0 = time.perf_counter()
                    r = stub.RestoreContainer(chunks(), timeout=60, metadata=md)
                    out[name].append(STREAM_MIB / (time.perf_counter() - t0))
                    assert r.id == str(STREAM_MIB << 20)
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
    with tempfile.TemporaryDirectory(prefix="bench-tls-cli-") as d:
        procs = bench_cli_process(Path(d))
    for name, xs in procs.items():
        print(f"`dockyard node ls` whole process, {name}: {_ms(xs)}")
    added = statistics.median(procs["mutual TLS"]) - statistics.median(procs["plaintext"])
    print(f"CLI process: mutual TLS adds {added * 1000:.1f} ms "
          f"({statistics.median(procs['mutual TLS']) / statistics.median(procs['plaintext']):.2f}x plaintext); "
          f"load {load()}")
    streams = bench_stream()
    for name, xs in streams.items():
        print(f"archive stream {STREAM_MIB} MiB, {name}: median {statistics.median(xs):.0f} MiB/s "
              f"({', '.join(f'{x:.0f}' for x in xs)})")
    ratio = statistics.median(streams["mutual TLS + grant"]) / statistics.median(streams["plaintext"])
    print(f"archive stream: mutual TLS + grant {ratio:.2f}x plaintext throughput (target >= 0.70); load {load()}")
    return 0
