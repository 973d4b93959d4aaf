from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JsonDocument(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("name", "version", "kernel", "cgroup_version", "memory_bytes", "cpus", "criu", "root", "containers", "containers_running", "containers_paused", "containers_stopped", "images", "labels", "lazy_pages", "arch", "cpu_features", "config_file", "registry_mirrors", "insecure_registries", "log_driver", "log_opts", "default_ulimits", "dns", "dns_search", "dns_options")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LogOptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    CRIU_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_PAUSED_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_MIRRORS_FIELD_NUMBER: _ClassVar[int]
    INSECURE_REGISTRIES_FIELD_NUMBER: _ClassVar[int]
    LOG_DRIVER_FIELD_NUMBER: _ClassVar[int]
    LOG_OPTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ULIMITS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    DNS_SEARCH_FIELD_NUMBER: _ClassVar[int]
    DNS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    kernel: str
    cgroup_version: int
    memory_bytes: int
    cpus: int
    criu: bool
    root: str
    containers: int
    containers_running: int
    containers_paused: int
    containers_stopped: int
    images: int
    labels: _containers.ScalarMap[str, str]
    lazy_pages: bool
    arch: str
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    config_file: str
    registry_mirrors: _containers.RepeatedScalarFieldContainer[str]
    insecure_registries: _containers.RepeatedScalarFieldContainer[str]
    log_driver: str
    log_opts: _containers.ScalarMap[str, str]
    default_ulimits: _containers.RepeatedScalarFieldContainer[str]
    dns: _containers.RepeatedScalarFieldContainer[str]
    dns_search: _containers.RepeatedScalarFieldContainer[str]
    dns_options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., kernel: _Optional[str] = ..., cgroup_version: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., cpus: _Optional[int] = ..., criu: _Optional[bool] = ..., root: _Optional[str] = ..., containers: _Optional[int] = ..., containers_running: _Optional[int] = ..., containers_paused: _Optional[int] = ..., containers_stopped: _Optional[int] = ..., images: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., lazy_pages: _Optional[bool] = ..., arch: _Optional[str] = ..., cpu_features: _Optional[_Iterable[str]] = ..., config_file: _Optional[str] = ..., registry_mirrors: _Optional[_Iterable[str]] = ..., insecure_registries: _Optional[_Iterable[str]] = ..., log_driver: _Optional[str] = ..., log_opts: _Optional[_Mapping[str, str]] = ..., default_ulimits: _Optional[_Iterable[str]] = ..., dns: _Optional[_Iterable[str]] = ..., dns_search: _Optional[_Iterable[str]] = ..., dns_options: _Optional[_Iterable[str]] = ...) -> None: ...

