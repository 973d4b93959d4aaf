"""Domain dataclasses of the scheduler: nodes, services, tasks.

Nothing here imports protobuf or etcd. The store turns these into JSON, the gRPC servicer (next)
turns them into messages. Resources are integers (nano-CPUs as Swarm counts them, bytes) so sums
of reservations never drift the way floats would.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NANO = 1_000_000_000
# The most tasks one service may ask for: the scale the scheduler is benchmarked at (100,000 tasks on
# 5,000 nodes); beyond it a deploy would spend minutes placing and etcd would hold gigabytes.
MAX_REPLICAS = 100_000


class NodeStatus(enum.StrEnum):
    READY = "ready"
    DOWN = "down"


class Availability(enum.StrEnum):
    ACTIVE = "active"
    DRAIN = "drain"


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    SHUTDOWN = "shutdown"


class TaskState(enum.StrEnum):
    """Observed state, as the agent reports it (the scheduler sets only pending and assigned)."""

    PENDING = "pending"  # no node fits yet; Task.error says why
    ASSIGNED = "assigned"  # a node was chosen; the agent has not reported yet
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"  # exited 0
    FAILED = "failed"  # exited non-zero, or unhealthy and killed
    REJECTED = "rejected"  # the agent could not start it (unknown image, bad mount, ...)
    SHUTDOWN = "shutdown"  # stopped because it was asked to

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Holds (or may hold) a container on its node."""
        return self in _ACTIVE


_TERMINAL = frozenset({TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED, TaskState.SHUTDOWN})
_ACTIVE = frozenset({TaskState.ASSIGNED, TaskState.STARTING, TaskState.RUNNING})


@dataclass(frozen=True, slots=True)
class Resources:
    nano_cpus: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.nano_cpus + other.nano_cpus, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.nano_cpus - other.nano_cpus, self.memory_bytes - other.memory_bytes)

    @property
    def cpus(self) -> float:
        return self.nano_cpus / NANO

    @property
    def is_zero(self) -> bool:
        return self.nano_cpus == 0 and self.memory_bytes == 0


@dataclass(frozen=True, slots=True)
class Capabilities:
    criu: bool = False
    cgroup_version: int = 2
    lazy_pages: bool = False          # post-copy live migration works on the node
    kernel: str = ""                  # uname -r ("" from an agent too old to say)
    cpu_features: tuple[str, ...] = ()  # instruction-set flags a restored process may use


@dataclass(slots=True)
class Node:
    name: str
    address: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    capacity: Resources = Resources()
    # Reserved by the tasks assigned here. Derived by the scheduler from the tasks (never trusted
    # from etcd), so a crash between writing a task and a node can never leak capacity.
    allocated: Resources = Resources()
    capabilities: Capabilities = Capabilities()
    status: NodeStatus = NodeStatus.READY
    availability: Availability = Availability.ACTIVE
    role: str = "worker"
    hostname: str = ""  # defaults to name
    os: str = "linux"
    arch: str = "x86_64"
    engine_labels: dict[str, str] = field(default_factory=dict)
    images: frozenset[str] = frozenset()  # images already on the node, for the locality scorer
    metrics_addr: str = ""  # the agent's /metrics host:port, for the scheduler's /sd
    agent_id: str = ""  # stable id of the agent that registered this name (a restart keeps it)
    # registered over mutual TLS, agent_id being its certificate's CN: the name is that certificate's
    # for good (an --insecure registration's id is the agent's own word, and binds no certificate)
    certified: bool = False
    pressure: str = ""  # why the agent takes no new work now ("disk almost full: ..."), from its heartbeats
    mod_revision: int = 0  # etcd metadata, not part of the value

    def __post_init__(self) -> None:
        if not self.hostname:
            self.hostname = self.name

    @property
    def schedulable(self) -> bool:
        return self.status is NodeStatus.READY and self.availability is Availability.ACTIVE


class ServiceMode(enum.StrEnum):
    REPLICATED = "replicated"  # `replicas` tasks, placed where they fit
    GLOBAL = "global"  # one task on every node that fits (constraints, resources); `replicas` unused


