"""The agent's own view of a container: plain dataclasses, saved as JSON, free of protobuf."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.errors import AgentError as AgentError  # the agent's error family (agent/errors.py)
from agent.errors import Conflict as Conflict
from agent.errors import Forbidden as Forbidden
from agent.errors import InvalidArgument as InvalidArgument
from agent.errors import NotFound as NotFound
from agent.errors import StartFailed as StartFailed
from agent.errors import Unavailable as Unavailable
from agent.runtime.cgroups import DeviceRate as DeviceRate  # re-exported: the agent's users
from agent.runtime.cgroups import Resources as Resources  # one type, from the CLI to the cgroup
from agent.runtime.spec import dumps, write_atomic
from common.devices import DeviceMapping as DeviceMapping  # re-exported: the agent's users


@dataclass
class Port:
    host_ip: str = ""
    host_port: int = 0
    container_port: int = 0
    protocol: str = "tcp"


@dataclass
class Mount:
    """One of the container's own mounts: a volume, a host path (bind) or a tmpfs.

    Parsed from docker's three spellings (-v, --mount, --tmpfs) by agent/volumes/specs.py, which
    checks them; an anonymous volume gets its name at create."""
    type: str = "volume"            # volume | bind | tmpfs
    source: str = ""                # the volume's name ("" until an anonymous one is made) or a host path
    target: str = ""                # absolute, in the container
    readonly: bool = False
    propagation: str = ""           # bind: "" = rprivate (only private and rprivate are supported)
    selinux: str = ""               # -v's z or Z (a relabel, which a host without SELinux does not need)
    nocopy: bool = False            # volume: no copy-up of the image's content at the target
    create_source: bool = False     # bind from -v: a missing host path is made (docker); --mount refuses
    anonymous: bool = False         # volume: made for this container (-v /path); `rm -v` and --rm remove it
    external: bool = False          # volume: must exist already (a stack's `external: true`), never made
    tmpfs_options: list[str] = field(default_factory=list)   # size=BYTES, mode=OCTAL, noexec, ...
    volume_driver: str = ""         # a volume made by this mount: "" or local
    volume_labels: dict[str, str] = field(default_factory=dict)
    volume_options: dict[str, str] = field(default_factory=dict)
    # How it was asked for, so that inspect says it back in the same words: "-v" (HostConfig.Binds),
    # "--mount" (HostConfig.Mounts), "--tmpfs" (HostConfig.Tmpfs); "" for an image's VOLUME, a
    # Config.Volumes entry or a --volumes-from copy. spec: the user's own text of a -v or --tmpfs.
    origin: str = ""
    spec: str = ""


@dataclass
class TaskFile:
    """A cluster secret or config the container gets as a read-only file (agent/taskfiles.py): only
    where it goes is kept here; the data lives on a tmpfs while the container exists."""
    kind: str = "secret"            # secret | config
    name: str = ""
    target: str = ""                # absolute, in the container
    uid: int = 0
    gid: int = 0
    mode: int = 0o444


@dataclass
class Ulimit:
    name: str           # nofile, nproc, core, ... (agent/hostconfig.py ULIMITS)
    soft: int           # -1: unlimited
    hard: int


@dataclass
class HealthCheck:
    """docker's HEALTHCHECK / --health-*: test is ["CMD", args...] or ["CMD-SHELL", command]."""

    test: list[str]
    interval: float = 30.0      # seconds between probes
    timeout: float = 30.0       # a probe running longer fails
    retries: int = 3            # consecutive failures that make it unhealthy
    start_period: float = 0.0   # failures in this time after the start do not count
    start_interval: float = 5.0  # between probes during start_period (docker 25's --health-start-interval)


@dataclass
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0


@dataclass
class Overlay:
    """The container's address on a cluster network, as the scheduler allocated it."""
    network: str = ""
    vni: int = 0
    subnet: str = ""
    ip: str = ""
    mac: str = ""
    mtu: int = 0
    internal: bool = False


def isolated(overlays: list[Overlay]) -> bool:
    """Only on internal networks (the scheduler marks the ingress attachment of such a task
    internal too): the container gets no route out of them."""
    return bool(overlays) and all(o.internal for o in overlays)


@dataclass
class NetworkAttachment:
    """One more user network of a container (a second --network, docker's `network connect`): its
    interface eth1, eth2 ... there. The first network stays `network_mode` (eth0, default route)."""
    name: str = ""
    aliases: list[str] = field(default_factory=list)
    ipv4_address: str = ""


@dataclass
class LogConfig:
    """docker's HostConfig.LogConfig: the driver and its options (agent/logs.py checks them).
    At create it becomes the effective one (the agent's default merged in), as docker records it."""

    type: str = ""                  # json-file | local | none; "" = the agent's default
    config: dict[str, str] = field(default_factory=dict)   # max-size, max-file, compress