class PortMapping(_message.Message):
    __slots__ = ("host_ip", "host_port", "container_port", "protocol")
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host_ip: str
    host_port: int
    container_port: int
    protocol: str
    def __init__(self, host_ip: _Optional[str] = ..., host_port: _Optional[int] = ..., container_port: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class DeviceRate(_message.Message):
    __slots__ = ("path", "rate")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    path: str
    rate: int
    def __init__(self, path: _Optional[str] = ..., rate: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("memory", "memory_swap", "nano_cpus", "cpu_shares", "pids_limit", "blkio_weight", "device_read_bps", "device_write_bps", "cpuset_cpus", "cpuset_mems", "memory_swappiness")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SWAP_FIELD_NUMBER: _ClassVar[int]
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_SHARES_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BLKIO_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_READ_BPS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_WRITE_BPS_FIELD_NUMBER: _ClassVar[int]
    CPUSET_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPUSET_MEMS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SWAPPINESS_FIELD_NUMBER: _ClassVar[int]
    memory: int
    memory_swap: int
    nano_cpus: int
    cpu_shares: int
    pids_limit: int
    blkio_weight: int
    device_read_bps: _containers.RepeatedCompositeFieldContainer[DeviceRate]
    device_write_bps: _containers.RepeatedCompositeFieldContainer[DeviceRate]
    cpuset_cpus: str
    cpuset_mems: str
    memory_swappiness: int
    def __init__(self, memory: _Optional[int] = ..., memory_swap: _Optional[int] = ..., nano_cpus: _Optional[int] = ..., cpu_shares: _Optional[int] = ..., pids_limit: _Optional[int] = ..., blkio_weight: _Optional[int] = ..., device_read_bps: _Optional[_Iterable[_Union[DeviceRate, _Mapping]]] = ..., device_write_bps: _Optional[_Iterable[_Union[DeviceRate, _Mapping]]] = ..., cpuset_cpus: _Optional[str] = ..., cpuset_mems: _Optional[str] = ..., memory_swappiness: _Optional[int] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("name", "max_retries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_retries: int
    def __init__(self, name: _Optional[str] = ..., max_retries: _Optional[int] = ...) -> None: ...

class ContainerConfig(_message.Message):
    __slots__ = ("name", "image", "cmd", "entrypoint", "entrypoint_set", "env", "workdir", "user", "hostname", "tty", "open_stdin", "labels", "ports", "resources", "network_mode", "pid_mode", "ipc_mode", "userns_mode", "restart_policy", "auto_remove", "init", "stop_timeout", "stop_signal", "security_opt", "devices", "privileged", "overlays", "mounts", "read_only", "cap_add", "cap_drop", "ulimits", "dns", "dns_search", "dns_options", "extra_hosts", "sysctls", "shm_size", "group_add", "healthcheck", "log_config", "task_files", "cgroupns_mode", "uts_mode", "device_cgroup_rules", "volume_flags", "mount_flags", "tmpfs_flags")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SysctlsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_SET_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    OPEN_STDIN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_MODE_FIELD_NUMBER: _ClassVar[int]
    PID_MODE_FIELD_NUMBER: _ClassVar[int]
    IPC_MODE_FIELD_NUMBER: _ClassVar[int]
    USERNS_MODE_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    STOP_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SECURITY_OPT_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    OVERLAYS_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    CAP_DROP_FIELD_NUMBER: _ClassVar[int]
    ULIMITS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    DNS_SEARCH_FIELD_NUMBER: _ClassVar[int]
    DNS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_HOSTS_FIELD_NUMBER: _ClassVar[int]
    SYSCTLS_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_FIELD_NUMBER: _ClassVar[int]
    GROUP_ADD_FIELD_NUMBER: _ClassVar[int]
    HEALTHCHECK_FIELD_NUMBER: _ClassVar[int]
    LOG_CONFIG_FIELD_NUMBER: _ClassVar[int]
    TASK_FILES_FIELD_NUMBER: _ClassVar[int]
    CGROUPNS_MODE_FIELD_NUMBER: _ClassVar[int]
    UTS_MODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CGROUP_RULES_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MOUNT_FLAGS_FIELD_NUMBER: _ClassVar[int]
    TMPFS_FLAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    cmd: _containers.RepeatedScalarFieldContainer[str]
    entrypoint: _containers.RepeatedScalarFieldContainer[str]
    entrypoint_set: bool
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    user: str
    hostname: str
    tty: bool
    open_stdin: bool
    labels: _containers.ScalarMap[str, str]
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    resources: Resources
    network_mode: str
    pid_mode: str
    ipc_mode: str
    userns_mode: str
    restart_policy: RestartPolicy
    auto_remove: bool
    init: bool
    stop_timeout: int
    stop_signal: str
    security_opt: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceMapping]
    privileged: bool
    overlays: _containers.RepeatedCompositeFieldContainer[OverlayAttachment]
    mounts: _containers.RepeatedCompositeFieldContainer[Mount]
    read_only: bool
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    cap_drop: _containers.RepeatedScalarFieldContainer[str]
    ulimits: _containers.RepeatedCompositeFieldContainer[Ulimit]
    dns: _containers.RepeatedScalarFieldContainer[str]
    dns_search: _containers.RepeatedScalarFieldContainer[str]
    dns_options: _containers.RepeatedScalarFieldContainer[str]
    extra_hosts: _containers.RepeatedScalarFieldContainer[str]
    sysctls: _containers.ScalarMap[str, str]
    shm_size: int
    group_add: _containers.RepeatedScalarFieldContainer[str]
    healthcheck: HealthCheck
    log_config: LogConfig
    task_files: _containers.RepeatedCompositeFieldContainer[TaskFile]
    cgroupns_mode: str
    uts_mode: str
    device_cgroup_rules: _containers.RepeatedScalarFieldContainer[str]
    volume_flags: _containers.RepeatedScalarFieldContainer[str]
    mount_flags: _containers.RepeatedScalarFieldContainer[str]
    tmpfs_flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., cmd: _Optional[_Iterable[str]] = ..., entrypoint: _Optional[_Iterable[str]] = ..., entrypoint_set: _Optional[bool] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., hostname: _Optional[str] = ..., tty: _Optional[bool] = ..., open_stdin: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., network_mode: _Optional[str] = ..., pid_mode: _Optional[str] = ..., ipc_mode: _Optional[str] = ..., userns_mode: _Optional[str] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., auto_remove: _Optional[bool] = ..., init: _Optional[bool] = ..., stop_timeout: _Optional[int] = ..., stop_signal: _Optional[str] = ..., security_opt: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[DeviceMapping, _Mapping]]] = ..., privileged: _Optional[bool] = ..., overlays: _Optional[_Iterable[_Union[OverlayAttachment, _Mapping]]] = ..., mounts: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ..., read_only: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., ulimits: _Optional[_Iterable[_Union[Ulimit, _Mapping]]] = ..., dns: _Optional[_Iterable[str]] = ..., dns_search: _Optional[_Iterable[str]] = ..., dns_options: _Optional[_Iterable[str]] = ..., extra_hosts: _Optional[_Iterable[str]] = ..., sysctls: _Optional[_Mapping[str, str]] = ..., shm_size: _Optional[int] = ..., group_add: _Optional[_Iterable[str]] = ..., healthcheck: _Optional[_Union[HealthCheck, _Mapping]] = ..., log_config: _Optional[_Union[LogConfig, _Mapping]] = ..., task_files: _Optional[_Iterable[_Union[TaskFile, _Mapping]]] = ..., cgroupns_mode: _Optional[str] = ..., uts_mode: _Optional[str] = ..., device_cgroup_rules: _Optional[_Iterable[str]] = ..., volume_flags: _Optional[_Iterable[str]] = ..., mount_flags: _Optional[_Iterable[str]] = ..., tmpfs_flags: _Optional[_Iterable[str]] = ...) -> None: ...

