"""`dockyard agent`: the per-host daemon. Wires the image store, network, cgroups, zygote and the
container manager together and serves the node API on a unix socket (and TCP, for the scheduler).

Containers outlive the agent: stopping it (or kill -9) leaves them running under their shims,
and the next agent on the same --root adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket as _socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from agent import local_wire
from agent.cluster import ClusterMember
from agent.containers import ContainerManager
from agent.engine import EngineSettings
from agent.local_api import LocalApi
from agent.metrics import AgentMetrics, MetricsAddressError, MetricsServer, serve_metrics
from agent.netsync import NetworkSync
from agent.resolver import Resolvers
from agent.runtime import cgroups
from agent.runtime.network.overlay import Overlays, underlay_host
from agent.runtime.zygote_client import Zygote
from agent.server import AgentServicer
from common import pki, settings, transport
from protos import agent_pb2_grpc as pbg

log = logging.getLogger("dockyard.agent")

DEFAULT_ROOT = settings.ROOT
DEFAULT_SOCKET = settings.AGENT_SOCKET
DEFAULT_DOCKER_SOCKET = settings.DOCKER_SOCKET


@dataclass
class AgentOptions:
    root: str = DEFAULT_ROOT
    socket: str = DEFAULT_SOCKET
    listen: str = ""                 # host:port for TCP (scheduler and other agents)
    name: str = field(default_factory=_socket.gethostname)
    bridge: str = settings.BRIDGE
    subnet: str = settings.SUBNET
    cgroup_parent: str | None = None
    cgroup_root: str = "/sys/fs/cgroup"
    labels: dict[str, str] = field(default_factory=dict)
    metrics_addr: str = settings.AGENT_METRICS  # HTTP /metrics, as dockerd's; "" serves none
    join: str = ""                   # scheduler replicas host:port[,host:port...] (agent/cluster.py)
    advertise: str = ""              # the address the scheduler reaches this agent at (default: listen)
    token: str = ""                  # a join token: mutual TLS with the cluster (agent/join.py)
    insecure: bool = False           # --insecure: --listen and --join in plaintext (else they need a certificate)
    cgroup_favor_dynmods: bool = False  # agent/runtime/cgroups/_dynmods.py
    docker_socket: str = DEFAULT_DOCKER_SOCKET   # Docker's Engine API (agent/dockerapi); "" serves none
    docker_tcp: str = ""             # and on loopback TCP, HOST:PORT (opt-in: no TLS yet)
    max_layer_size: int | None = None  # bytes a layer may expand to on import/load/pull/restore (None: no bound)
    max_image_size: int | None = None  # and all the layers of one image
    min_free_disk: float = settings.MIN_FREE_DISK  # percent of the root's disk kept free (agent/diskspace.py)
    ip_forward: bool = True          # docker's --ip-forward: turn on net.ipv4.ip_forward
    ip_masq: bool = True             # docker's --ip-masq: masquerade the bridge's subnet (egress)
    metrics_tls: bool = False        # /metrics over mutual-TLS HTTPS with the node's certificate
    engine: EngineSettings = field(default_factory=EngineSettings)  # mirrors, log and ulimit defaults, DNS
    config_file: str = ""            # the daemon.json read ("" = none)


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.root = Path(opts.root)
        self.server: grpc.aio.Server | None = None
        self.tls_server: grpc.aio.Server | None = None  # the TCP port under mutual TLS
        self.cert_slot: transport.CertSlot | None = None  # the certificate it serves, renewed in place
        self._renewal: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()   # unhealthy cluster tasks being ended
        self.manager: ContainerManager | None = None
        self.zygote = Zygote()
        self.metrics_server: MetricsServer | None = None
        self.member: ClusterMember | None = None
        self.netsync: NetworkSync | None = None  # with --join
        self.local_api: LocalApi | None = None
        self.docker_api: Any = None
        self.health: Any = None

    async def start(self) -> None:
        from agent.images.imagestore import ImageStore
        from agent.images.layers import Limits
        from agent.runtime import monitor, network

        o = self.opts
        # What this host must have, checked before anything is made (nothing to undo then).
        await asyncio.to_thread(monitor.binary)  # built here if missing or older than its source
        try:  # the zygote compiles the containers' seccomp filter: fail here, clearly, if it cannot
            from agent.runtime import seccomp  # noqa: F401
        except OSError as e:
            raise RuntimeError(f"the containers' seccomp filter cannot be built (is libseccomp2 installed?): {e}") \
                from e
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        identity = await self._identity()  # a join refused or a readable key: nothing started yet
        if o.metrics_tls and identity.tls is None:
            from agent.join import JoinError

            raise JoinError("--metrics-tls needs this node's certificate: join with --join and --token")
        images = ImageStore(self.root / "images")
        images.limits = Limits(o.max_layer_size, o.max_image_size)
        images.registries = o.engine.registries
        net = network.BridgeNetwork(self.root / "network", o.bridge, o.subnet)
        await asyncio.to_thread(net.ensure, o.ip_forward, o.ip_masq)
        resolvers = None
        if o.join:  # cluster networks: the VXLAN endpoint is the address other agents reach us at
            net.overlays = Overlays(o.bridge, underlay_host(o.advertise or o.listen))
            resolvers = Resolvers()
            resolvers.loop = asyncio.get_running_loop()
        driver = cgroups.detect(o.cgroup_root, _cgroup_parent(self.root, o.cgroup_parent, o.cgroup_root))
        self.cgroup_driver = driver
        if o.cgroup_favor_dynmods:
            cgroups.favor_dynmods(str(self.root / "cgroup-dynmods"))
        self.zygote.cgroups = (getattr(driver, "root", "/sys/fs/cgroup"), driver.parent)  # as the specs say
        _remove_spare_cgroups(driver)  # a killed agent's zygote may have left its spare's
        self.zygote.ensure()
        self.manager = ContainerManager(self.root, images, net, driver, self.zygote, self.root / "run")
        self.manager.resolvers = resolvers
        self.manager.localnets.ip_masq = o.ip_masq
        self.manager.localnets.loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.manager.localnets.ensure_all)
        self.manager.log_default = o.engine.log
        self.manager.default_ulimits = list(o.engine.ulimits)
        self.manager.min_free_disk = o.min_free_disk
        self.manager.default_dns = list(o.engine.dns)
        self.manager.default_dns_search = list(o.engine.dns_search)
        self.manager.default_dns_options = list(o.engine.dns_options)
        await self.manager.supervisor.adopt()
        for c in self.manager.containers.values():   # adopted on a user network: its 127.0.0.11 anew
            if self.manager.localnets.local_of(c) and c.state.status in ("running", "paused"):
                try:
                    await asyncio.to_thread(self.manager.localnets.open_resolver, c, c.state.pid)
                except (OSError, network.NetworkError) as e:
                    log.error("container %s: no resolver at 127.0.0.11: %s", c.name, e)
        if resolvers is not None:
            self.manager.on_change.append(resolvers.on_change)
            for c in self.manager.containers.values():  # adopted: the old agent's sockets died with it
                if c.config.overlays and c.state.status in ("running", "paused") and c.state.pid:
                    try:
                        resolvers.open(c.id, tuple(o.network for o in c.config.overlays), c.state.pid)
                    except OSError as e:
                        log.error("container %s: no resolver at 127.0.0.11: %s", c.name, e)

        from agent.health import HealthMonitor

        self.health = HealthMonitor(self.manager)   # HEALTHCHECKs of the containers that have one
        self.health.on_status.append(self._end_unhealthy_task)
        if o.metrics_addr:
            # Scrapes read the kernel on the server's own thread, never on the event loop. A taken
            # port must not keep the agent from adopting and running containers: say so and go on.
            try:
                self.metrics_server = serve_metrics(o.metrics_addr, AgentMetrics(o.name, self.manager),
                                                    self.root / "tls" if o.metrics_tls else None)
                log.info("metrics on http://%s:%d/metrics", *self.metrics_server.address)
            except MetricsAddressError as e:
                log.error("no /metrics: %s", e)
        servicer = AgentServicer(o.name, str(self.root), self.manager, images, driver.version, False, o.labels)
        servicer.identity = identity  # it dials a migration's target with this node's certificate
        if identity.tls is not None:
            self.manager.checkpoints.page_tls = self.root / "tls"
        servicer.engine, servicer.config_file = o.engine, o.config_file
        # `criu check` takes a second: answer requests meanwhile, report the capability once known.
        self._criu_task = asyncio.get_running_loop().create_task(self._check_criu(servicer))
        self.server = transport.server(transport.AGENT)
        add_images = __import__("agent.images.service", fromlist=["add_to_server"]).add_to_server
        pbg.add_AgentServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        images_servicer = add_images(self.server, self.manager, images)
        from agent.volumes import service as volumes_service

        volumes_service.add_to_server(self.server, self.manager)
        Path(o.socket).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(o.socket)
        transport.serve(self.server, f"unix://{o.socket}", transport.AGENT)
        if o.listen and identity.tls is not None:
            # Mutual TLS on TCP is a server of its own: "no certificate" on it can never pass for the
            # unix socket's local trust. Peers reach only what a migration grant lets them (agent/authz.py).
            from agent import authz

            slot = self.cert_slot = transport.CertSlot(identity.tls)
            self.tls_server = transport.server(identity, authz.authorizer(lambda: slot.bundle))
            pbg.add_AgentServicer_to_server(servicer, self.tls_server)  # type: ignore[no-untyped-call]
            add_images(self.tls_server, self.manager, images)
            volumes_service.add_to_server(self.tls_server, self.manager)
            transport.serve(self.tls_server, o.listen, identity, slot=slot)
            await self.tls_server.start()
        elif o.listen:
            transport.serve(self.server, o.listen, transport.AGENT)
        await self.server.start()
        os.chmod(o.socket, 0o660)
        # The same API for the CLI's fast commands, without gRPC (agent/local_api.py).
        self.local_api = LocalApi(servicer, local_wire.socket_path(o.socket), images_servicer)
        await self.local_api.start()
        if o.docker_socket or o.docker_tcp:
            from agent import dockerapi

            self.docker_api = await dockerapi.start(self.manager, images, o.name, str(self.root), driver.version,
                                                    o.docker_socket, o.docker_tcp, self.health)
        if o.join:
            self.member = ClusterMember(
                schedulers=[a.strip() for a in o.join.split(",") if a.strip()], name=o.name,
                address=o.advertise or o.listen, labels=o.labels, root=self.root, manager=self.manager,
                socket=o.socket, metrics_addr=o.metrics_addr if self.metrics_server else "",
                cgroup_version=driver.version, criu=lambda: servicer.criu,
                lazy_pages=lambda: servicer.lazy_pages, identity=identity)
            self.member.start()
            if identity.tls is not None:
                self._renewal = asyncio.get_running_loop().create_task(self._keep_renewed(servicer), name="renewal")
            self.manager.task_files_source = self.member.task_files
            assert net.overlays is not None
            self.netsync = NetworkSync(o.name, net.overlays, self.member.stub,
                                       on_map=resolvers.update if resolvers is not None else None)
            self.netsync.start()
        log.info("agent %s serving on %s (root %s, cgroup v%d)", o.name, o.socket, self.root, driver.version)

    async def _identity(self) -> transport.Identity:
        """With a join token (or a certificate from an earlier join) the agent is a TLS member of the
        cluster: its certificate's CN becomes its node id."""
        from agent import join

        o = self.opts
        tls_dir = self.root / "tls"
        bundle = join.local_bundle(tls_dir)
        if bundle is None and o.token:
            if not o.join:
                raise join.JoinError("--token needs --join HOST:PORT")
            first = next(a.strip() for a in o.join.split(",") if a.strip())
            bundle = (await join.join(join.join_address(first), o.token, name=o.name, tls_dir=tls_dir)).bundle
        if bundle is None:
            if (o.join or o.listen) and not o.insecure:
                raise join.JoinError(
                    f"{'--join' if o.join else '--listen'} serves and calls over mutual TLS, and this node has no "
                    f"certificate in {tls_dir}: give the join token (--token or DOCKYARD_JOIN_TOKEN; "
                    "`dockyard cluster join-token worker` prints it), or --insecure for a scheduler run with --insecure")
            return transport.AGENT
        if o.insecure:
            raise join.JoinError(f"--insecure, but this node holds a cluster certificate in {tls_dir} (it joined by "
                                 "token): run it without --insecure, or remove that directory to leave the cluster")
        node_id = pki.subject_of(bundle.cert_pem).node_id
        tmp = self.root / "node-id.tmp"
        tmp.write_text(node_id + "\n")
        os.replace(tmp, self.root / "node-id")
        return transport.AGENT.with_tls(bundle)

    async def _keep_renewed(self, servicer: AgentServicer) -> None:
        """This node's certificate, renewed through the scheduler before it expires and swapped in:
        the TLS port serves it from the next handshake, and the scheduler channel is dialled again."""
        from agent import join
        from common import renewal

        member = self.member
        assert member is not None and member.identity.tls is not None
        slot = self.cert_slot or transport.CertSlot(member.identity.tls)

        async def renew() -> pki.Bundle:
            return await join.renew(member.stub(), self.root / "tls", pki.subject_of(slot.bundle.cert_pem).node_id)

        def swap(bundle: pki.Bundle) -> None:
            slot.set(bundle)
            if self.metrics_server is not None:
                self.metrics_server.reload_tls()
            servicer.identity = transport.AGENT.with_tls(bundle)
            member.reconnect(servicer.identity)

        await renewal.keep_renewed(lambda: slot.bundle, renew, swap, what=f"agent {self.opts.name}",
                                   wake=member.renew_now)

    @staticmethod
    async def _check_criu(servicer: AgentServicer) -> None:
        tls_dir = servicer.m.checkpoints.page_tls
        servicer.criu, servicer.lazy_pages = await asyncio.to_thread(_criu_works, tls_dir)

    def _end_unhealthy_task(self, c: Any, status: str) -> None:
        """Swarm's rule: a cluster task whose container turns unhealthy is ended here (its report
        says failed, unhealthy) and the scheduler replaces it as its restart policy says. A plain
        container only shows the status, as docker's does."""
        from agent.cluster import TASK_LABEL

        if status != "unhealthy" or TASK_LABEL not in c.config.labels:
            return
        log.warning("task %s (%s) is unhealthy: ending it, so that the scheduler replaces it",
                    c.config.labels[TASK_LABEL], c.name)

        manager = self.manager
        assert manager is not None

        async def end() -> None:
            with contextlib.suppress(Exception):   # (gone or stopped meanwhile: nothing to end)
                await manager.kill(c.id)

        t = asyncio.get_running_loop().create_task(end())
        self._ending.add(t)
        t.add_done_callback(self._ending.discard)

    async def stop(self) -> None:
        if self.netsync is not None:  # the kernel keeps its tables: containers stay connected
            await self.netsync.stop()
        if self.manager is not None and self.manager.resolvers is not None:
            self.manager.resolvers.close_all()
        if self.manager is not None:
            self.manager.localnets.close_resolvers()
        if self._renewal is not None:
            self._renewal.cancel()
        if self.member is not None:
            await self.member.stop()
        if self.tls_server is not None:
            await self.tls_server.stop(grace=1)
        if self.local_api is not None:
            await self.local_api.stop()
        if self.docker_api is not None:
            await self.docker_api.close(self.opts.docker_socket)
        if self.server is not None:
            await self.server.stop(grace=1)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
            self.metrics_server = None
        if self.health is not None:
            self.health.close()
        if self.manager is not None:
            await self.manager.shutdown()
        self.zygote.stop()
        if self.opts.cgroup_favor_dynmods:
            cgroups.release_dynmods(str(self.root / "cgroup-dynmods"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.opts.socket)
        self._remove_empty_cgroup_parent()

    def _remove_empty_cgroup_parent(self) -> None:
        """Leave no empty cgroup directory behind; one with containers in it stays (rmdir refuses)."""
        driver = getattr(self, "cgroup_driver", None)
        if driver is not None:
            _remove_spare_cgroups(driver)
        if driver is None or driver.list():
            return
        for path in {os.path.dirname(p) for p in driver.paths("x").values()}:
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _remove_spare_cgroups(driver: cgroups.CgroupDriver) -> None:
    """Empty spare cgroups (made ahead for a pre-cloned init: shim.SpareCgroup) whose zygote is
    gone; one with a process in it is in use, and rmdir refuses it."""
    for parent in {os.path.dirname(p) for p in driver.paths("x").values()}:
        with contextlib.suppress(OSError), os.scandir(parent) as entries:
            for e in entries:
                if e.name.startswith(".spare-") and e.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(e.path)


def own_cgroup() -> str:
    """The deepest of this process's cgroup paths (here the memory controller's /process_api/<id>)."""
    own = "/"
    with open("/proc/self/cgroup") as f:
        for line in f:
            path = line.rstrip("\n").split(":", 2)[2]
            if len(path) > len(own):
                own = path
    return own


def _cgroup_parent(root: Path, configured: str | None, cgroup_root: str) -> str:
    """Where this agent's container cgroups live, the same in every controller, fixed at first start.

    By default they nest under the agent's own cgroup (the deepest of its controller paths: here the
    memory controller's /process_api/<id>), so a host's own limits still apply to them. The choice is
    written to <root>/cgroup-parent so that an agent restarted from another cgroup finds them again.
    """
    saved = root / "cgroup-parent"
    if configured:
        saved.write_text(configured.strip("/") + "\n")  # also read by tools and tests
        return configured.strip("/")
    if saved.exists():
        return saved.read_text().strip()
    parent = cgroups.nesting_parent(cgroup_root, own_cgroup())
    saved.write_text(parent + "\n")
    return parent


def _criu_works(tls_dir: Path | None = None) -> tuple[bool, bool]:
    """(criu works, post-copy with lazy pages works). With ``tls_dir`` post-copy also needs a criu
    whose page server speaks TLS (else a live move sends its checkpoint over mutual-TLS gRPC)."""
    try:
        from agent.checkpoint.criu import find_criu
        from agent.checkpoint.lazy import pipes_ready

        c = find_criu()
        if c is not None:
            from agent.checkpoint import kdat

            log.info("criu kdat cache: %s", kdat.seed(c.path))
        caps = c.check() if c else None
        if caps is None or not caps.works:
            return False, False
        lazy = caps.lazy_pages
        if lazy:
            lazy, why = pipes_ready()
            if not lazy:
                log.warning("no post-copy migration: %s", why)
        if lazy and tls_dir is not None:
            from agent.checkpoint.lazy import tls_works

            lazy, why = tls_works(c, tls_dir)  # type: ignore[arg-type]  # c is set: caps.works
            (log.info if lazy else log.warning)("post-copy over TLS: %s", why)
        return True, lazy
    except Exception:
        return False, False


async def serve(opts: AgentOptions) -> None:
    agent = Agent(opts)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"dockyard agent {opts.name}: listening on unix://{opts.socket}", flush=True)
    await stop.wait()
    await agent.stop()


def run(opts: AgentOptions) -> None:
    logging.basicConfig(level=os.environ.get("DOCKYARD_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from agent.runtime.monitor import MonitorError

    try:
        asyncio.run(serve(opts))
    except (MonitorError, cgroups.CgroupError, RuntimeError) as e:  # what this host lacks: say it plainly
        raise SystemExit(f"dockyard agent: {e}") from None