class RestartCondition(enum.StrEnum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


class UpdateOrder(enum.StrEnum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


class FailureAction(enum.StrEnum):
    PAUSE = "pause"
    CONTINUE = "continue"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class PortSpec:
    target: int
    published: int | None = None  # None: no host port (not reachable from outside the node)
    protocol: str = "tcp"
    # ingress: the routing mesh answers on every node (scheduler/network.py, agent mesh.py);
    # host: only the node running the task binds it (one task per port per node)
    mode: str = "host"

    @property
    def meshed(self) -> bool:
        return self.published is not None and self.mode == "ingress"


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """A service on a cluster network (scheduler/network.py), with extra names it answers to there."""
    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    limits: Resources = Resources()
    reservations: Resources = Resources()


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    constraints: tuple[str, ...] = ()
    spread: tuple[str, ...] = ()  # e.g. "node.labels.zone", from preferences: [{spread: ...}]
    max_replicas_per_node: int = 0  # 0: no limit


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    parallelism: int = 1  # 0: all at once
    delay: float = 0.0
    order: UpdateOrder = UpdateOrder.STOP_FIRST
    failure_action: FailureAction = FailureAction.PAUSE
    monitor: float = 5.0
    max_failure_ratio: float = 0.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    condition: RestartCondition = RestartCondition.ANY
    delay: float = 5.0
    max_attempts: int = 0  # 0: unlimited
    window: float = 0.0  # a task that ran this long before failing resets the attempt count


@dataclass(frozen=True, slots=True)
class MountSpec:
    """A task's volume, bind mount or tmpfs (a stack's `volumes:` and `tmpfs:`), as the agent's
    Mount: a named volume is local to each node that runs a task of the service (and moves with
    the task when it migrates); a bind source must exist on the node."""
    type: str = "volume"                                 # volume | bind | tmpfs
    source: str = ""                                     # volume name ("" = anonymous) or host path
    target: str = ""
    read_only: bool = False
    nocopy: bool = False
    propagation: str = ""
    external: bool = False                               # the volume must exist on the node already
    create_host_path: bool = False                       # bind: a missing source is made on the node
    tmpfs_options: tuple[str, ...] = ()
    volume_driver: str = ""
    volume_options: tuple[tuple[str, str], ...] = ()
    volume_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FileRef:
    """A service's use of a cluster secret or config (`secrets:`/`configs:`, `--secret`/`--config`):
    delivered as a file on a tmpfs of the node that runs the task, never written to its disk.
    A secret's target is a name under /run/secrets or an absolute path; a config's is absolute."""
    source: str                                          # the secret's or config's name in the cluster
    target: str
    uid: int = 0
    gid: int = 0
    mode: int = 0o444


@dataclass(frozen=True, slots=True)
class HealthCheck:
    test: tuple[str, ...] = ()
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    disable: bool = False

    @property
    def enabled(self) -> bool:
        return not self.disable and bool(self.test) and self.test[0] != "NONE"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()  # sorted pairs, so equal specs hash equal
    ports: tuple[PortSpec, ...] = ()
    replicas: int = 1
    resources: ResourceSpec = ResourceSpec()
    placement: PlacementSpec = PlacementSpec()
    update_config: UpdateConfig = UpdateConfig()
    rollback_config: UpdateConfig = UpdateConfig(failure_action=FailureAction.PAUSE)
    restart_policy: RestartPolicy = RestartPolicy()
    healthcheck: HealthCheck | None = None
    labels: tuple[tuple[str, str], ...] = ()
    strategy: str = "spread"  # or "binpack"
    # What each task's container gets beyond the image's defaults (the stack's service keys).
    mode: ServiceMode = ServiceMode.REPLICATED
    hostname: str = ""  # "" = the task's name (web.1)
    user: str = ""
    workdir: str = ""
    stop_signal: str = ""
    stop_grace_period: float | None = None  # None = the dispatcher's default
    tty: bool = False
    stdin_open: bool = False
    init: bool = False
    pids_limit: int = 0  # 0 = no limit
    container_labels: tuple[tuple[str, str], ...] = ()  # the service's `labels:`, on every container
    devices: tuple[str, ...] = ()  # docker's --device syntax, HOST[:CONTAINER][:rwm] (agent.model.DeviceMapping)
    privileged: bool = False
    mounts: tuple[MountSpec, ...] = ()
    read_only: bool = False
    # docker run's host settings (agent/hostconfig.py checks them): capabilities, security options,
    # ulimits (name, soft, hard), DNS, extra /etc/hosts lines, namespaced sysctls, /dev/shm, groups.
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    ulimits: tuple[tuple[str, int, int], ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    shm_size: int = 0
    group_add: tuple[str, ...] = ()
    log_driver: str = ""   # the stack's logging: driver and options ("" = each node's default)
    log_options: tuple[tuple[str, str], ...] = ()
    networks: tuple[NetworkAttachment, ...] = ()  # cluster networks; each task gets an address on each
    endpoint_mode: str = "vip"  # vip: the name answers with one virtual IP; dnsrr: with the tasks' addresses
    secrets: tuple[FileRef, ...] = ()
    configs: tuple[FileRef, ...] = ()

    @property
    def digest(self) -> str:
        """Digest of what a task runs (Swarm's TaskTemplate): tasks record it, so rolling back to an
        older spec makes its tasks current again, and scaling or changing the update policy does
        not restart anything."""
        from scheduler import codec  # local: codec imports this module

        data = codec.encode(self)
        for not_in_task in _NOT_IN_TASK:
            data.pop(not_in_task, None)
        for added, default in _ADDED_FIELDS.items():
            if data.get(added) == default:
                data.pop(added)  # so a spec that leaves them out keeps the digest it had before they existed
        raw = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def host_ports(self) -> tuple[tuple[int, str], ...]:
        """Ports bound on the task's own node (mode host): the placement filter keeps them apart.
        Ingress ports are the routing mesh's, on every node, and bind no node port."""
        return tuple((p.published, p.protocol) for p in self.ports if p.published is not None and not p.meshed)

    @property
    def mesh_ports(self) -> tuple[PortSpec, ...]:
        return tuple(p for p in self.ports if p.meshed)


# endpoint_mode is the service's, not its tasks' (Swarm's EndpointSpec): changing it moves no task
_NOT_IN_TASK = ("replicas", "update_config", "rollback_config", "labels", "endpoint_mode")
# Fields added to ServiceSpec after tasks were first stored, with their encoded defaults.
_ADDED_FIELDS: dict[str, Any] = {"mode": "replicated", "hostname": "", "user": "", "workdir": "", "stop_signal": "",
                                 "stop_grace_period": None, "tty": False, "stdin_open": False, "init": False,
                                 "pids_limit": 0, "container_labels": [], "devices": [], "privileged": False,
                                 "mounts": [], "read_only": False, "cap_add": [], "cap_drop": [], "security_opt": [],
                                 "ulimits": [], "dns": [], "dns_search": [], "dns_options": [], "extra_hosts": [],
                                 "sysctls": [], "shm_size": 0, "group_add": [], "networks": [], "log_driver": "",
                                 "log_options": [], "secrets": [], "configs": []}


class UpdateState(enum.StrEnum):
    NONE = ""
    UPDATING = "updating"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"

    @property
    def rolling_back(self) -> bool:
        return self in (UpdateState.ROLLBACK_STARTED, UpdateState.ROLLBACK_PAUSED,
                        UpdateState.ROLLBACK_COMPLETED)

    @property
    def paused(self) -> bool:
        return self in (UpdateState.PAUSED, UpdateState.ROLLBACK_PAUSED)


@dataclass(frozen=True, slots=True)
class UpdateStatus:
    state: UpdateState = UpdateState.NONE
    target: str = ""  # digest the update moves to
    started_at: float = 0.0
    message: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    """A service as stored: its spec, the one before it (for rollback), and its update progress."""

    spec: ServiceSpec
    version: int = 1  # bumped on every spec change, rollback included
    previous_spec: ServiceSpec | None = None
    update: UpdateStatus = UpdateStatus()
    created_at: float = 0.0
    mod_revision: int = 0  # etcd metadata, not part of the value

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(slots=True)
class Task:
    service: str
    slot: int
    id: str
    spec_version: str  # ServiceSpec.digest of the spec this task runs
    node: str | None = None  # desired node; None while pending
    desired_state: DesiredState = DesiredState.RUNNING
    state: TaskState = TaskState.PENDING  # observed
    state_at: float = 0.0  # when the observed state last changed
    started_at: float = 0.0  # when it last became running
    created_at: float = 0.0
    container_id: str = ""
    exit_code: int | None = None
    healthy: bool | None = None  # None: no health check, or no verdict yet
    attempt: int = 0  # restarts of this slot so far
    error: str = ""  # why pending, rejected, failed or stopped
    mod_revision: int = 0  # etcd metadata, not part of the value

    @property
    def name(self) -> str:
        return f"{self.service}.{self.slot}"

    @property
    def live(self) -> bool:
        """Wanted running and not finished: the slot's current occupant."""
        return self.desired_state is DesiredState.RUNNING and not self.state.terminal

    def with_(self, **changes: Any) -> Task:
        return replace(self, **changes)


def task_name(stack_or_service: str, slot: int) -> str:
    return f"{stack_or_service}.{slot}"


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def format_cpus(nano: int) -> str:
    return f"{nano / NANO:g} CPU" + ("" if nano == NANO else "s")


# /dockyard/migrations/<id>: one task being moved (scheduler/migrate.py); JSON, not the codec: a
# record is small, short-lived and read by every replica's view.
@dataclass(slots=True)
class Migration:
    id: str
    task_id: str
    service: str
    slot: int
    source: str
    target: str
    mode: str  # live | cold
    phase: str  # recorded | running | switched (live: its addresses are the target's) | recovering
    reason: str = ""  # why cold, when live was not possible
    started_at: float = 0.0
    leader: str = ""
    mod_revision: int = 0

    @property
    def task_name(self) -> str:
        return f"{self.service}.{self.slot}"

    def encode(self) -> bytes:
        d = asdict(self)
        d.pop("mod_revision")
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, rev: int) -> Migration:
        d = json.loads(raw)
        d["mod_revision"] = rev
        return cls(**{k: d[k] for k in _MIGRATION_FIELDS if k in d})


_MIGRATION_FIELDS = ("id", "task_id", "service", "slot", "source", "target", "mode", "phase", "reason",
                     "started_at", "leader", "mod_revision")
