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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # cryptography is loaded only by a scheduler that uses TLS
    from common import pki
    from scheduler import etcd_tls

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
    metrics_tls: bool = False  # /metrics and /sd over mutual-TLS HTTPS with this replica's certificate
    cert_lifetime: float = 0.0  # seconds a node certificate issued here lives (0: 90 days); renewed at 50-80 %
    etcd_cacert: str = ""  # an external etcd over TLS: its CA, our client certificate and key
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_server_name: str = ""  # the name an external etcd's certificate must carry ("": the address)
    secrets_key: str = ""  # the file of the key that seals secrets in etcd; "" = <state-dir>/secrets.key


# --- the embedded etcd --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedEtcd:
    """A real etcd, our child; stopped by its PID."""

    def __init__(self, state_dir: Path, tls: etcd_tls.EtcdPKI | None = None) -> None:
        self.dir = state_dir / "etcd"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.tls = tls  # https and client-certificate auth, etcd's own CA (scheduler/etcd_tls.py)

    def _health(self, url: str) -> bool:
        ctx = None
        if self.tls is not None:
            import ssl

            ctx = ssl.create_default_context(cafile=str(self.tls.server / "ca.pem"))
            ctx.check_hostname = False  # the CA is etcd's alone; its name is checked by the store
            ctx.load_cert_chain(str(self.tls.dir / "client" / "cert.pem"), str(self.tls.dir / "client" / "key.pem"))
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=1, context=ctx) as r:
            return b'"health":"true"' in r.read()
        return False

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
        scheme = "https" if self.tls is not None else "http"
        url = f"{scheme}://127.0.0.1:{self.port}"
        args = [ETCD_BIN, "--logger=zap", "--log-level=warn", "--name", "dockyard",
                "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", f"{scheme}://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{peer}",
                "--initial-cluster", f"dockyard={scheme}://127.0.0.1:{peer}",
                *(self.tls.server_args() if self.tls is not None else [])]
        with open(self.dir.parent / "etcd.log", "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir.parent / "etcd.log").read_bytes()[-1500:].decode(errors="replace")
                self.proc = None
                raise SchedulerError(f"the embedded etcd exited at start (port {self.port} taken?):\n{tail}")
            if self._health(url):
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


async def connect(endpoints: list[tuple[str, int]], timeout: float = 5.0, tls: pki.Bundle | None = None,
                  server_name: str = "") -> Store:
    """One store over every member: it fails over to the next when the one it uses dies."""
    try:
        return await Store.connect(endpoints=endpoints, timeout=timeout, tls=tls, server_name=server_name)
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
        self.cert_slot: transport.CertSlot | None = None  # with --tls: the certificate the main port serves
        self.join_slot: Any = None  # and the join port's (the current root's, alone in its chain)
        self.denied: Any = None  # scheduler/tls.py DenyList, with --tls

    async def start(self) -> None:
        o = self.opts
        state = Path(o.state_dir)
        if o.metrics_tls and not o.tls:
            raise SchedulerError("--metrics-tls needs --tls (it serves this replica's certificate)")
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        etcd_client: pki.Bundle | None = None
        etcd_name = ""
        if o.etcd:
            endpoints = parse_endpoints(o.etcd)
            if o.etcd.strip().startswith("https://") or o.etcd_cacert or o.etcd_cert or o.etcd_key:
                from common.pki import PKIError
                from scheduler.etcd_tls import external_bundle

                try:
                    etcd_client = external_bundle(o.etcd_cacert, o.etcd_cert, o.etcd_key)
                except PKIError as e:
                    raise SchedulerError(f"--etcd {o.etcd}: {e}") from e
                etcd_name = o.etcd_server_name
        else:
            # With --tls our own etcd takes only the client certificate of a CA of its own.
            pki_ = None
            if not o.tls and (state / "etcd-tls").exists():
                raise SchedulerError(f"{state} holds a TLS cluster (etcd-tls/): an --insecure scheduler would serve "
                                     "its etcd, and the cluster CA's key in it, to anyone; run it without --insecure")
            if o.tls:
                from scheduler import etcd_tls as _etcd_tls

                pki_ = _etcd_tls.ensure(state)
                etcd_name = _etcd_tls.ETCD_NAME
            self.etcd = EmbeddedEtcd(state, pki_)
            await asyncio.to_thread(self.etcd.start)
            endpoints = [("127.0.0.1", self.etcd.port)]
            if pki_ is not None:
                etcd_client = pki_.client_bundle()
        scheme = "https" if etcd_client is not None else "http"
        self.etcd_url = ",".join(f"{scheme}://{h}:{p}" for h, p in endpoints)
        self.store = store = await connect(endpoints, tls=etcd_client, server_name=etcd_name)
        if not o.tls and await store.get_raw(store.keys.ca("root")) is not None:
            raise SchedulerError(f"etcd {self.etcd_url} holds a cluster CA (the cluster runs with TLS): an --insecure "
                                 "replica would let anyone in; run it without --insecure")
        m = self.metrics = metrics_mod.SchedulerMetrics()
        view = self.view = View(store)
        advertise = o.advertise or o.listen
        election = self.election = Election(store, self.replica, advertise, ttl=o.ttl)
        loop = self.loop = LeaderLoop(view, store, m, grace=2 * o.ttl)  # a lease and a bit to register again
        dispatcher = self.dispatcher = Dispatcher(view, store, self.agents)
        servicer = self.servicer = SchedulerServicer(store, view, election, self.agents, replica=self.replica,
                                                     etcd=self.etcd_url, ttl=o.ttl, heartbeat=o.heartbeat)
        migrator = self.migrator = Migrator(view, store, self.agents, m, replica=self.replica)
        servicer.migrator = migrator
        servicer.cert_lifetime = o.cert_lifetime
        from scheduler.objects import Sealer

        key_file = Path(o.secrets_key) if o.secrets_key else state / "secrets.key"
        try:
            servicer.sealer = await asyncio.to_thread(Sealer.from_file, key_file)
        except (OSError, ValueError) as e:
            raise SchedulerError(f"--secrets-key {key_file}: {e}") from e
        log.info("secrets are sealed in etcd with the key in %s (key id %s)", key_file, servicer.sealer.key_id)
        servicer.sealer_problem = await self._check_secrets_key(servicer.sealer.key_id, key_file)
        authorize = None
        if o.tls:
            authorize = await self._start_tls(state)
        self.server = transport.server(self.identity, authorize)
        pbg.add_SchedulerServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        try:
            self.port = transport.serve(self.server, o.listen, self.identity, slot=self.cert_slot)
        except (transport.BindError, ValueError) as e:
            raise SchedulerError(f"--listen {o.listen}: cannot bind ({getattr(e, 'reason', e)})") from e
        self.tasks = [asyncio.create_task(view.run(), name="view")]
        if self.denied is not None:
            self.tasks.append(asyncio.create_task(self.denied.run(), name="denied-nodes"))
            self.tasks.append(asyncio.create_task(self._keep_renewed(state), name="renewal"))
            self.tasks.append(asyncio.create_task(self._follow_ca(state), name="ca-rotation"))
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
                self.metrics_server = metrics_mod.serve(o.metrics_addr, m.registry, nodes=view.node_list,
                                                        tls_dir=state / "tls" if o.metrics_tls else None)
            except ValueError as e:
                log.error("no /metrics: %s", e)
        log.info("scheduler %s serving on %s (etcd %s)", self.replica, o.listen, self.etcd_url)

    async def _check_secrets_key(self, key_id: str, key_file: Path) -> str:
        """Replicas on one etcd must hold the same secrets key: the first records its id, a later one
        with another key says so at once, and seals nothing (what it sealed the others could not
        open). Returns that problem, or ""."""
        from scheduler.store import Conflict, Put, StoreError

        assert self.store is not None
        key = self.store.keys.secrets_key_id()
        try:
            await self.store.commit([Put(key, key_id.encode(), 0)])
        except Conflict:
            raw = await self.store.get_raw(key)
            if raw is not None and raw[0].decode() != key_id:
                problem = (f"this scheduler's secrets key {key_id} ({key_file}) is not the cluster's "
                           f"({raw[0].decode()}): give every replica the same --secrets-key file")
                log.error("%s; secrets sealed by the others will not open here, and this one seals none", problem)
                return problem
        except StoreError as e:
            log.warning("could not check the secrets key against the cluster's: %s", e)
        return ""

    async def _start_tls(self, state: Path) -> transport.Authorizer:
        """The cluster CA (made by the first replica), this replica's certificate, the admin client
        bundle in <state>/client, and the join port beside the mutual-TLS one."""
        from scheduler import tls

        assert self.store is not None
        cca = await tls.ensure_ca(self.store)
        if not self.opts.join_listen:
            host, _, port = self.opts.listen.removeprefix("tcp://").rpartition(":")
            self.opts.join_listen = f"{host}:{int(port) + 1}" if port.isdigit() and int(port) else f"{host}:0"
        lifetime = self.cert_lifetime()
        self.identity = transport.Identity(transport.Role.SCHEDULER,
                                           tls.write_local_bundles(state, cca, self.replica, lifetime))
        self.agents.identity = self.identity
        assert self.identity.tls is not None
        self.cert_slot = transport.CertSlot(self.identity.tls)
        self.join_slot = transport.CertSlot(tls.join_bundle(cca, self.replica, lifetime))
        self.servicer.cca = cca
        self.join_server = transport.server(self.identity)
        pbg.add_JoinServicer_to_server(tls.JoinServicer(self.store, lifetime=lifetime),  # type: ignore[no-untyped-call]
                                       self.join_server)
        try:
            self.join_port = transport.serve(self.join_server, self.opts.join_listen, self.identity, client_auth=False,
                                             slot=self.join_slot)
        except (transport.BindError, ValueError) as e:
            raise SchedulerError(f"the join port {self.opts.join_listen}: cannot bind ({getattr(e, 'reason', e)})") from e
        log.info("cluster %s: mutual TLS on %s, join port %s, admin bundle in %s", cca.ca.cluster_id,
                 self.opts.listen, self.opts.join_listen, state / "client")
        self.denied = tls.DenyList(self.store)
        await self.denied.load()
        return tls.authorizer(cca, self.denied)

    def cert_lifetime(self) -> Any:
        import datetime as dt

        from common import pki

        return dt.timedelta(seconds=self.opts.cert_lifetime) if self.opts.cert_lifetime else pki.CERT_LIFETIME

    async def _keep_renewed(self, state: Path) -> None:
        """This replica's own certificate, re-issued from the CA before it expires and swapped in:
        both ports serve it from the next handshake, and channels to agents are dialled again."""
        from common import pki, renewal
        from scheduler import tls

        assert self.store is not None and self.cert_slot is not None
        slot, store = self.cert_slot, self.store

        next_join: list[pki.Bundle] = []

        async def renew() -> pki.Bundle:
            cca = await tls.ensure_ca(store)
            bundle = tls.scheduler_bundle(cca, self.replica, self.cert_lifetime())
            next_join[:] = [tls.join_bundle(cca, self.replica, self.cert_lifetime())]
            pki.write_bundle(state / "tls", bundle)
            return bundle

        def swap(bundle: pki.Bundle) -> None:
            slot.set(bundle)
            self.join_slot.set(next_join[0])
            if self.metrics_server is not None:
                self.metrics_server.reload_tls()
            self.identity = self.identity.with_tls(bundle)
            self.agents.reset(self.identity)

        await renewal.keep_renewed(lambda: slot.bundle, renew, swap, what=f"scheduler {self.replica}")

    async def _follow_ca(self, state: Path, retry: float = 0.5) -> None:
        """After `cluster ca --rotate` (on any replica): trust the new root beside the old one on
        both ports and toward agents, serve a certificate of the new root on the join port (new
        tokens pin it), rewrite the admin bundle, and tell nodes to renew (Heartbeat). This
        replica's own main-port certificate stays the old root's until it renews: agents not yet
        re-issued trust only the old root."""
        from dataclasses import replace

        from common import pki
        from scheduler import tls

        assert self.store is not None and self.cert_slot is not None
        key = self.store.keys.ca("root")
        while True:
            try:
                rev, _ = await self.store.range(key)
                async for _ev in self.store.watch(key, start_revision=rev + 1):
                    cca = await tls.ensure_ca(self.store)
                    was = self.servicer.cca
                    if (cca.ca.cert_pem, cca.previous) == (was.ca.cert_pem, was.previous):
                        continue
                    self.servicer.cca = cca
                    if cca.ca.cert_pem == was.ca.cert_pem:  # `--finish`: the old root is dropped
                        own = tls.scheduler_bundle(cca, self.replica, self.cert_lifetime())
                        self.cert_slot.set(own)
                        self.identity = self.identity.with_tls(own)
                        self.agents.reset(self.identity)
                        pki.write_bundle(state / "tls", own)
                        tls.write_admin_bundle(state, cca)
                        log.warning("cluster CA rotation finished: only root %s... is trusted", cca.ca.digest()[:12])
                        continue
                    own = replace(self.cert_slot.bundle, ca_pem=cca.trust)
                    self.cert_slot.set(own)
                    self.join_slot.set(tls.join_bundle(cca, self.replica, self.cert_lifetime()))
                    self.identity = self.identity.with_tls(own)
                    self.agents.reset(self.identity)
                    pki.write_bundle(state / "tls", own)
                    tls.write_admin_bundle(state, cca)
                    log.warning("cluster CA rotated: trusting root %s... beside the previous one",
                                cca.ca.digest()[:12])
            except Exception as e:  # a watch that breaks is taken up again, as the denylist's
                log.warning("CA watch: %s; retrying", e)
            await asyncio.sleep(retry)

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
              + (f", metrics on http{'s' if opts.metrics_tls else ''}://{opts.metrics_addr}/metrics"
                 if sched.metrics_server else ""), flush=True)
        await stop.wait()
    finally:
        await sched.stop()


def run(opts: SchedulerOptions) -> None:
    logging.basicConfig(level=os.environ.get("DOCKYARD_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aetcd").setLevel(logging.WARNING)
    asyncio.run(serve(opts))
