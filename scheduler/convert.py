"""protobuf (protos/cluster.proto) <-> the scheduler's dataclasses: the only scheduler module that
knows the cluster messages, besides the thin servicer and the agent dispatcher at the edges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protos import agent_pb2 as apb
from protos import cluster_pb2 as pb
from protos import service_pb2 as spb
from scheduler import codec, specpb
from scheduler.model import (
    Availability,
    Capabilities,
    Node,
    Resources,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
)
from scheduler.network import EndpointView, MeshPort, Network, VipView
from scheduler.observe import ContainerReport

STACK_LABEL = "com.docker.stack.namespace"


# --- nodes -------------------------------------------------------------------------------------

def node_from_register(req: pb.RegisterRequest) -> Node:
    return Node(
        name=req.name, address=req.address, labels=dict(req.labels),
        capacity=Resources(int(req.nano_cpus), int(req.memory_bytes)),
        capabilities=Capabilities(criu=req.capabilities.criu, cgroup_version=req.capabilities.cgroup_version or 2,
                                  lazy_pages=req.capabilities.lazy_pages, kernel=req.capabilities.kernel,
                                  cpu_features=tuple(sorted(req.capabilities.cpu_features))),
        arch=req.capabilities.arch or "x86_64",
        hostname=req.hostname or req.name, metrics_addr=req.metrics_addr, agent_id=req.agent_id,
        engine_labels={"version": req.engine_version} if req.engine_version else {},
    )


def node_info(n: Node, tasks: Iterable[Task] = (), reserved: Resources = Resources()) -> pb.NodeInfo:
    return pb.NodeInfo(
        name=n.name, address=n.address, hostname=n.hostname, labels=n.labels,
        nano_cpus=n.capacity.nano_cpus, memory_bytes=n.capacity.memory_bytes, status=n.status.value,
        availability=n.availability.value, role=n.role,
        capabilities=pb.Capabilities(criu=n.capabilities.criu, cgroup_version=n.capabilities.cgroup_version,
                                     lazy_pages=n.capabilities.lazy_pages, kernel=n.capabilities.kernel,
                                     arch=n.arch, cpu_features=n.capabilities.cpu_features),
        metrics_addr=n.metrics_addr, tasks=sum(1 for _ in tasks),
        reserved_nano_cpus=reserved.nano_cpus, reserved_memory_bytes=reserved.memory_bytes,
        engine_version=n.engine_labels.get("version", ""), pressure=n.pressure,
    )


def availability(text: str) -> Availability:
    try:
        return Availability(text)
    except ValueError:
        raise ValueError(f"availability {text!r}: expected active or drain") from None


# --- services ----------------------------------------------------------------------------------

def spec_to_pb(spec: ServiceSpec) -> spb.ServiceSpec:
    out = specpb.to_message(spec, spb.ServiceSpec())
    assert isinstance(out, spb.ServiceSpec)
    return out


def spec_from_pb(msg: spb.ServiceSpec) -> ServiceSpec:
    """A spec from the wire; ValueError naming the service and the bad field."""
    try:
        spec = specpb.from_message(msg, ServiceSpec)
    except (ValueError, TypeError) as e:
        raise ValueError(f"service {msg.name or '?'}: {e}") from None
    if not spec.name or not spec.image:
        raise ValueError("a service needs a name and an image")
    if spec.replicas < 0:
        raise ValueError(f"{spec.name}: replicas must be >= 0")
    return spec


def spec_dict(spec: ServiceSpec) -> dict[str, Any]:
    """The spec as `service inspect` prints it (the scheduler's JSON, scheduler/codec.py)."""
    out = codec.encode(spec)
    assert isinstance(out, dict)
    return out


def ports_text(spec: ServiceSpec) -> str:
    return ", ".join(f"*:{p.published}->{p.target}/{p.protocol}" if p.published is not None
                     else f"{p.target}/{p.protocol}" for p in spec.ports)


def stack_of(spec: ServiceSpec) -> str:
    return dict(spec.labels).get(STACK_LABEL, "")


def service_info(svc: Service, running: int, live: int = 0) -> pb.ServiceInfo:
    """`live`: the tasks wanted running, which a global service's desired count is."""
    replicas = live if svc.spec.mode is ServiceMode.GLOBAL else svc.spec.replicas
    return pb.ServiceInfo(
        name=svc.name, image=svc.spec.image, replicas=replicas, running=running, mode=svc.spec.mode.value,
        spec=spec_to_pb(svc.spec),
        previous_spec=spec_to_pb(svc.previous_spec) if svc.previous_spec is not None else None,
        version=svc.version, update_state=svc.update.state.value, update_message=svc.update.message,
        ports=ports_text(svc.spec), stack=stack_of(svc.spec), created_at=svc.created_at,
    )


# --- tasks -------------------------------------------------------------------------------------

def task_info(t: Task, image: str = "") -> pb.TaskInfo:
    return pb.TaskInfo(
        id=t.id, name=t.name, service=t.service, slot=t.slot, node=t.node or "",
        desired_state=t.desired_state.value, state=t.state.value, state_at=t.state_at, error=t.error,
        container_id=t.container_id, exit_code=t.exit_code or 0, has_exit_code=t.exit_code is not None,
        image=image, spec_version=t.spec_version,
        healthy="" if t.healthy is None else ("healthy" if t.healthy else "unhealthy"),
        attempt=t.attempt, created_at=t.created_at,
    )


def report_from_pb(r: pb.TaskReport) -> ContainerReport:
    return ContainerReport(
        task_id=r.task_id, service=r.service, container_id=r.container_id, state=r.container_state,
        exit_code=r.exit_code, error=r.error, started_at=r.started_at, finished_at=r.finished_at,
        healthy=None if not r.healthy else r.healthy == "healthy",
    )


def log_line(t: Task, entry: apb.LogEntry) -> pb.LogLine:
    return pb.LogLine(task=t.name, task_id=t.id, node=t.node or "", entry=entry)


# --- cluster networks ----------------------------------------------------------------------------

def network_info(n: Network, services: Iterable[str] = (), endpoints: Iterable[EndpointView] = (),
                 vips: Iterable[VipView] = (), mesh_ports: Iterable[MeshPort] = ()) -> pb.NetworkInfo:
    return pb.NetworkInfo(
        name=n.name, driver=n.driver, subnet=n.subnet, gateway=n.gateway, vni=n.vni, mtu=n.mtu,
        attachable=n.attachable, internal=n.internal, labels=n.labels, created_at=n.created_at,
        services=list(services),
        endpoints=[pb.EndpointInfo(task_id=e.task_id, task=e.task, service=e.service, ip=e.ip, mac=e.mac,
                                   node=e.node, vtep=e.vtep, names=e.names, ready=e.ready, container=e.container)
                   for e in endpoints],
        vips=[pb.VipInfo(service=v.service, ip=v.ip, names=v.names) for v in vips],
        ingress=n.ingress,
        mesh_ports=[pb.MeshPort(service=m.service, protocol=m.protocol, published=m.published, target=m.target)
                    for m in mesh_ports])