class LogConfig(_message.Message):
    __slots__ = ("type", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    type: str
    config: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[str] = ..., config: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskFile(_message.Message):
    __slots__ = ("kind", "name", "target", "uid", "gid", "mode")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    target: str
    uid: int
    gid: int
    mode: int
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., target: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("test", "interval", "timeout", "retries", "start_period", "start_interval")
    TEST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    START_PERIOD_FIELD_NUMBER: _ClassVar[int]
    START_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    test: _containers.RepeatedScalarFieldContainer[str]
    interval: float
    timeout: float
    retries: int
    start_period: float
    start_interval: float
    def __init__(self, test: _Optional[_Iterable[str]] = ..., interval: _Optional[float] = ..., timeout: _Optional[float] = ..., retries: _Optional[int] = ..., start_period: _Optional[float] = ..., start_interval: _Optional[float] = ...) -> None: ...

class Ulimit(_message.Message):
    __slots__ = ("name", "soft", "hard")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    soft: int
    hard: int
    def __init__(self, name: _Optional[str] = ..., soft: _Optional[int] = ..., hard: _Optional[int] = ...) -> None: ...

class Mount(_message.Message):
    __slots__ = ("type", "source", "target", "readonly", "propagation", "selinux", "nocopy", "create_source", "anonymous", "tmpfs_options", "volume_driver", "volume_labels", "volume_options", "external", "origin", "spec")
    class VolumeLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class VolumeOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    PROPAGATION_FIELD_NUMBER: _ClassVar[int]
    SELINUX_FIELD_NUMBER: _ClassVar[int]
    NOCOPY_FIELD_NUMBER: _ClassVar[int]
    CREATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_FIELD_NUMBER: _ClassVar[int]
    TMPFS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_DRIVER_FIELD_NUMBER: _ClassVar[int]
    VOLUME_LABELS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    target: str
    readonly: bool
    propagation: str
    selinux: str
    nocopy: bool
    create_source: bool
    anonymous: bool
    tmpfs_options: _containers.RepeatedScalarFieldContainer[str]
    volume_driver: str
    volume_labels: _containers.ScalarMap[str, str]
    volume_options: _containers.ScalarMap[str, str]
    external: bool
    origin: str
    spec: str
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., readonly: _Optional[bool] = ..., propagation: _Optional[str] = ..., selinux: _Optional[str] = ..., nocopy: _Optional[bool] = ..., create_source: _Optional[bool] = ..., anonymous: _Optional[bool] = ..., tmpfs_options: _Optional[_Iterable[str]] = ..., volume_driver: _Optional[str] = ..., volume_labels: _Optional[_Mapping[str, str]] = ..., volume_options: _Optional[_Mapping[str, str]] = ..., external: _Optional[bool] = ..., origin: _Optional[str] = ..., spec: _Optional[str] = ...) -> None: ...

