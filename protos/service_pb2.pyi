from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pair(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Args(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[str]] = ...) -> None: ...

class Ulimit(_message.Message):
    __slots__ = ("name", "soft", "hard")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    soft: int
    hard: int
    def __init__(self, name: _Optional[str] = ..., soft: _Optional[int] = ..., hard: _Optional[int] = ...) -> None: ...

class PortSpec(_message.Message):
    __slots__ = ("target", "published", "protocol", "mode")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    target: int
    published: int
    protocol: str
    mode: str
    def __init__(self, target: _Optional[int] = ..., published: _Optional[int] = ..., protocol: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class NetworkAttachment(_message.Message):
    __slots__ = ("name", "aliases")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("nano_cpus", "memory_bytes")
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    nano_cpus: int
    memory_bytes: int
    def __init__(self, nano_cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class ResourceSpec(_message.Message):
    __slots__ = ("limits", "reservations")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    limits: Resources
    reservations: Resources
    def __init__(self, limits: _Optional[_Union[Resources, _Mapping]] = ..., reservations: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class PlacementSpec(_message.Message):
    __slots__ = ("constraints", "spread", "max_replicas_per_node")
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    constraints: _containers.RepeatedScalarFieldContainer[str]
    spread: _containers.RepeatedScalarFieldContainer[str]
    max_replicas_per_node: int
    def __init__(self, constraints: _Optional[_Iterable[str]] = ..., spread: _Optional[_Iterable[str]] = ..., max_replicas_per_node: _Optional[int] = ...) -> None: ...

class UpdateConfig(_message.Message):
    __slots__ = ("parallelism", "delay", "order", "failure_action", "monitor", "max_failure_ratio")
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    FAILURE_ACTION_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    parallelism: int
    delay: float
    order: str
    failure_action: str
    monitor: float
    max_failure_ratio: float
    def __init__(self, parallelism: _Optional[int] = ..., delay: _Optional[float] = ..., order: _Optional[str] = ..., failure_action: _Optional[str] = ..., monitor: _Optional[float] = ..., max_failure_ratio: _Optional[float] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("condition", "delay", "max_attempts", "window")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    condition: str
    delay: float
    max_attempts: int
    window: float
    def __init__(self, condition: _Optional[str] = ..., delay: _Optional[float] = ..., max_attempts: _Optional[int] = ..., window: _Optional[float] = ...) -> None: ...

class MountSpec(_message.Message):
    __slots__ = ("type", "source", "target", "read_only", "nocopy", "propagation", "external", "create_host_path", "tmpfs_options", "volume_driver", "volume_options", "volume_labels")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    NOCOPY_FIELD_NUMBER: _ClassVar[int]
    PROPAGATION_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    CREATE_HOST_PATH_FIELD_NUMBER: _ClassVar[int]
    TMPFS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_DRIVER_FIELD_NUMBER: _ClassVar[int]
    VOLUME_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_LABELS_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    target: str
    read_only: bool
    nocopy: bool
    propagation: str
    external: bool
    create_host_path: bool
    tmpfs_options: _containers.RepeatedScalarFieldContainer[str]
    volume_driver: str
    volume_options: _containers.RepeatedCompositeFieldContainer[Pair]
    volume_labels: _containers.RepeatedCompositeFieldContainer[Pair]
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., read_only: _Optional[bool] = ..., nocopy: _Optional[bool] = ..., propagation: _Optional[str] = ..., external: _Optional[bool] = ..., create_host_path: _Optional[bool] = ..., tmpfs_options: _Optional[_Iterable[str]] = ..., volume_driver: _Optional[str] = ..., volume_options: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., volume_labels: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ...) -> None: ...

class FileRef(_message.Message):
    __slots__ = ("source", "target", "uid", "gid", "mode")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    uid: int
    gid: int
    mode: int
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("test", "interval", "timeout", "retries", "start_period", "disable")
    TEST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    START_PERIOD_FIELD_NUMBER: _ClassVar[int]
    DISABLE_FIELD_NUMBER: _ClassVar[int]
    test: _containers.RepeatedScalarFieldContainer[str]
    interval: float
    timeout: float
    retries: int
    start_period: float
    disable: bool
    def __init__(self, test: _Optional[_Iterable[str]] = ..., interval: _Optional[float] = ..., timeout: _Optional[float] = ..., retries: _Optional[int] = ..., start_period: _Optional[float] = ..., disable: _Optional[bool] = ...) -> None: ...

class ServiceSpec(_message.Message):
    __slots__ = ("name", "image", "command", "entrypoint", "env", "ports", "replicas", "resources", "placement", "update_config", "rollback_config", "restart_policy", "healthcheck", "labels", "strategy", "mode", "hostname", "user", "workdir", "stop_signal", "stop_grace_period", "tty", "stdin_open", "init", "pids_limit", "container_labels", "devices", "privileged", "mounts", "read_only", "cap_add", "cap_drop", "security_opt", "ulimits", "dns", "dns_search", "dns_options", "extra_hosts", "sysctls", "shm_size", "group_add", "log_driver", "log_options", "networks", "endpoint_mode", "secrets", "configs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_CONFIG_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    HEALTHCHECK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STOP_GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_OPEN_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_LABELS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    CAP_DROP_FIELD_NUMBER: _ClassVar[int]
    SECURITY_OPT_FIELD_NUMBER: _ClassVar[int]
    ULIMITS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    DNS_SEARCH_FIELD_NUMBER: _ClassVar[int]
    DNS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_HOSTS_FIELD_NUMBER: _ClassVar[int]
    SYSCTLS_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_FIELD_NUMBER: _ClassVar[int]
    GROUP_ADD_FIELD_NUMBER: _ClassVar[int]
    LOG_DRIVER_FIELD_NUMBER: _ClassVar[int]
    LOG_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_MODE_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    command: Args
    entrypoint: Args
    env: _containers.RepeatedCompositeFieldContainer[Pair]
    ports: _containers.RepeatedCompositeFieldContainer[PortSpec]
    replicas: int
    resources: ResourceSpec
    placement: PlacementSpec
    update_config: UpdateConfig
    rollback_config: UpdateConfig
    restart_policy: RestartPolicy
    healthcheck: HealthCheck
    labels: _containers.RepeatedCompositeFieldContainer[Pair]
    strategy: str
    mode: str
    hostname: str
    user: str
    workdir: str
    stop_signal: str
    stop_grace_period: float
    tty: bool
    stdin_open: bool
    init: bool
    pids_limit: int
    container_labels: _containers.RepeatedCompositeFieldContainer[Pair]
    devices: _containers.RepeatedScalarFieldContainer[str]
    privileged: bool
    mounts: _containers.RepeatedCompositeFieldContainer[MountSpec]
    read_only: bool
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    cap_drop: _containers.RepeatedScalarFieldContainer[str]
    security_opt: _containers.RepeatedScalarFieldContainer[str]
    ulimits: _containers.RepeatedCompositeFieldContainer[Ulimit]
    dns: _containers.RepeatedScalarFieldContainer[str]
    dns_search: _containers.RepeatedScalarFieldContainer[str]
    dns_options: _containers.RepeatedScalarFieldContainer[str]
    extra_hosts: _containers.RepeatedScalarFieldContainer[str]
    sysctls: _containers.RepeatedCompositeFieldContainer[Pair]
    shm_size: int
    group_add: _containers.RepeatedScalarFieldContainer[str]
    log_driver: str
    log_options: _containers.RepeatedCompositeFieldContainer[Pair]
    networks: _containers.RepeatedCompositeFieldContainer[NetworkAttachment]
    endpoint_mode: str
    secrets: _containers.RepeatedCompositeFieldContainer[FileRef]
    configs: _containers.RepeatedCompositeFieldContainer[FileRef]
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Union[Args, _Mapping]] = ..., entrypoint: _Optional[_Union[Args, _Mapping]] = ..., env: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., ports: _Optional[_Iterable[_Union[PortSpec, _Mapping]]] = ..., replicas: _Optional[int] = ..., resources: _Optional[_Union[ResourceSpec, _Mapping]] = ..., placement: _Optional[_Union[PlacementSpec, _Mapping]] = ..., update_config: _Optional[_Union[UpdateConfig, _Mapping]] = ..., rollback_config: _Optional[_Union[UpdateConfig, _Mapping]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., healthcheck: _Optional[_Union[HealthCheck, _Mapping]] = ..., labels: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., strategy: _Optional[str] = ..., mode: _Optional[str] = ..., hostname: _Optional[str] = ..., user: _Optional[str] = ..., workdir: _Optional[str] = ..., stop_signal: _Optional[str] = ..., stop_grace_period: _Optional[float] = ..., tty: _Optional[bool] = ..., stdin_open: _Optional[bool] = ..., init: _Optional[bool] = ..., pids_limit: _Optional[int] = ..., container_labels: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., devices: _Optional[_Iterable[str]] = ..., privileged: _Optional[bool] = ..., mounts: _Optional[_Iterable[_Union[MountSpec, _Mapping]]] = ..., read_only: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., security_opt: _Optional[_Iterable[str]] = ..., ulimits: _Optional[_Iterable[_Union[Ulimit, _Mapping]]] = ..., dns: _Optional[_Iterable[str]] = ..., dns_search: _Optional[_Iterable[str]] = ..., dns_options: _Optional[_Iterable[str]] = ..., extra_hosts: _Optional[_Iterable[str]] = ..., sysctls: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., shm_size: _Optional[int] = ..., group_add: _Optional[_Iterable[str]] = ..., log_driver: _Optional[str] = ..., log_options: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[NetworkAttachment, _Mapping]]] = ..., endpoint_mode: _Optional[str] = ..., secrets: _Optional[_Iterable[_Union[FileRef, _Mapping]]] = ..., configs: _Optional[_Iterable[_Union[FileRef, _Mapping]]] = ...) -> None: ...
