"""The container manager: lifecycle, state on disk, adoption after a restart, restart policies.

It decides and records; the shim (agent/runtime/shim.py) does the kernel work. Every container
has a directory <root>/containers/<id> with config.json (this module's record), runtime.json (the
spec the shim ran), init.pid and exit.json (written by the shim and its monitor) and container.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import diskspace, hostconfig, links, logs, names, netattach
from agent.checkpointing import Checkpoints
from agent.containermounts import ContainerMounts
from agent.devices import ALL_CAPABILITIES, devices_for
from agent.images.errors import ImageError
from agent.localnets import LocalNetworks
from agent.model import (
    AgentError,
    Conflict,
    Container,
    ContainerConfig,
    InvalidArgument,
    LogConfig,
    Mount,
    NotFound,
    Port,
    RestartPolicy,
    StartFailed,
    Ulimit,
    isolated,
)
from agent.resolver import RESOLV_CONF
from agent.runtime import cgroups, messages
from agent.runtime.procs import pid_start_time, trace
from agent.runtime.rootfs import unmount
from agent.runtime.shim import ShimFiles
from agent.runtime.spec import IdMap, MountSpec, ProcessSpec, Restore, RuntimeSpec
from agent.runtime.zygote_client import Reply, Zygote
from agent.supervision import Supervisor
from agent.taskfiles import TaskFiles
from agent.taskfiles import check as check_task_files
from agent.volumes import specs as mount_specs
from agent.volumes.store import VolumeStore
from common import settings

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Sequence

    from agent.images.imagestore import ImageStore
    from agent.runtime.network import Endpoint, PortMapping
    from agent.runtime.network.model import OverlayEndpoint

log = logging.getLogger("dockyard.agent")


# What `update` may change (docker update's resource flags; device rates and rules are set at create).
UPDATABLE_LIMITS = frozenset({"memory", "memory_swap", "nano_cpus", "cpu_shares", "pids_limit", "blkio_weight"})

class ContainerNetwork(Protocol):
    """What the manager needs of the containers' network: runtime/network/bridge.py's BridgeNetwork
    today; an overlay network is a second implementation of these."""

    @property
    def state_dir(self) -> Path: ...
    @property
    def name(self) -> str: ...
    @property
    def subnet(self) -> ipaddress.IPv4Network: ...

    def allocate(self, container_id: str, ports: Sequence[PortMapping]) -> Endpoint: ...
    def release(self, container_id: str) -> None: ...
    def attach(self, endpoint: Endpoint, pid: int) -> None: ...
    def detach(self, endpoint: Endpoint) -> None: ...
    def withdraw(self, endpoint: Endpoint, back: bool = False) -> None: ...
    def overlay_endpoints(self, container_id: str, overlays: Sequence[tuple[str, int, str, int, str, str]]
                          ) -> tuple[OverlayEndpoint, ...]: ...

USERNS_REMAP_BASE = 100000
USERNS_REMAP_SIZE = 65536


def parse_signal(sig: str | int | None, default: int = signal.SIGKILL) -> int:
    if sig is None or sig == "":
        return default
    if isinstance(sig, int) or str(sig).isdigit():
        num = int(sig)
        if not 0 < num < 65:
            raise InvalidArgument(f"invalid signal: {sig}")
        return num
    name = str(sig).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"invalid signal: {sig}") from None


class ContainerManager:
    def __init__(self, root: Path, images: ImageStore, network: ContainerNetwork, cgroup_driver: cgroups.CgroupDriver,
                 zygote: Zygote, run_dir: Path) -> None:
        self.root = root
        self.min_free_disk = settings.MIN_FREE_DISK  # percent (agent/diskspace.py); the daemon sets it
        self.dir = root / "containers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.trash = root / "trash"   # removed containers' files, deleted after rm returns
        self.trash.mkdir(exist_ok=True)
        self.images = images
        self.network = network
        self.cg = cgroup_driver
        self.zygote = zygote
        self.containers: dict[str, Container] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._gone: dict[str, asyncio.Event] = {}   # set once removed: `run --rm` returns after it
        self._locks: dict[str, asyncio.Lock] = {}
        self._files: dict[str, ShimFiles] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.supervisor = Supervisor(self)    # exits, teardowns, restarts, adoption (supervision.py)
        self.checkpoints = Checkpoints(self)  # checkpoint, restore, migration dumps (checkpointing.py)
        self.on_change: list[Callable[[Container], None]] = []
        self.volumes = VolumeStore(root / "volumes")
        self.taskfiles = TaskFiles(root / "taskfiles")  # tasks' secrets and configs, on a tmpfs each
        self.mounts = ContainerMounts(self.volumes, self.taskfiles, lambda: self.containers.values())
        # With --join: a task's secrets and configs by task id, from the scheduler (agent/cluster.py)
        self.task_files_source: Callable[[str], Awaitable[dict[tuple[str, str], bytes]]] | None = None
        self.on_remove: list[Callable[[Container], None]] = []   # after a container's record is gone
        self.resolvers: Any = None  # agent.resolver.Resolvers, with --join: 127.0.0.11 of cluster networks
        self.localnets = LocalNetworks(root, lambda: list(self.containers.values()))   # user-defined networks
        self.on_change.append(self.localnets.on_change)
        # the agent's defaults for what a container does not set (--log-driver/--log-opt,
        # --default-ulimit, --dns, or daemon.json: agent/engine.py), merged in at create as docker does
        self.log_default = LogConfig("json-file")
        self.default_ulimits: list[Ulimit] = []
        self.default_dns: list[str] = []
        self.default_dns_search: list[str] = []
        self.default_dns_options: list[str] = []

    # --- bookkeeping --------------------------------------------------------------------------

    def files(self, c: Container) -> ShimFiles:
        f = self._files.get(c.id)
        if f is None:  # (kept: a dozen Path joins, asked for several times per start and exit)
            f = self._files[c.id] = ShimFiles(self.dir / c.id, self.run_dir / f"{c.id[:12]}.sock")
        return f

    def _save(self, c: Container, write: bool = True) -> None:
        if write:
            c.save(self.dir / c.id / "config.json")
        for cb in self.on_change:
            with contextlib.suppress(Exception):
                cb(c)

    def _lock(self, c: Container) -> asyncio.Lock:
        return self._locks.setdefault(c.id, asyncio.Lock())

    def _event(self, c: Container) -> asyncio.Event:
        return self._exited.setdefault(c.id, asyncio.Event())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, ref: str) -> Container:
        """By full id, exact name, or unique id prefix, as docker resolves them."""
        if ref in self.containers:
            return self.containers[ref]
        name = ref.lstrip("/")
        for c in self.containers.values():
            if c.name == name:
                return c
        matches = [c for c in self.containers.values() if c.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple containers match the prefix {ref!r}: be more specific")
        raise NotFound(f"No such container: {ref}")

    def _find(self, ref: str) -> Container | None:
        try:
            return self.get(ref)
        except (NotFound, InvalidArgument):
            return None

    def listing(self, all_: bool = False) -> list[Container]:
        cs = sorted(self.containers.values(), key=lambda c: c.created, reverse=True)
        return cs if all_ else [c for c in cs if c.state.status in ("running", "paused", "restarting")]

    def users_of_image(self, image_id: str) -> list[str]:
        return [f"{c.name} ({c.state.status})" for c in self.containers.values() if c.image_id == image_id]

    # --- create -------------------------------------------------------------------------------

    async def fetch_task_files(self, cfg: ContainerConfig) -> dict[tuple[str, str], bytes]:
        """The data of cfg.task_files, from the cluster's scheduler (which gives them only to the
        task's node, or the node it is being migrated to)."""
        if self.task_files_source is None:
            raise InvalidArgument("secrets and configs come from the cluster's scheduler: this agent is not "
                                  "joined to one (--join)")
        return await self.task_files_source(cfg.labels.get("dockyard.task", ""))

    def create(self, cfg: ContainerConfig, files: Mapping[tuple[str, str], bytes] | None = None) -> Container:
        """``files``: the data of cfg.task_files by (kind, name), fetched from the scheduler."""
        self._validate(cfg)
        diskspace.refuse_if_full(self.root, self.min_free_disk, "create a container")
        if cfg.task_files and files is None:
            raise InvalidArgument("secrets and configs come from the cluster's scheduler: this agent got none "
                                  "(is it joined with --join?)")
        name = cfg.name.lstrip("/") if cfg.name else self._free_name()
        if any(c.name == name for c in self.containers.values()):
            other = next(c for c in self.containers.values() if c.name == name)
            raise Conflict(f'Conflict. The container name "/{name}" is already in use by container '
                           f'"{other.id}". You have to remove (or rename) that container to be able to reuse that name.')
        try:
            image = self.images.get(cfg.image)
        except ImageError as e:
            raise NotFound(f"Unable to find image '{cfg.image}' locally: {e}") from e
        cid = names.new_id()
        args = self._args(cfg, image.config)
        if not args:
            raise InvalidArgument("no command specified: the image has no Cmd or Entrypoint and none was given")
        # The image's HEALTHCHECK under the run's (docker merges them at create): a complete check, or none.
        from agent.health import from_image, resolve

        cfg.healthcheck = resolve(cfg.healthcheck, from_image(getattr(image.config, "healthcheck", None)))
        cfg.mounts += self.mounts.volumes_from(cfg, self.get)
        cfg.log_config = logs.merged(cfg.log_config, self.log_default)  # the effective one, as docker records
        own = {u.name for u in cfg.ulimits}
        cfg.ulimits += [copy.copy(u) for u in self.default_ulimits if u.name not in own]
        if cfg.network_mode != "host" and not cfg.overlays:  # (the cluster's resolver serves overlays)
            cfg.dns = cfg.dns or list(self.default_dns)
            cfg.dns_search = cfg.dns_search or list(self.default_dns_search)
            cfg.dns_options = cfg.dns_options or list(self.default_dns_options)
        # The image's VOLUMEs that no mount of the run covers: anonymous volumes, as docker makes.
        covered = {os.path.normpath(m.target) for m in cfg.mounts}
        for path in getattr(image.config, "volumes", None) or []:
            if os.path.normpath(path) not in covered and os.path.normpath(path) != "/":
                cfg.mounts.append(Mount(type="volume", target=os.path.normpath(path), anonymous=True))
        made = self.mounts.prepare(cfg)
        cdir = self.dir / cid
        try:
            cdir.mkdir(parents=True)
            if cfg.task_files:
                assert files is not None
                self.taskfiles.write(cid, cfg.task_files, files)
            self.images.snapshotter.prepare(cid, image.chain_id)
            c = Container(id=cid, name=name, created=time.time(), config=cfg, image_id=image.id,
                          image_ref=cfg.image, snapshot=cid, args=args,
                          ports=[Port(**asdict(p)) for p in cfg.ports])
            self._save(c)
        except BaseException:
            with contextlib.suppress(Exception):
                self.images.snapshotter.remove(cid)
            with contextlib.suppress(OSError):
                self.taskfiles.remove(cid)
            shutil.rmtree(cdir, ignore_errors=True)
            self.mounts.undo(made)
            raise
        self.containers[cid] = c
        return c

    def set_network(self, c: Container, mode: str, aliases: list[str], links: list[str], ip: str = "") -> None:
        """docker network connect/disconnect of a container that is not running: its one network
        (checked as at create), its aliases there and its links."""
        now = (c.config.network_mode, c.config.network_aliases, c.config.links, c.config.ipv4_address)
        if c.state.status in ("running", "paused", "restarting") and (mode, aliases, links, ip) != now:
            raise Conflict(f"container {c.name} is running: its network, aliases, links and address cannot "
                           "change until it stops")
        cfg = replace(c.config, network_mode=mode, network_aliases=list(aliases), links=list(links),
                      ipv4_address=ip)
        if cfg.ports and mode in ("none", "host"):
            cfg.ports = []   # docker keeps the bindings but publishes nothing without a network
        self._validate(cfg)
        c.config = cfg
        self._save(c)

    def remove_link(self, c: Container, alias: str) -> None:
        """docker rm --link PARENT/ALIAS: the link goes from the container's config (running or not,
        as docker's: a running one keeps its /etc/hosts line and variables until it restarts)."""
        kept = [x for x in c.config.links if (x.partition(":")[2] or x.partition(":")[0]) != alias]
        if len(kept) == len(c.config.links):
            raise NotFound(f"No such container: /{c.name}/{alias}")
        c.config = replace(c.config, links=kept)
        self._save(c)

    def _free_name(self) -> str:
        taken = {c.name for c in self.containers.values()}
        for _ in range(100):
            n = names.random_name()
            if n not in taken:
                return n
        return names.random_name() + "_" + names.new_id()[:6]

    def _validate(self, cfg: ContainerConfig) -> None:
        if len(cfg.name) > names.MAX_NAME:
            raise InvalidArgument(f"Invalid container name ({cfg.name[:20]}...): it is {len(cfg.name)} characters "
                                  f"long, the most is {names.MAX_NAME}")
        if cfg.name and not names.valid_name(cfg.name):
            raise InvalidArgument(f'Invalid container name ({cfg.name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
        for e in cfg.env:
            if not e.partition("=")[0]:
                raise InvalidArgument(f"invalid environment variable: {e} (the name before '=' is empty)")
        if cfg.workdir and not cfg.workdir.startswith("/"):
            raise InvalidArgument(f"the working directory '{cfg.workdir}' is invalid, it needs to be an absolute path")
        if not cfg.image:
            raise InvalidArgument("an image is required")
        if cfg.network_mode not in ("", "bridge", "none", "host", "default"):
            n = self.localnets.find(cfg.network_mode)
            if n is None:
                raise NotFound(f"network {cfg.network_mode} not found")
            cfg.network_mode = n.name   # (it may have been given by id)
        if cfg.network_aliases and not self.localnets.is_local(cfg.network_mode):
            raise InvalidArgument("network-scoped aliases are only supported for user-defined networks")
        netattach.check(self, cfg)
        if (self.localnets.is_local(cfg.network_mode) or cfg.networks) and (cfg.dns or cfg.dns_search
                                                                             or cfg.dns_options):
            # refused, not ignored: its resolv.conf is 127.0.0.11, which forwards to the host's resolvers
            raise InvalidArgument(f"--dns, --dns-search and --dns-option on user network {cfg.network_mode} are not "
                                  "supported by dockyard yet (its containers ask 127.0.0.11)")
        if cfg.ipv4_address:
            n = self.localnets.find(cfg.network_mode) if self.localnets.is_local(cfg.network_mode) else None
            if n is None:
                raise InvalidArgument("user specified IP address is supported on user defined networks only")
            if not _in_subnet(cfg.ipv4_address, n.subnet):
                raise InvalidArgument(f"--ip {cfg.ipv4_address}: not an address of network {n.name} ({n.subnet})")
        for link in cfg.links:
            name, _, alias = link.partition(":")
            if not name or (alias and not names.valid_name(alias.lstrip("/"))):
                raise InvalidArgument(f"--link {link}: expected CONTAINER[:ALIAS]")
        if cfg.pid_mode not in ("", "host"):
            raise InvalidArgument(f"--pid {cfg.pid_mode}: must be host or empty")
        if cfg.ipc_mode not in ("", "host", "private", "shareable"):
            raise InvalidArgument(f"--ipc {cfg.ipc_mode}: must be host or private")
        if cfg.userns_mode not in ("", "host", "remap"):
            raise InvalidArgument(f"--userns {cfg.userns_mode}: must be remap or host")
        if cfg.restart_policy.name not in ("", "no", "always", "on-failure", "unless-stopped"):
            raise InvalidArgument(f"invalid restart policy '{cfg.restart_policy.name}'")
        if cfg.auto_remove and cfg.restart_policy.name not in ("", "no"):
            raise InvalidArgument("conflicting options: --restart and --rm")
        if cfg.overlays and cfg.network_mode not in ("", "bridge", "default"):
            raise InvalidArgument(f"conflicting options: cluster networks and the {cfg.network_mode} network mode")
        if cfg.network_mode in ("none", "host") and cfg.ports:
            raise InvalidArgument(f"conflicting options: port publishing and the {cfg.network_mode} network mode")
        for p in cfg.ports:
            if not 0 <= p.host_port <= 65535 or not 0 < p.container_port <= 65535:
                raise InvalidArgument(f"invalid port mapping {p.host_port}:{p.container_port}")
            if p.protocol not in ("tcp", "udp"):
                raise InvalidArgument(f"invalid protocol {p.protocol!r} for port {p.container_port}")
        if cfg.cgroupns_mode not in ("", "host", "private"):
            raise InvalidArgument(f"--cgroupns {cfg.cgroupns_mode}: must be host or private")
        if cfg.uts_mode not in ("", "host"):
            raise InvalidArgument(f"--uts {cfg.uts_mode}: must be host or empty")
        if cfg.uts_mode == "host" and cfg.hostname:
            raise InvalidArgument("conflicting options: hostname and the UTS mode")
        try:
            self.cg.check(cfg.resources)
        except cgroups.CgroupError as e:
            raise InvalidArgument(str(e)) from e
        hostconfig.check(cfg)
        from agent.health import check as check_health

        check_health(cfg.healthcheck)
        if cfg.privileged and cfg.userns_mode == "remap":
            raise InvalidArgument("privileged mode is incompatible with user namespaces (use --userns=host)")
        devices_for(cfg)
        parse_signal(cfg.stop_signal or None, signal.SIGTERM)
        mount_specs.check_all(cfg.mounts)
        check_task_files(cfg.task_files)

    @staticmethod
    def _args(cfg: ContainerConfig, ic: Any) -> list[str]:
        entry = list(cfg.entrypoint) if cfg.entrypoint_set else list(ic.entrypoint or [])
        if cfg.cmd:
            cmd = list(cfg.cmd)
        elif cfg.entrypoint_set:
            cmd = []  # docker: --entrypoint discards the image's CMD
        else:
            cmd = list(ic.cmd or [])
        return entry + cmd

    # --- start --------------------------------------------------------------------------------

    async def start(self, ref: str, hold: bool = False, client: int = -1) -> Container:
        """Start a created or exited container. `client`: one end of a socket pair that the
        monitor serves as an attached client from the first byte of output (an Attach that
        starts the container); with `hold` the process waits for that client's RELEASE."""
        c = self.get(ref)
        try:
            async with self._lock(c):
                if c.state.status in ("running", "paused"):
                    if hold or client >= 0:
                        raise Conflict(f"container {c.name} is already running")
                    return c
                await self._start_locked(c, hold, client=client)
        except StartFailed:
            if c.config.auto_remove:
                await self.wait_removed(c)  # (_start_locked has begun it)
            raise
        except Exception:
            # docker: a --rm container that could not start (a taken port, a device gone) is
            # removed, not left "Created"
            if c.config.auto_remove and c.state.status == "created":
                with contextlib.suppress(AgentError):
                    await self.remove(c.id, force=True)
            raise
        return c

    def _runtime_spec(self, c: Container) -> RuntimeSpec:
        cfg = c.config
        ic = self.images.config_of(c.image_id)
        env: dict[str, str] = {}
        for item in [*self._link_env(c), *(ic.env or []), *cfg.env]:   # (its own env wins, as docker's)
            k, _, v = item.partition("=")
            env[k] = v
        hostname = cfg.hostname or c.id[:12]
        namespaces = ["mnt", "uts", "ipc", "pid", "net"]
        if cfg.network_mode == "host":
            namespaces.remove("net")
            namespaces.remove("uts")
            hostname = os.uname().nodename
        elif cfg.uts_mode == "host":
            namespaces.remove("uts")
            hostname = os.uname().nodename
        if cfg.pid_mode == "host":
            namespaces.remove("pid")
        if cfg.ipc_mode == "host":
            namespaces.remove("ipc")
        if cfg.cgroupns_mode == "private":
            namespaces.append("cgroup")   # (entered by the init once it has joined its cgroup)
        uid_map: list[IdMap] = []
        if cfg.userns_mode == "remap":
            namespaces.insert(0, "user")
            uid_map = [IdMap(0, USERNS_REMAP_BASE, USERNS_REMAP_SIZE)]
        files = self.files(c)
        caps = hostconfig.capabilities(cfg)
        sec = hostconfig.security(cfg)
        mounts = [MountSpec(m.type, m.source, list(m.options))
                  for m in self.images.snapshotter.mounts(c.snapshot, volatile=cfg.auto_remove)]
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        hosts += netattach.hosts_lines(c, hostname)
        bridge = self._bridge_of(c) or self.network
        hosts += self._link_hosts(cfg)
        if cfg.extra_hosts:
            hosts += hostconfig.extra_hosts(cfg, str(getattr(bridge, "gateway", "")))
        nodes, rules = devices_for(cfg)
        resources = dataclasses.replace(cfg.resources, devices=rules)
        spec = RuntimeSpec(
            id=c.id, state_dir=str(files.dir), rootfs=str(files.dir / "rootfs"), mounts=mounts,
            process=ProcessSpec(
                args=c.args, env=[f"{k}={v}" for k, v in env.items()],
                cwd=cfg.workdir or ic.workdir or "/", user=cfg.user or ic.user or "",
                tty=cfg.tty, stdin=cfg.open_stdin, init=cfg.init,
                seccomp=sec.seccomp, no_new_privileges=sec.no_new_privileges, capabilities=caps,
                seccomp_program=hostconfig.seccomp_program(sec, caps),
                rlimits=[[hostconfig.ULIMITS[u.name], u.soft, u.hard] for u in cfg.ulimits],
                additional_groups=list(cfg.group_add),
            ),
            hostname=hostname, namespaces=namespaces, uid_map=uid_map, gid_map=list(uid_map),
            cgroup=resources, cgroup_parent=self.cg.parent,
            cgroup_root=self.cg.root,
            network=c.endpoint, network_state_dir=str(bridge.state_dir),
            bridge=bridge.name, subnet=str(bridge.subnet),
            etc_hosts=hosts, devices=nodes,
            etc_resolv=RESOLV_CONF if (cfg.overlays and self.resolvers is not None)
            or self.localnets.local_of(c) else hostconfig.resolv_conf(cfg, _resolv_conf()),
            sysctls=dict(cfg.sysctls), shm_size=cfg.shm_size,
            volumes=self.mounts.for_shim(c), read_only=cfg.read_only,
        )
        if cfg.log_config.type != "none":
            rot = logs.rotation(cfg.log_config)
            spec.log_path = str(files.log)
            spec.log_max_size, spec.log_max_file, spec.log_compress = rot.max_size, rot.max_file, rot.compress
            spec.log_format = "local" if cfg.log_config.type == "local" else "json"
            spec.log_attrs = [[k, v] for k, v in logs.attributes(cfg.log_config, self._log_subject(c)).items()]
        if cfg.privileged:
            # docker's --privileged: every capability and device, no seccomp, nothing of /proc or
            # /sys hidden or read-only
            spec.process.capabilities = list(ALL_CAPABILITIES)
            spec.process.seccomp = False
            spec.masked_paths, spec.readonly_paths, spec.readonly_sysfs = [], [], False
        return spec

    def _log_subject(self, c: Container) -> logs.Subject:
        """What the log's tag and attrs may name of the container (docker's logger.Info)."""
        try:
            image_env = list(self.images.get(c.image_id).config.env or [])
        except Exception:
            image_env = []   # (an image removed under a stopped container: its own env still counts)
        return logs.Subject(c.id, c.name, c.image_id, c.image_ref, list(c.args), dict(c.config.labels),
                            [*image_env, *c.config.env])

    def _linked(self, cfg: ContainerConfig) -> list[tuple[Container, str]]:
        """--link NAME[:ALIAS]: each running container linked to, with its alias (its name if none)."""
        out = []
        for link in cfg.links:
            name, _, alias = link.partition(":")
            other = self.get(name)
            if other.state.status not in ("running", "paused") or not other.ip_address:
                raise InvalidArgument(f"Cannot link to a non running container: /{other.name} AS {alias or name}")
            if other.config.network_mode != cfg.network_mode:
                raise InvalidArgument(f"--link {link}: /{other.name} is on network {other.config.network_mode}, "
                                      f"not {cfg.network_mode or 'bridge'}")
            out.append((other, alias or other.name))
        return out

    def _link_hosts(self, cfg: ContainerConfig) -> str:
        """The linked containers' addresses under both names, in /etc/hosts. On a user network a
        link is also a name at 127.0.0.11 (localnets.links_of), answered once its container runs:
        one that is not running yet, or not made yet, is no error there (docker's rule)."""
        if self.localnets.is_local(cfg.network_mode):
            ready = [x for x in cfg.links if (o := self._find(x.partition(":")[0])) is not None
                     and o.state.status in ("running", "paused") and o.ip_address]
            cfg = dataclasses.replace(cfg, links=ready)
        return "".join(f"{o.ip_address}\t{' '.join(dict.fromkeys((alias, o.name)))}\n"
                       for o, alias in self._linked(cfg))

    def _link_env(self, c: Container) -> list[str]:
        """docker's legacy link variables (agent/links.py) of every container this one links to; none
        on a user network, as docker's (its links are names at 127.0.0.11 there)."""
        out: list[str] = []
        if self.localnets.is_local(c.config.network_mode):
            return out
        for o, alias in self._linked(c.config):
            ic = self.images.config_of(o.image_id)
            exposed = [*(ic.exposed_ports or []), *o.config.exposed_ports,
                       *(f"{p.container_port}/{p.protocol}" for p in o.config.ports)]
            out += links.link_env(c.name, alias, o.ip_address, exposed, [*(ic.env or []), *o.config.env])
        return out

    async def _start_locked(self, c: Container, hold: bool, restore: bool = False, client: int = -1) -> None:
        trace("agent: start")
        await self.supervisor.torn_down(c)
        for m in c.config.mounts:
            # at every start, as docker does: the host's source may have been made private since the
            # create, and a restored shared bind could not rejoin its peer group (checkpoint/sharing.py)
            mount_specs.check_source_propagation(m)
        files = self.files(c)
        with contextlib.suppress(FileNotFoundError):
            files.exit.unlink()
        bridge = self._bridge_of(c)
        if c.endpoint is None and bridge is not None:
            from agent.runtime import network

            mappings = [network.PortMapping(p.host_ip, p.host_port, p.container_port, p.protocol)
                        for p in c.config.ports]
            if self.localnets.is_local(c.config.network_mode):
                self.localnets.loop = asyncio.get_running_loop()
            try:
                ep = await asyncio.to_thread(bridge.allocate, c.id, mappings, c.config.ipv4_address)
            except network.PortInUse as e:
                raise Conflict(str(e)) from e
            except network.NetworkError as e:
                raise InvalidArgument(str(e)) from e
            if c.config.overlays:
                from dataclasses import replace as _replace

                try:
                    ep = _replace(ep, overlays=self.network.overlay_endpoints(
                        c.id, [(o.network, o.vni, o.subnet, o.mtu, o.ip, o.mac) for o in c.config.overlays]),
                        isolated=isolated(c.config.overlays))
                except network.NetworkError as e:
                    await asyncio.to_thread(bridge.release, c.id)
                    raise InvalidArgument(str(e)) from e
            c.endpoint = ep.to_dict()
            c.ip_address = ep.ip
            c.ports = [Port(p.host_ip, p.host_port, p.container_port, p.protocol) for p in ep.ports]
        if c.config.networks and not c.extra_endpoints:
            self.localnets.loop = asyncio.get_running_loop()
            try:
                await asyncio.to_thread(netattach.allocate_all, self, c)
            except BaseException:
                self._release_network(c)
                raise
        if c.config.mounts:
            try:
                await self.mounts.acquire(c)
            except BaseException:
                self._release_network(c)
                raise
        spec = self._runtime_spec(c)
        trace("agent: spec built")
        spec.hold = hold
        if restore:
            spec.restore = Restore(c.state.checkpoint, list(c.stdio_keys), c.netns_key,
                                   old_ip=c.restored_from_ip if c.restored_from_ip != c.ip_address else "",
                                   lazy=self.checkpoints.restoring_lazily(c))
        # (The shim writes it to runtime.json once the container runs.)
        reply = self.zygote.request(messages.Start(spec, str(files.dir), str(files.socket)),
                                    [client] if client >= 0 else None)
        attached = False
        msg: messages.Message | None
        try:
            while True:
                try:
                    msg, _ = await reply.recv(messages.Attach, messages.Started, messages.Failed, timeout=60)
                except messages.ProtocolError as e:
                    msg = messages.Failed(f"shim: {e}")
                if not isinstance(msg, messages.Attach):
                    break
                # The shim asks us to wire the veth into its init's network namespace: the bridge
                # and pyroute2 are ours (shim.py _ask_attach).
                try:
                    await asyncio.to_thread(self._attach_network, c, msg.pid)
                    attached = True
                    reply.send(messages.Attached())
                except Exception as e:
                    reply.send(messages.Error(str(e)))
        finally:
            reply.close()
        if not isinstance(msg, messages.Started):
            if self.resolvers is not None:  # opened while it was wired, for a start that failed
                self.resolvers.close(c.id)
            if attached and c.endpoint is not None:
                await asyncio.to_thread(self._detach_network, c.endpoint)
            self._release_network(c)
            if c.config.mounts and self.mounts.has_device_volume(c):
                await asyncio.to_thread(self.mounts.release, c)
            failed = msg if isinstance(msg, messages.Failed) else \
                messages.Failed("the shim exited before it reported")
            err = failed.error
            c.state.error = err
            c.state.exit_code = failed.exit_code
            self._save(c)
            if c.config.auto_remove:
                self._spawn(self.remove(c.id, force=True))
            raise StartFailed(f"failed to start container {c.name}: {err}", c.state.exit_code)
        trace("agent: shim replied")
        c.state.status = "running"
        c.state.pid = msg.pid
        c.state.started_at = time.time()
        if c.state.checkpoint:
            shutil.rmtree(c.state.checkpoint, ignore_errors=True)  # used, or made stale by a fresh start
            c.state.checkpoint = ""
        c.state.exit_code = 0
        c.state.oom_killed = False
        c.state.error = ""
        self._event(c).clear()
        self._save(c)
        self.supervisor.watch(c)
        trace("agent: started")

    def health_changed(self, c: Container) -> None:
        """agent/health.py found a new health status: on_change listeners (a node's reporter) learn it."""
        self._save(c, write=False)

    def _attach_network(self, c: Container, pid: int) -> None:
        from agent.runtime import network

        assert c.endpoint is not None
        self.network.attach(network.Endpoint.from_dict(c.endpoint), pid)   # (on the endpoint's own bridge)
        try:
            netattach.plug_all(self, c, pid)
        except network.NetworkError:
            self.network.detach(network.Endpoint.from_dict(c.endpoint))
            raise
        if self.localnets.local_of(c):
            try:
                self.localnets.open_resolver(c, pid)
            except (OSError, network.NetworkError) as e:
                self.network.detach(network.Endpoint.from_dict(c.endpoint))
                raise network.NetworkError(f"its resolver at 127.0.0.11: {e}") from e
        if c.config.overlays and self.resolvers is not None:
            try:
                self.resolvers.open(c.id, tuple(o.network for o in c.config.overlays), pid)
            except OSError as e:
                self.network.detach(network.Endpoint.from_dict(c.endpoint))
                raise network.NetworkError(str(e)) from e

    def _detach_network(self, endpoint: dict[str, Any]) -> None:
        from agent.runtime import network

        with contextlib.suppress(Exception):
            self.network.detach(network.Endpoint.from_dict(endpoint))

    def _bridge_of(self, c: Container) -> Any:
        """The bridge the container's eth0 is on: the agent's, a user network's, or None (host, none)."""
        mode = c.config.network_mode
        if mode in ("", "bridge", "default"):
            return self.network
        n = self.localnets.find(mode) if mode not in ("host", "none") else None
        return self.localnets.bridge_of(n) if n is not None else None

    def _release_network(self, c: Container) -> None:
        if c.extra_endpoints:
            netattach.release_all(self, c)
        if c.endpoint is not None:
            with contextlib.suppress(Exception):
                bridge = self._bridge_of(c) or self.network
                bridge.release(c.id)
            c.endpoint = None
            c.ip_address = ""

    # --- stop, kill, pause --------------------------------------------------------------------

    def _signal(self, c: Container, sig: int) -> None:
        info = self.supervisor.init_info(c)
        pid = int(info.get("pid", 0) or c.state.pid)
        if not pid:
            raise Conflict(f"Container {c.id[:12]} is not running")
        try:
            if "start_time" in info and pid_start_time(pid) != int(info["start_time"]):
                return  # that pid is somebody else now: our container is gone
            os.kill(pid, sig)
        except (ProcessLookupError, FileNotFoundError):
            pass

    async def kill(self, ref: str, sig: str = "KILL") -> Container:
        c = self.get(ref)
        if c.state.status not in ("running", "paused"):
            raise Conflict(f"Cannot kill container: {ref}: Container {c.id[:12]} is not running")
        num = parse_signal(sig)
        self._signal(c, num)
        if c.state.status == "paused" and num == signal.SIGKILL:
            await asyncio.to_thread(self.cg.thaw, c.id)
        return c

    async def stop(self, ref: str, timeout: int | None = None) -> Container:
        c = self.get(ref)
        c.state.stopped_by_user = True
        if c.state.status == "restarting":
            c.state.status = "exited"
            self._save(c)
            return c
        if c.state.status not in ("running", "paused"):
            self._save(c)
            return c
        self._save(c)
        grace = timeout if timeout is not None and timeout >= 0 else (c.config.stop_timeout or 10)
        sig = parse_signal(c.config.stop_signal or None, signal.SIGTERM)
        self._signal(c, sig)
        if c.state.status == "paused":
            await asyncio.to_thread(self.cg.thaw, c.id)
        ev = self._event(c)
        try:
            await asyncio.wait_for(ev.wait(), grace)
        except TimeoutError:
            self._signal(c, signal.SIGKILL)
            await asyncio.wait_for(ev.wait(), 30)
        return c

    async def restart(self, ref: str, timeout: int | None = None) -> Container:
        c = await self.stop(ref, timeout)
        c.state.stopped_by_user = False
        return await self.start(c.id)

    async def pause(self, ref: str) -> Container:
        c = self.get(ref)
        if c.state.status == "paused":
            raise Conflict(f"Container {c.id[:12]} is already paused")
        if c.state.status != "running":
            raise Conflict(f"Container {c.id[:12]} is not running")
        await asyncio.to_thread(self.cg.freeze, c.id)
        c.state.status = "paused"
        self._save(c)
        return c

    async def unpause(self, ref: str) -> Container:
        c = self.get(ref)
        if c.state.status != "paused":
            raise Conflict(f"Container {c.id[:12]} is not paused")
        await asyncio.to_thread(self.cg.thaw, c.id)
        c.state.status = "running"
        self._save(c)
        return c

    async def wait(self, ref: str) -> Container:
        return await self.wait_for(self.get(ref))

    async def wait_for(self, c: Container) -> Container:
        """Until this container is no longer running; by the object, which keeps its final state
        after a removal (a --rm container may be gone by the time its attach asks)."""
        if c.id in self.containers and c.state.status in ("running", "paused", "restarting"):
            await self._event(c).wait()
        return c

    async def wait_removed(self, c: Container, timeout: float = 30) -> None:
        """docker's wait condition "removed": what `run --rm` waits for, so that the name is free
        again when it returns."""
        if c.id not in self.containers:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.setdefault(c.id, asyncio.Event()).wait(), timeout)

    def _removed(self, c: Container) -> None:
        if (gone := self._gone.pop(c.id, None)) is not None:
            gone.set()

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        """docker rm; with `volumes` (-v, and --rm) the container's anonymous volumes go too."""
        c = self.get(ref)
        if c.state.status in ("running", "paused", "restarting"):
            if not force:
                raise Conflict(f"You cannot remove a {c.state.status} container {c.id}. Stop the container "
                               "before attempting removal or force remove")
            c.config.auto_remove = False
            c.state.stopped_by_user = True
            if c.state.status != "restarting":
                self._signal(c, signal.SIGKILL)
                if c.state.status == "paused":
                    await asyncio.to_thread(self.cg.thaw, c.id)
                await asyncio.wait_for(self._event(c).wait(), 30)
        trace("agent: remove")
        await self.supervisor.torn_down(c)
        trace("agent: torn down")
        if self.containers.pop(c.id, None) is None:
            return
        self._release_network(c)
        # Inline: renames and one small record write, about a millisecond, where a thread hop
        # would cost as much again while the loop is busy; the deletion itself is the purge's.
        trash = self._remove_files(c)
        self._spawn(asyncio.to_thread(self._purge, trash))
        anonymous = [m.source for m in c.config.mounts if m.type == "volume" and m.anonymous and m.source]
        if volumes and anonymous:
            await asyncio.to_thread(self.mounts.remove, anonymous)
        trace("agent: removed")
        self._exited.pop(c.id, None)
        self._removed(c)
        for cb in self.on_remove:
            with contextlib.suppress(Exception):
                cb(c)
        self._files.pop(c.id, None)
        self._locks.pop(c.id, None)
        self.supervisor.teardowns.pop(c.id, None)

    def _remove_files(self, c: Container) -> list[Path]:
        unmount(str(self.files(c).dir / "rootfs"))
        if c.config.task_files:
            try:
                self.taskfiles.remove(c.id)
            except OSError as e:
                log.warning("container %s: its secrets' tmpfs %s: %s", c.name, self.taskfiles.dir(c.id), e)
        with contextlib.suppress(Exception):
            self.cg.destroy(c.id)
        trash: list[Path] = []
        with contextlib.suppress(Exception):
            if (t := self.images.snapshotter.remove(c.snapshot, purge=False)) is not None:
                trash.append(t)
        # Moved aside at once, deleted after rm has returned: a big upper dir takes a while.
        try:
            os.rename(self.dir / c.id, self.trash / c.id)
            trash.append(self.trash / c.id)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.dir / c.id, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.files(c).socket.unlink()
        return trash

    def _purge(self, trash: list[Path]) -> None:
        for path in trash:
            self.images.snapshotter.purge(path)

    async def update(self, ref: str, limits: Mapping[str, int] | None = None,
                     restart_policy: RestartPolicy | None = None) -> Container:
        """docker update: the limits named in `limits` (Resources fields: memory, nano_cpus, ...)
        change, the others keep their values; applied to a live cgroup at once. The device rules
        stay those the container started with: an update changes limits, not what it may open."""
        c = self.get(ref)
        cfg = copy.deepcopy(c.config)
        if limits:
            unknown = sorted(set(limits) - UPDATABLE_LIMITS)
            if unknown:
                raise InvalidArgument(f"update: {', '.join(unknown)} cannot be updated")
            changes: dict[str, Any] = dict(limits)
            cfg.resources = dataclasses.replace(cfg.resources, **changes)
        if restart_policy is not None:
            cfg.restart_policy = restart_policy
        self._validate(cfg)
        if limits and c.state.status in ("running", "paused") and self.cg.exists(c.id):
            try:
                started = RuntimeSpec.load(self.files(c).spec).cgroup.devices
            except (OSError, ValueError, KeyError, TypeError):
                started = devices_for(cfg)[1]   # (no spec left: what its flags give)
            try:
                await asyncio.to_thread(self.cg.update, c.id, dataclasses.replace(cfg.resources, devices=started))
            except cgroups.CgroupError as e:
                raise InvalidArgument(str(e)) from e
        c.config = cfg
        self._save(c)
        return c

    def rename(self, ref: str, new: str) -> None:
        c = self.get(ref)
        if len(new) > names.MAX_NAME:
            raise InvalidArgument(f"Invalid container name ({new[:20]}...): it is {len(new)} characters long, "
                                  f"the most is {names.MAX_NAME}")
        if not names.valid_name(new):
            raise InvalidArgument(f"Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if any(o.name == new.lstrip("/") for o in self.containers.values() if o is not c):
            raise Conflict(f'Conflict. The container name "/{new}" is already in use')
        c.name = new.lstrip("/")
        self._save(c)

    # --- logs ---------------------------------------------------------------------------------

    async def logs(self, ref: str, follow: bool = False, tail: int = -1, since: float = 0,
                   until: float = 0, details: bool = False) -> AsyncIterator[tuple[str, bytes, float]]:
        """The container's log across its rotated files (agent/logs.py); `details`: each entry's
        data starts with its attrs (docker's `logs --details`)."""
        c = self.get(ref)
        if c.config.log_config.type == "none":
            raise logs.ReadNotSupported("configured logging driver does not support reading")
        ev = self._event(c)

        def running() -> bool:
            return c.state.status in ("running", "paused", "restarting") and c.id in self.containers

        async for rec in logs.entries(self.files(c).log, logs.rotation(c.config.log_config), follow, tail, since,
                                      until, running, lambda: ev, logs.file_format(c.config.log_config.type),
                                      details):
            yield rec

    # --- attach and exec ----------------------------------------------------------------------

    async def attach(self, ref: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        c = self.get(ref)
        if c.state.status not in ("running", "paused"):
            raise Conflict("You cannot attach to a stopped container, start it first")
        return await asyncio.open_unix_connection(str(self.files(c).socket))

    def exec_request(self, ref: str, proc: ProcessSpec, fds: list[int]) -> Reply:
        c = self.get(ref)
        if c.state.status == "paused":
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if c.state.status != "running":
            raise Conflict(f"Container {c.id} is not running")
        image = self.images.get(c.image_id)
        env: dict[str, str] = {}
        try:
            linked = self._link_env(c)   # as docker's exec, the link variables too
        except (InvalidArgument, NotFound):
            linked = []                  # (a linked container since stopped or gone: docker refuses the exec)
        for item in [*linked, *(image.config.env or []), *c.config.env, *proc.env]:
            k, _, v = item.partition("=")
            env[k] = v
        proc.env = [f"{k}={v}" for k, v in env.items()]
        if not proc.user:
            proc.user = c.config.user or image.config.user or ""
        if not proc.cwd:
            proc.cwd = c.config.workdir or image.config.workdir or "/"
        # docker exec: the container's capabilities, filter and groups
        caps = hostconfig.capabilities(c.config)
        sec = hostconfig.security(c.config)
        proc.seccomp, proc.no_new_privileges = sec.seccomp, sec.no_new_privileges
        proc.capabilities, proc.seccomp_program = caps, hostconfig.seccomp_program(sec, caps)
        proc.additional_groups = list(c.config.group_add)
        if c.config.privileged:  # (as docker: an exec has its container's privileges)
            proc.capabilities, proc.seccomp = list(ALL_CAPABILITIES), False
        info = self.supervisor.init_info(c)
        req = messages.Exec(int(info.get("pid", c.state.pid)), proc,
                            messages.CgroupRef(self.cg.root, self.cg.parent, c.id))
        return self.zygote.request(req, fds)

    # --- top ------------------------------------------------------------------------

    def top(self, ref: str) -> tuple[list[str], list[list[str]]]:
        c = self.get(ref)
        if c.state.status not in ("running", "paused"):
            raise Conflict(f"Container {c.id[:12]} is not running")
        pids = sorted(self.cg.procs(c.id))
        rows = [r for r in (_ps_row(p) for p in pids) if r is not None]
        return ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], rows

    async def shutdown(self) -> None:
        for t in list(self.supervisor.monitors.values()) + list(self._tasks):
            t.cancel()



def _resolv_conf() -> str:
    """The host's resolv.conf without loopback nameservers, which mean nothing in a container."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines()
            if not (ln.startswith("nameserver") and (" 127." in ln or " ::1" in ln))]
    return "\n".join(keep) + "\n"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ps_row(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    ppid = fields[1]
    utime, stime_ticks, start = int(fields[11]), int(fields[12]), int(fields[19])
    uid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:")), "0")
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    boot = time.time() - uptime
    started = time.strftime("%H:%M", time.localtime(boot + start / _CLK_TCK))
    cpu = (utime + stime_ticks) // _CLK_TCK
    comm = stat[stat.index("(") + 1: stat.rindex(")")]
    user = "root" if uid == "0" else uid
    return [user, str(pid), ppid, "0", started, "?", f"{cpu // 3600:02d}:{cpu // 60 % 60:02d}:{cpu % 60:02d}",
            cmdline or f"[{comm}]"]


def _in_subnet(ip: str, subnet: str) -> bool:
    import ipaddress

    try:
        return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(subnet)
    except ValueError:
        return False
