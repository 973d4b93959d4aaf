"""`dockyard scheduler`: one scheduler replica.

    dockyard scheduler [--etcd http://h:2379,...] [--listen ADDR] [--metrics-addr ADDR] [--state-dir DIR]

With no --etcd it starts a real etcd (Debian's etcd-server) as its own child, data under
<state-dir>/etcd (mode 0700), on the loopback ports kept in <state-dir>/etcd.json, and stops it
(by its PID) on the way out. Every replica serves the cluster API from its view of etcd; the
elected leader also reconciles and dispatches. Defaults: node lease TTL 3 s, heartbeat 1 s, so a
lost host's tasks run elsewhere within about 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from common import settings, transport
from protos import cluster_pb2_grpc as pbg
from scheduler import metrics as metrics_mod
from scheduler.dispatch import Agents, Dispatcher
from scheduler.leader import Election
from scheduler.loop import LeaderLoop
from scheduler.migrate import Migrator
from scheduler.server import SchedulerServicer
from scheduler.store import Store, Unavailable
from scheduler.view import View, cancel

log = logging.getLogger("dockyard.scheduler")

DEFAULT_LISTEN = settings.SCHEDULER_LISTEN
DEFAULT_METRICS = settings.SCHEDULER_METRICS
DEFAULT_STATE = settings.SCHEDULER_STATE
ETCD_BIN = os.environ.get("DOCKYARD_ETCD", settings.ETCD)


class SchedulerError(Exception):
    """A scheduler that cannot start: the message says why, for the user."""


@dataclass
class SchedulerOptions:
    etcd: str = ""  # comma-separated client URLs; "" = start our own
    listen: str = DEFAULT_LISTEN
    metrics_addr: str = DEFAULT_METRICS
    state_dir: str = DEFAULT_STATE
    ttl: int = 3  # node and leader lease TTL, seconds
    heartbeat: float = 1.0
    advertise: str = ""  # the address agents and CLIs should use for this replica (default: listen)
    tls: bool = False  # mutual TLS on --listen, the CA in etcd, a join port (scheduler/tls.py)
    join_listen: str = ""  # the join port; "" = --listen's port + 1 (where `agent --join` looks)
    secrets_key: str = ""  # the file of the key that seals secrets in etcd; "" = <state-dir>/secrets.key


# --- the embedded etcd --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedEtcd:
    """A real etcd, our child; stopped by its PID."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "etcd"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> str:
        if not os.access(ETCD_BIN, os.X_OK):
            raise SchedulerError(f"{ETCD_BIN} not found: install etcd-server, or give --etcd URLS")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        ports_file = self.dir.parent / "etcd.json"
        ports: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            ports = json.loads(ports_file.read_text())
        if not ports.get("client") or not ports.get("peer"):
            ports = {"client": _free_port(), "peer": _free_port()}
            tmp = ports_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ports))
            os.replace(tmp, ports_file)
        self.port, peer = ports["client"], ports["peer"]
        url = f"http://127.0.0.1:{self.port}"
        args = [ETCD_BIN, "--logger=zap", "--log-level=warn", "--name", "dockyard",
                "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"dockyard=http://127.0.0.1:{peer}"]
        with open(self.dir.parent / "etcd.log", "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir.parent / "etcd.log").read_bytes()[-1500:].decode(errors="replace")
                self.proc = None
                raise SchedulerError(f"the embedded etcd exited at start (port {self.port} taken?):\n{tail}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if b'"health":"true"' in r.read():
                    log.info("embedded etcd pid %d on %s, data in %s", self.proc.pid, url, self.dir)
                    return url
            time.sleep(0.05)
        self.stop()
        raise SchedulerError(f"the embedded etcd did not become healthy on {url} within {timeout:.0f} s")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def parse_endpoints(urls: str) -> list[tuple[str, int]]:
    out = []
    for u in urls.split(","):
        u = u.strip()
        if not u:
            continue
        hostport = u.split("://", 1)[-1].rstrip("/")
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit():
            raise SchedulerError(f"--etcd {u!r}: expected http://HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise SchedulerError("--etcd: no endpoint given")
    return out


async def connect(endpoints: list[tuple[str, int]], timeout: float = 5.0) -> Store:
    """One store over every member: it fails over to the next when the one it uses dies."""
    try:
        return await Store.connect(endpoints=endpoints, timeout=timeout)
    except ValueError as e:
        raise SchedulerError(f"--etcd: {e}") from e
    except Unavailable as e:
        raise SchedulerError(str(e)) from e


# --- one replica ---------------------------------------------------------------------------------

class Scheduler:
    def __init__(self, opts: SchedulerOptions) -> None:
        self.opts = opts
        self.replica = f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self.etcd: EmbeddedEtcd | None = None
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.metrics_server: metrics_mod.MetricsServer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.agents = Agents()
        self.etcd_url = ""
        self.port = 0
        self.join_server: grpc.aio.Server | None = None
        self.join_port = 0
        self.identity = transport.SCHEDULER
        self.denied: Any = None  # scheduler/tls.py DenyList, with --tls

    async def start(self) -> None:
        o = self.opts
        state = Path(o.state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        if o.etcd:
            endpoints = parse_endpoints(o.etcd)
        else:
            self.etcd = EmbeddedEtcd(state)
            await asyncio.to_thread(self.etcd.start)
            endpoints = [("127.0.0.1", self.etcd.port)]
        self.etcd_url = ",".join(f"http://{h}:{p}" for h, p in endpoints)
        self.store = store = await connect(endpoints)
        m = self.metrics = metrics_mod.SchedulerMetrics()
        view = self.view = View(store)
        advertise = o.advertise or o.listen
        election = self.election = Election(store, self.replica, advertise, ttl=o.ttl)
        loop = self.loop = LeaderLoop(view, store, m)
        dispatcher = self.dispatcher = Dispatcher(view, store, self.agents)
        servicer = SchedulerServicer(store, view, election, self.agents, replica=self.replica, etcd=self.etcd_url,
                                     ttl=o.ttl, heartbeat=o.heartbeat)
        migrator = self.migrator = Migrator(view, store, self.agents, m, replica=self.replica)
        servicer.migrator = migrator
        from scheduler.objects import Sealer

        key_file = Path(o.secrets_key) if o.secrets_key else state / "secrets.key"
        try:
            servicer.sealer = await asyncio.to_thread(Sealer.from_file, key_file)
        except (OSError, ValueError) as e:
            raise SchedulerError(f"--secrets-key {key_file}: {e}") from e
        log.info("secrets are sealed in etcd with the key in %s (key id %s)", key_file, servicer.sealer.key_id)
        authorize = None
        if o.tls:
            authorize = await self._start_tls(state)
        self.server = transport.server(self.identity, authorize)
        pbg.add_SchedulerServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        try:
            self.port = transport.serve(self.server, o.listen, self.identity)
        except (transport.BindError, ValueError) as e:
            raise SchedulerError(f"--listen {o.listen}: cannot bind ({getattr(e, 'reason', e)})") from e
        self.tasks = [asyncio.create_task(view.run(), name="view")]
        if self.denied is not None:
            self.tasks.append(asyncio.create_task(self.denied.run(), name="denied-nodes"))
        await asyncio.wait_for(view.loaded.wait(), 10)
        active = lambda: election.is_leader  # noqa: E731
        self.tasks += [asyncio.create_task(election.run(), name="election"),
                       asyncio.create_task(loop.run(active), name="leader-loop"),
                       asyncio.create_task(dispatcher.run(active), name="dispatch"),
                       asyncio.create_task(migrator.watch(active), name="migrations")]
        await self.server.start()
        if self.join_server is not None:
            await self.join_server.start()
        if o.metrics_addr:
            try:
                self.metrics_server = metrics_mod.serve(o.metrics_addr, m.registry, nodes=view.node_list)
            except ValueError as e:
                log.error("no /metrics: %s", e)
        log.info("scheduler %s serving on %s (etcd %s)", self.replica, o.listen, self.etcd_url)

    async def _start_tls(self, state: Path) -> transport.Authorizer:
        """The cluster CA (made by the first replica), this replica's certificate, the admin client
        bundle in <state>/client, and the join port beside the mutual-TLS one."""
        from scheduler import tls

        assert self.store is not None
        cca = await tls.ensure_ca(self.store)
        if not self.opts.join_listen:
            host, _, port = self.opts.listen.removeprefix("tcp://").rpartition(":")
            self.opts.join_listen = f"{host}:{int(port) + 1}" if port.isdigit() and int(port) else f"{host}:0"
        self.identity = transport.Identity(transport.Role.SCHEDULER, tls.write_local_bundles(state, cca, self.replica))
        self.agents.identity = self.identity
        self.join_server = transport.server(self.identity)
        pbg.add_JoinServicer_to_server(tls.JoinServicer(self.store), self.join_server)  # type: ignore[no-untyped-call]
        try:
            self.join_port = transport.serve(self.join_server, self.opts.join_listen, self.identity, client_auth=False)
        except (transport.BindError, ValueError) as e:
            raise SchedulerError(f"the join port {self.opts.join_listen}: cannot bind ({getattr(e, 'reason', e)})") from e
        log.info("cluster %s: mutual TLS on %s, join port %s, admin bundle in %s", cca.ca.cluster_id,
                 self.opts.listen, self.opts.join_listen, state / "client")
        self.denied = tls.DenyList(self.store)
        await self.denied.load()
        return tls.authorizer(cca, self.denied)

    async def stop(self) -> None:
        if hasattr(self, "election"):
            await self.election.resign()
        if self.join_server is not None:
            await self.join_server.stop(grace=0)
        if self.server is not None:
            await self.server.stop(grace=1)
        for t in reversed(self.tasks):
            await cancel(t)
        await self.agents.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.stop)


async def serve(opts: SchedulerOptions) -> None:
    sched = Scheduler(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sched.start()
        print(f"dockyard scheduler {sched.replica}: listening on {opts.listen}, etcd {sched.etcd_url}"
              + (f", metrics on http://{opts.metrics_addr}/metrics" if sched.metrics_server else ""), flush=True)
        await stop.wait()
    finally:
        await sched.stop()


def run(opts: SchedulerOptions) -> None:
    logging.basicConfig(level=os.environ.get("DOCKYARD_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aetcd").setLevel(logging.WARNING)
    asyncio.run(serve(opts))