class OverlayAttachment(_message.Message):
    __slots__ = ("network", "vni", "subnet", "ip", "mac", "mtu", "internal")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    network: str
    vni: int
    subnet: str
    ip: str
    mac: str
    mtu: int
    internal: bool
    def __init__(self, network: _Optional[str] = ..., vni: _Optional[int] = ..., subnet: _Optional[str] = ..., ip: _Optional[str] = ..., mac: _Optional[str] = ..., mtu: _Optional[int] = ..., internal: _Optional[bool] = ...) -> None: ...

class DeviceMapping(_message.Message):
    __slots__ = ("path_on_host", "path_in_container", "permissions")
    PATH_ON_HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_IN_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    path_on_host: str
    path_in_container: str
    permissions: str
    def __init__(self, path_on_host: _Optional[str] = ..., path_in_container: _Optional[str] = ..., permissions: _Optional[str] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: ContainerConfig
    def __init__(self, config: _Optional[_Union[ContainerConfig, _Mapping]] = ...) -> None: ...

class ContainerRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ContainerSummary(_message.Message):
    __slots__ = ("id", "name", "image", "image_id", "command", "created", "state", "exit_code", "ports", "started_at", "finished_at", "pid", "oom_killed", "labels", "ip_address", "error", "restart_count", "health")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    image: str
    image_id: str
    command: str
    created: float
    state: str
    exit_code: int
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    started_at: float
    finished_at: float
    pid: int
    oom_killed: bool
    labels: _containers.ScalarMap[str, str]
    ip_address: str
    error: str
    restart_count: int
    health: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[str] = ..., image_id: _Optional[str] = ..., command: _Optional[str] = ..., created: _Optional[float] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., pid: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., ip_address: _Optional[str] = ..., error: _Optional[str] = ..., restart_count: _Optional[int] = ..., health: _Optional[str] = ...) -> None: ...

class ListContainersRequest(_message.Message):
    __slots__ = ("all", "filters")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALL_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    all: bool
    filters: _containers.ScalarMap[str, str]
    def __init__(self, all: _Optional[bool] = ..., filters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("containers",)
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[ContainerSummary]
    def __init__(self, containers: _Optional[_Iterable[_Union[ContainerSummary, _Mapping]]] = ...) -> None: ...

class StopContainerRequest(_message.Message):
    __slots__ = ("id", "timeout")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    id: str
    timeout: int
    def __init__(self, id: _Optional[str] = ..., timeout: _Optional[int] = ...) -> None: ...

class KillContainerRequest(_message.Message):
    __slots__ = ("id", "signal")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    signal: str
    def __init__(self, id: _Optional[str] = ..., signal: _Optional[str] = ...) -> None: ...

class RemoveContainerRequest(_message.Message):
    __slots__ = ("id", "force", "volumes")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    volumes: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ..., volumes: _Optional[bool] = ...) -> None: ...