@dataclass
class ContainerConfig:
    name: str = ""
    image: str = ""
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    entrypoint_set: bool = False
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    hostname: str = ""
    tty: bool = False
    open_stdin: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[Port] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)   # its devices: derived at start (devices_for)
    network_mode: str = "bridge"
    pid_mode: str = ""
    ipc_mode: str = ""
    userns_mode: str = ""
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    auto_remove: bool = False
    init: bool = False
    stop_timeout: int = 0
    stop_signal: str = ""
    security_opt: list[str] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    read_only: bool = False         # --read-only: the rootfs is read-only (volumes and tmpfs are not)
    cap_add: list[str] = field(default_factory=list)    # names, with or without CAP_, or ALL
    cap_drop: list[str] = field(default_factory=list)
    ulimits: list[Ulimit] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)  # NAME:IP, or NAME:host-gateway
    sysctls: dict[str, str] = field(default_factory=dict)
    shm_size: int = 0               # bytes of /dev/shm; 0: 64 MiB (docker's)
    group_add: list[str] = field(default_factory=list)
    devices: list[DeviceMapping] = field(default_factory=list)
    privileged: bool = False
    exposed_ports: list[str] = field(default_factory=list)   # "80/tcp": recorded, as docker's EXPOSE
    stdin_once: bool = False         # the container's stdin closes when the first attached client's does
    healthcheck: HealthCheck | None = None   # probed by agent/health.py while the container runs
    overlays: list[Overlay] = field(default_factory=list)  # eth1, eth2, ... on cluster networks
    volumes_from: list[str] = field(default_factory=list)   # CONTAINER[:ro|rw], as given (its mounts are copied)
    network_aliases: list[str] = field(default_factory=list)    # more names on a user network (127.0.0.11)
    ipv4_address: str = ""          # docker's --ip: this address on its user network, not the next free one
    links: list[str] = field(default_factory=list)   # CONTAINER[:ALIAS]: /etc/hosts entries, as docker's --link
    networks: list[NetworkAttachment] = field(default_factory=list)   # user networks beyond network_mode
    log_config: LogConfig = field(default_factory=LogConfig)   # --log-driver, --log-opt
    task_files: list[TaskFile] = field(default_factory=list)  # a task's secrets and configs
    cgroupns_mode: str = ""         # "" | host: the host's cgroup namespace; private: its own (docker's --cgroupns)
    uts_mode: str = ""              # "" | host: the host's hostname (docker's --uts)
    device_cgroup_rules: list[str] = field(default_factory=list)   # 'c 1:3 rwm': more devices it may open


@dataclass
class ContainerState:
    status: str = "created"          # created | running | paused | restarting | exited | dead
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    restart_count: int = 0
    stopped_by_user: bool = False    # for unless-stopped and for on-failure after `stop`
    checkpoint: str = ""             # CRIU images of the last checkpoint, until restored or removed
    health: str = ""                 # "" (no check) | starting | healthy | unhealthy
    health_failing: int = 0          # consecutive failed checks
    health_log: list[dict[str, Any]] = field(default_factory=list)   # the last 5: Start, End, ExitCode, Output


@dataclass
class Container:
    id: str
    name: str
    created: float
    config: ContainerConfig
    image_id: str
    image_ref: str
    snapshot: str
    state: ContainerState = field(default_factory=ContainerState)
    ports: list[Port] = field(default_factory=list)   # resolved host ports
    ip_address: str = ""
    endpoint: dict[str, Any] | None = None
    extra_endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # network -> its eth1, eth2 ...
    args: list[str] = field(default_factory=list)      # entrypoint + cmd, as run
    stdio_keys: list[str] = field(default_factory=list)   # CRIU's names for fds 0-2 at the last dump
    netns_key: str = ""
    restored_from_ip: str = ""   # its address on the host it was checkpointed on (see restore)

    def save(self, path: Path) -> None:
        write_atomic(path, dumps(self))

    @classmethod
    def load(cls, path: Path) -> Container:
        c: Container = from_dict(cls, json.loads(path.read_text()))
        return c


def from_dict(cls: Any, data: Any) -> Any:
    """Rebuild nested dataclasses from JSON; unknown keys (from newer versions) are ignored."""
    if not hasattr(cls, "__dataclass_fields__") or not isinstance(data, dict):
        return data
    kwargs = {}
    hints = {f.name: f.type for f in fields(cls)}
    for name, typ in hints.items():
        if name not in data:
            continue
        value = data[name]
        t = str(typ)
        target = _NESTED.get(t.replace("list[", "").replace("]", "").replace(" | None", ""))
        if target is Resources and isinstance(value, dict):
            value = Resources.from_dict(value)   # (frozen, with tuples: its own reader)
        elif target is not None and t.startswith("list["):
            value = [from_dict(target, v) for v in value]
        elif target is not None:
            value = from_dict(target, value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED: dict[str, Any] = {
    "Port": Port, "DeviceMapping": DeviceMapping, "HealthCheck": HealthCheck,
    "Resources": Resources,
    "RestartPolicy": RestartPolicy, "ContainerConfig": ContainerConfig, "ContainerState": ContainerState,
    "Overlay": Overlay, "Mount": Mount, "Ulimit": Ulimit, "LogConfig": LogConfig, "TaskFile": TaskFile,
    "NetworkAttachment": NetworkAttachment,
}
