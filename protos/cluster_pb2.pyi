from protos import agent_pb2 as _agent_pb2
from protos import service_pb2 as _service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateNetworkRequest(_message.Message):
    __slots__ = ("name", "driver", "subnet", "attachable", "internal", "mtu", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    ATTACHABLE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    driver: str
    subnet: str
    attachable: bool
    internal: bool
    mtu: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., attachable: _Optional[bool] = ..., internal: _Optional[bool] = ..., mtu: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NetworkRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class EndpointInfo(_message.Message):
    __slots__ = ("task_id", "task", "service", "ip", "mac", "node", "vtep", "names", "ready", "container")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    VTEP_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task: str
    service: str
    ip: str
    mac: str
    node: str
    vtep: str
    names: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    container: str
    def __init__(self, task_id: _Optional[str] = ..., task: _Optional[str] = ..., service: _Optional[str] = ..., ip: _Optional[str] = ..., mac: _Optional[str] = ..., node: _Optional[str] = ..., vtep: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ..., container: _Optional[str] = ...) -> None: ...

class NetworkInfo(_message.Message):
    __slots__ = ("name", "driver", "subnet", "gateway", "vni", "mtu", "attachable", "internal", "labels", "created_at", "services", "endpoints", "vips", "ingress", "mesh_ports")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    ATTACHABLE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    VIPS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    MESH_PORTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    driver: str
    subnet: str
    gateway: str
    vni: int
    mtu: int
    attachable: bool
    internal: bool
    labels: _containers.ScalarMap[str, str]
    created_at: float
    services: _containers.RepeatedScalarFieldContainer[str]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointInfo]
    vips: _containers.RepeatedCompositeFieldContainer[VipInfo]
    ingress: bool
    mesh_ports: _containers.RepeatedCompositeFieldContainer[MeshPort]
    def __init__(self, name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., vni: _Optional[int] = ..., mtu: _Optional[int] = ..., attachable: _Optional[bool] = ..., internal: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[float] = ..., services: _Optional[_Iterable[str]] = ..., endpoints: _Optional[_Iterable[_Union[EndpointInfo, _Mapping]]] = ..., vips: _Optional[_Iterable[_Union[VipInfo, _Mapping]]] = ..., ingress: _Optional[bool] = ..., mesh_ports: _Optional[_Iterable[_Union[MeshPort, _Mapping]]] = ...) -> None: ...

class MeshPort(_message.Message):
    __slots__ = ("service", "protocol", "published", "target")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    service: str
    protocol: str
    published: int
    target: int
    def __init__(self, service: _Optional[str] = ..., protocol: _Optional[str] = ..., published: _Optional[int] = ..., target: _Optional[int] = ...) -> None: ...

class VipInfo(_message.Message):
    __slots__ = ("service", "ip", "names")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    service: str
    ip: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service: _Optional[str] = ..., ip: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[NetworkInfo]
    def __init__(self, networks: _Optional[_Iterable[_Union[NetworkInfo, _Mapping]]] = ...) -> None: ...

class WatchNetworksRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class NetworkMap(_message.Message):
    __slots__ = ("revision", "networks")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    networks: _containers.RepeatedCompositeFieldContainer[NetworkInfo]
    def __init__(self, revision: _Optional[int] = ..., networks: _Optional[_Iterable[_Union[NetworkInfo, _Mapping]]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SchedulerStatus(_message.Message):
    __slots__ = ("replica", "leader", "leader_replica", "etcd_ok", "etcd", "revision")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    ETCD_OK_FIELD_NUMBER: _ClassVar[int]
    ETCD_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    replica: str
    leader: bool
    leader_replica: str
    etcd_ok: bool
    etcd: str
    revision: int
    def __init__(self, replica: _Optional[str] = ..., leader: _Optional[bool] = ..., leader_replica: _Optional[str] = ..., etcd_ok: _Optional[bool] = ..., etcd: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("criu", "cgroup_version", "lazy_pages", "kernel", "arch", "cpu_features")
    CRIU_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    criu: bool
    cgroup_version: int
    lazy_pages: bool
    kernel: str
    arch: str
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, criu: _Optional[bool] = ..., cgroup_version: _Optional[int] = ..., lazy_pages: _Optional[bool] = ..., kernel: _Optional[str] = ..., arch: _Optional[str] = ..., cpu_features: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "address", "hostname", "labels", "nano_cpus", "memory_bytes", "status", "availability", "role", "capabilities", "metrics_addr", "tasks", "reserved_nano_cpus", "reserved_memory_bytes", "engine_version", "pressure")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDR_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    nano_cpus: int
    memory_bytes: int
    status: str
    availability: str
    role: str
    capabilities: Capabilities
    metrics_addr: str
    tasks: int
    reserved_nano_cpus: int
    reserved_memory_bytes: int
    engine_version: str
    pressure: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., nano_cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., status: _Optional[str] = ..., availability: _Optional[str] = ..., role: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., metrics_addr: _Optional[str] = ..., tasks: _Optional[int] = ..., reserved_nano_cpus: _Optional[int] = ..., reserved_memory_bytes: _Optional[int] = ..., engine_version: _Optional[str] = ..., pressure: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class NodeRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UpdateNodeRequest(_message.Message):
    __slots__ = ("name", "availability", "label_add", "label_rm")
    class LabelAddEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_ADD_FIELD_NUMBER: _ClassVar[int]
    LABEL_RM_FIELD_NUMBER: _ClassVar[int]
    name: str
    availability: str
    label_add: _containers.ScalarMap[str, str]
    label_rm: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., availability: _Optional[str] = ..., label_add: _Optional[_Mapping[str, str]] = ..., label_rm: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("stack", "services", "prune", "objects")
    STACK_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    stack: str
    services: _containers.RepeatedCompositeFieldContainer[_service_pb2.ServiceSpec]
    prune: bool
    objects: _containers.RepeatedCompositeFieldContainer[FileObject]
    def __init__(self, stack: _Optional[str] = ..., services: _Optional[_Iterable[_Union[_service_pb2.ServiceSpec, _Mapping]]] = ..., prune: _Optional[bool] = ..., objects: _Optional[_Iterable[_Union[FileObject, _Mapping]]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("service", "action", "fields")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    action: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service: _Optional[str] = ..., action: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("changes", "objects")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    objects: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., objects: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class FileObject(_message.Message):
    __slots__ = ("kind", "name", "data", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    data: bytes
    labels: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("kind", "name", "labels", "created_at", "size", "services", "data")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    labels: _containers.ScalarMap[str, str]
    created_at: float
    size: int
    services: _containers.RepeatedScalarFieldContainer[str]
    data: bytes
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[float] = ..., size: _Optional[int] = ..., services: _Optional[_Iterable[str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class TaskFilesRequest(_message.Message):
    __slots__ = ("node", "task_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    node: str
    task_id: str
    def __init__(self, node: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class TaskFileData(_message.Message):
    __slots__ = ("kind", "name", "data")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    data: bytes
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class TaskFilesResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[TaskFileData]
    def __init__(self, files: _Optional[_Iterable[_Union[TaskFileData, _Mapping]]] = ...) -> None: ...

class ServiceRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("stack",)
    STACK_FIELD_NUMBER: _ClassVar[int]
    stack: str
    def __init__(self, stack: _Optional[str] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("name", "image", "replicas", "running", "spec", "previous_spec", "version", "update_state", "update_message", "ports", "stack", "created_at", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STATE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    replicas: int
    running: int
    spec: _service_pb2.ServiceSpec
    previous_spec: _service_pb2.ServiceSpec
    version: int
    update_state: str
    update_message: str
    ports: str
    stack: str
    created_at: float
    mode: str
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., replicas: _Optional[int] = ..., running: _Optional[int] = ..., spec: _Optional[_Union[_service_pb2.ServiceSpec, _Mapping]] = ..., previous_spec: _Optional[_Union[_service_pb2.ServiceSpec, _Mapping]] = ..., version: _Optional[int] = ..., update_state: _Optional[str] = ..., update_message: _Optional[str] = ..., ports: _Optional[str] = ..., stack: _Optional[str] = ..., created_at: _Optional[float] = ..., mode: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("id", "name", "service", "slot", "node", "desired_state", "state", "state_at", "error", "container_id", "exit_code", "has_exit_code", "image", "spec_version", "healthy", "attempt", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    service: str
    slot: int
    node: str
    desired_state: str
    state: str
    state_at: float
    error: str
    container_id: str
    exit_code: int
    has_exit_code: bool
    image: str
    spec_version: str
    healthy: str
    attempt: int
    created_at: float
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., service: _Optional[str] = ..., slot: _Optional[int] = ..., node: _Optional[str] = ..., desired_state: _Optional[str] = ..., state: _Optional[str] = ..., state_at: _Optional[float] = ..., error: _Optional[str] = ..., container_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., has_exit_code: _Optional[bool] = ..., image: _Optional[str] = ..., spec_version: _Optional[str] = ..., healthy: _Optional[str] = ..., attempt: _Optional[int] = ..., created_at: _Optional[float] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("services", "all")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, services: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("name", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class UpdateServiceRequest(_message.Message):
    __slots__ = ("name", "image", "env_add", "replicas", "has_replicas", "force", "spec", "expect_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENV_ADD_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    HAS_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EXPECT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    env_add: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    has_replicas: bool
    force: bool
    spec: _service_pb2.ServiceSpec
    expect_version: int
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., env_add: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ..., has_replicas: _Optional[bool] = ..., force: _Optional[bool] = ..., spec: _Optional[_Union[_service_pb2.ServiceSpec, _Mapping]] = ..., expect_version: _Optional[int] = ...) -> None: ...

class RemoveServicesRequest(_message.Message):
    __slots__ = ("names", "stack")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    stack: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., stack: _Optional[bool] = ...) -> None: ...

class RemoveServicesResponse(_message.Message):
    __slots__ = ("removed", "removed_objects")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    removed_objects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., removed_objects: _Optional[_Iterable[str]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("target", "follow", "tail", "timestamps")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    target: str
    follow: bool
    tail: int
    timestamps: bool
    def __init__(self, target: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., timestamps: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("task", "task_id", "node", "entry")
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    task: str
    task_id: str
    node: str
    entry: _agent_pb2.LogEntry
    def __init__(self, task: _Optional[str] = ..., task_id: _Optional[str] = ..., node: _Optional[str] = ..., entry: _Optional[_Union[_agent_pb2.LogEntry, _Mapping]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("name", "agent_id", "address", "hostname", "labels", "nano_cpus", "memory_bytes", "capabilities", "metrics_addr", "engine_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDR_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent_id: str
    address: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    nano_cpus: int
    memory_bytes: int
    capabilities: Capabilities
    metrics_addr: str
    engine_version: str
    def __init__(self, name: _Optional[str] = ..., agent_id: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., nano_cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., metrics_addr: _Optional[str] = ..., engine_version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("lease_id", "heartbeat_ms", "ttl_s", "schedulers")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    heartbeat_ms: int
    ttl_s: int
    schedulers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[int] = ..., heartbeat_ms: _Optional[int] = ..., ttl_s: _Optional[int] = ..., schedulers: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("name", "lease_id", "pressure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_id: int
    pressure: str
    def __init__(self, name: _Optional[str] = ..., lease_id: _Optional[int] = ..., pressure: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("ok", "renew_certificate")
    OK_FIELD_NUMBER: _ClassVar[int]
    RENEW_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    renew_certificate: bool
    def __init__(self, ok: _Optional[bool] = ..., renew_certificate: _Optional[bool] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("task_id", "service", "container_id", "container_state", "exit_code", "error", "started_at", "finished_at", "healthy")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    service: str
    container_id: str
    container_state: str
    exit_code: int
    error: str
    started_at: float
    finished_at: float
    healthy: str
    def __init__(self, task_id: _Optional[str] = ..., service: _Optional[str] = ..., container_id: _Optional[str] = ..., container_state: _Optional[str] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., healthy: _Optional[str] = ...) -> None: ...

class ReportTasksRequest(_message.Message):
    __slots__ = ("node", "full", "tasks")
    NODE_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    node: str
    full: bool
    tasks: _containers.RepeatedCompositeFieldContainer[TaskReport]
    def __init__(self, node: _Optional[str] = ..., full: _Optional[bool] = ..., tasks: _Optional[_Iterable[_Union[TaskReport, _Mapping]]] = ...) -> None: ...

class MigrateTaskRequest(_message.Message):
    __slots__ = ("task", "to", "mode")
    TASK_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    task: str
    to: str
    mode: str
    def __init__(self, task: _Optional[str] = ..., to: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("node", "mode")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    mode: str
    def __init__(self, node: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class MigrationProgress(_message.Message):
    __slots__ = ("migration_id", "task", "task_id", "from_node", "to_node", "mode", "phase", "bytes", "total", "message", "downtime_seconds", "total_seconds")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    task: str
    task_id: str
    from_node: str
    to_node: str
    mode: str
    phase: str
    bytes: int
    total: int
    message: str
    downtime_seconds: float
    total_seconds: float
    def __init__(self, migration_id: _Optional[str] = ..., task: _Optional[str] = ..., task_id: _Optional[str] = ..., from_node: _Optional[str] = ..., to_node: _Optional[str] = ..., mode: _Optional[str] = ..., phase: _Optional[str] = ..., bytes: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ..., downtime_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class MigrationInfo(_message.Message):
    __slots__ = ("id", "task_id", "service", "from_node", "to_node", "mode", "phase", "started_at", "leader")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    id: str
    task_id: str
    service: str
    from_node: str
    to_node: str
    mode: str
    phase: str
    started_at: float
    leader: str
    def __init__(self, id: _Optional[str] = ..., task_id: _Optional[str] = ..., service: _Optional[str] = ..., from_node: _Optional[str] = ..., to_node: _Optional[str] = ..., mode: _Optional[str] = ..., phase: _Optional[str] = ..., started_at: _Optional[float] = ..., leader: _Optional[str] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations",)
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[MigrationInfo]
    def __init__(self, migrations: _Optional[_Iterable[_Union[MigrationInfo, _Mapping]]] = ...) -> None: ...

class JoinTokenRequest(_message.Message):
    __slots__ = ("role", "rotate")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    role: str
    rotate: bool
    def __init__(self, role: _Optional[str] = ..., rotate: _Optional[bool] = ...) -> None: ...

class JoinTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class IssueRequest(_message.Message):
    __slots__ = ("token", "csr", "name")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr: bytes
    name: str
    def __init__(self, token: _Optional[str] = ..., csr: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class RotateCAResponse(_message.Message):
    __slots__ = ("digest", "nodes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    nodes: int
    def __init__(self, digest: _Optional[str] = ..., nodes: _Optional[int] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class IssueResponse(_message.Message):
    __slots__ = ("node_id", "role", "certificate", "ca")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    certificate: bytes
    ca: bytes
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., certificate: _Optional[bytes] = ..., ca: _Optional[bytes] = ...) -> None: ...