class RenameContainerRequest(_message.Message):
    __slots__ = ("id", "new_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    new_name: str
    def __init__(self, id: _Optional[str] = ..., new_name: _Optional[str] = ...) -> None: ...

class UpdateContainerRequest(_message.Message):
    __slots__ = ("id", "memory", "memory_swap", "nano_cpus", "cpu_shares", "pids_limit", "blkio_weight", "restart_policy")
    ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SWAP_FIELD_NUMBER: _ClassVar[int]
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_SHARES_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BLKIO_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    id: str
    memory: int
    memory_swap: int
    nano_cpus: int
    cpu_shares: int
    pids_limit: int
    blkio_weight: int
    restart_policy: RestartPolicy
    def __init__(self, id: _Optional[str] = ..., memory: _Optional[int] = ..., memory_swap: _Optional[int] = ..., nano_cpus: _Optional[int] = ..., cpu_shares: _Optional[int] = ..., pids_limit: _Optional[int] = ..., blkio_weight: _Optional[int] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ...) -> None: ...

class WaitResponse(_message.Message):
    __slots__ = ("exit_code", "oom_killed", "error")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    oom_killed: bool
    error: str
    def __init__(self, exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("id", "follow", "tail", "since", "until", "stdout", "stderr", "details")
    ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: str
    follow: bool
    tail: int
    since: float
    until: float
    stdout: bool
    stderr: bool
    details: bool
    def __init__(self, id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., stdout: _Optional[bool] = ..., stderr: _Optional[bool] = ..., details: _Optional[bool] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("stream", "data", "time")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    stream: str
    data: bytes
    time: float
    def __init__(self, stream: _Optional[str] = ..., data: _Optional[bytes] = ..., time: _Optional[float] = ...) -> None: ...

class TopRequest(_message.Message):
    __slots__ = ("id", "ps_args")
    ID_FIELD_NUMBER: _ClassVar[int]
    PS_ARGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    ps_args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., ps_args: _Optional[_Iterable[str]] = ...) -> None: ...

class TopResponse(_message.Message):
    __slots__ = ("titles", "processes")
    TITLES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    titles: _containers.RepeatedScalarFieldContainer[str]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessRow]
    def __init__(self, titles: _Optional[_Iterable[str]] = ..., processes: _Optional[_Iterable[_Union[ProcessRow, _Mapping]]] = ...) -> None: ...

class ProcessRow(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("since", "until")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "action", "actor_id", "attributes", "time_nano")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    TIME_NANO_FIELD_NUMBER: _ClassVar[int]
    type: str
    action: str
    actor_id: str
    attributes: _containers.ScalarMap[str, str]
    time_nano: int
    def __init__(self, type: _Optional[str] = ..., action: _Optional[str] = ..., actor_id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., time_nano: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("ids", "stream")
    IDS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    stream: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., stream: _Optional[bool] = ...) -> None: ...

class ContainerStats(_message.Message):
    __slots__ = ("id", "name", "cpu_percent", "cpu_usage_ns", "memory_usage", "memory_limit", "net_rx_bytes", "net_tx_bytes", "block_read_bytes", "block_write_bytes", "pids")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    cpu_percent: float
    cpu_usage_ns: int
    memory_usage: int
    memory_limit: int
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int
    pids: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., cpu_usage_ns: _Optional[int] = ..., memory_usage: _Optional[int] = ..., memory_limit: _Optional[int] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ..., block_read_bytes: _Optional[int] = ..., block_write_bytes: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[ContainerStats]
    def __init__(self, stats: _Optional[_Iterable[_Union[ContainerStats, _Mapping]]] = ...) -> None: ...

class ExecSpec(_message.Message):
    __slots__ = ("cmd", "env", "workdir", "user", "privileged")
    CMD_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    cmd: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    user: str
    privileged: bool
    def __init__(self, cmd: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., privileged: _Optional[bool] = ...) -> None: ...

class OpenStream(_message.Message):
    __slots__ = ("container", "tty", "stdin", "start", "exec", "size", "detach_keys", "create")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DETACH_KEYS_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    container: str
    tty: bool
    stdin: bool
    start: bool
    exec: ExecSpec
    size: Resize
    detach_keys: str
    create: ContainerConfig
    def __init__(self, container: _Optional[str] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., start: _Optional[bool] = ..., exec: _Optional[_Union[ExecSpec, _Mapping]] = ..., size: _Optional[_Union[Resize, _Mapping]] = ..., detach_keys: _Optional[str] = ..., create: _Optional[_Union[ContainerConfig, _Mapping]] = ...) -> None: ...

class Resize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class StreamInput(_message.Message):
    __slots__ = ("open", "stdin", "close_stdin", "resize", "signal")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    open: OpenStream
    stdin: bytes
    close_stdin: bool
    resize: Resize
    signal: str
    def __init__(self, open: _Optional[_Union[OpenStream, _Mapping]] = ..., stdin: _Optional[bytes] = ..., close_stdin: _Optional[bool] = ..., resize: _Optional[_Union[Resize, _Mapping]] = ..., signal: _Optional[str] = ...) -> None: ...

class ExitStatus(_message.Message):
    __slots__ = ("exit_code", "oom_killed", "error")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    oom_killed: bool
    error: str
    def __init__(self, exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class StreamOutput(_message.Message):
    __slots__ = ("stdout", "stderr", "exit", "started")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit: ExitStatus
    started: str
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit: _Optional[_Union[ExitStatus, _Mapping]] = ..., started: _Optional[str] = ...) -> None: ...

class ImportHeader(_message.Message):
    __slots__ = ("reference", "changes", "message")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    changes: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, reference: _Optional[str] = ..., changes: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("import_header", "data")
    IMPORT_HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    import_header: ImportHeader
    data: bytes
    def __init__(self, import_header: _Optional[_Union[ImportHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ImageRef(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class ImageSummary(_message.Message):
    __slots__ = ("id", "repo_tags", "repo_digests", "created", "size", "containers", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    REPO_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    repo_digests: _containers.RepeatedScalarFieldContainer[str]
    created: float
    size: int
    containers: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ..., repo_digests: _Optional[_Iterable[str]] = ..., created: _Optional[float] = ..., size: _Optional[int] = ..., containers: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("all", "filters")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALL_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    all: bool
    filters: _containers.ScalarMap[str, str]
    def __init__(self, all: _Optional[bool] = ..., filters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageSummary]
    def __init__(self, images: _Optional[_Iterable[_Union[ImageSummary, _Mapping]]] = ...) -> None: ...

class RemoveImageRequest(_message.Message):
    __slots__ = ("ref", "force", "no_prune")
    REF_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    NO_PRUNE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    force: bool
    no_prune: bool
    def __init__(self, ref: _Optional[str] = ..., force: _Optional[bool] = ..., no_prune: _Optional[bool] = ...) -> None: ...

class RemoveImageResponse(_message.Message):
    __slots__ = ("untagged", "deleted")
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    untagged: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, untagged: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class TagImageRequest(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("id", "leave_running", "export")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    leave_running: bool
    export: bool
    def __init__(self, id: _Optional[str] = ..., leave_running: _Optional[bool] = ..., export: _Optional[bool] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("stats_json", "data")
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stats_json: str
    data: bytes
    def __init__(self, stats_json: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class RestoreHeader(_message.Message):
    __slots__ = ("id", "name", "cold", "sha256", "page_server")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLD_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    cold: bool
    sha256: str
    page_server: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., cold: _Optional[bool] = ..., sha256: _Optional[str] = ..., page_server: _Optional[str] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("id", "target", "live", "target_node", "grant", "crl")
    ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    id: str
    target: str
    live: bool
    target_node: str
    grant: bytes
    crl: bytes
    def __init__(self, id: _Optional[str] = ..., target: _Optional[str] = ..., live: _Optional[bool] = ..., target_node: _Optional[str] = ..., grant: _Optional[bytes] = ..., crl: _Optional[bytes] = ...) -> None: ...

class MigrateProgress(_message.Message):
    __slots__ = ("phase", "bytes", "total", "downtime_seconds", "total_seconds", "new_id", "message")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NEW_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    bytes: int
    total: int
    downtime_seconds: float
    total_seconds: float
    new_id: str
    message: str
    def __init__(self, phase: _Optional[str] = ..., bytes: _Optional[int] = ..., total: _Optional[int] = ..., downtime_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., new_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RestoreChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: RestoreHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[RestoreHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class LocalNetworkSpec(_message.Message):
    __slots__ = ("name", "subnet", "gateway", "labels", "internal", "ip_range", "aux_addresses")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AuxAddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    AUX_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    subnet: str
    gateway: str
    labels: _containers.ScalarMap[str, str]
    internal: bool
    ip_range: str
    aux_addresses: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., internal: _Optional[bool] = ..., ip_range: _Optional[str] = ..., aux_addresses: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LocalNetworkInfo(_message.Message):
    __slots__ = ("name", "id", "subnet", "gateway", "labels", "containers", "internal", "ip_range", "aux_addresses")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AuxAddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    AUX_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    subnet: str
    gateway: str
    labels: _containers.ScalarMap[str, str]
    containers: _containers.RepeatedScalarFieldContainer[str]
    internal: bool
    ip_range: str
    aux_addresses: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., containers: _Optional[_Iterable[str]] = ..., internal: _Optional[bool] = ..., ip_range: _Optional[str] = ..., aux_addresses: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LocalNetworkList(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[LocalNetworkInfo]
    def __init__(self, networks: _Optional[_Iterable[_Union[LocalNetworkInfo, _Mapping]]] = ...) -> None: ...

class LocalNetworkRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class NetworkConnectRequest(_message.Message):
    __slots__ = ("network", "container", "aliases", "ip")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    network: str
    container: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    ip: str
    def __init__(self, network: _Optional[str] = ..., container: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., ip: _Optional[str] = ...) -> None: ...
