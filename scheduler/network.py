"""Cluster networks: the records in etcd and the pure decisions about them (no etcd, no clock).

    /dockyard/net/networks/<name>              Network: subnet, VNI, MTU, flags
    /dockyard/net/ipam/<network>/<ip>          Allocation: the task that owns the address
    /dockyard/net/quarantine/<network>/<ip>    when the address was freed (no reuse before it rests)

An address belongs to a task, is taken with a create-if-absent transaction, and passes to the next
task of the same slot when its owner is no longer wanted running (a restart, a reschedule off a
lost node, a stop-first update): so a slot keeps its address across moves. It is freed only when
its owner task is removed from the store, or has ended and its slot is gone (scaled away, the
service removed or taken off the network), and rests in quarantine before anyone gets it again
(stale ARP and FDB entries elsewhere then age out: moby#35401).

`plan_addresses` decides; the leader's loop writes what it decides (scheduler/netalloc.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from scheduler.model import DesiredState, Migration, Service, ServiceSpec, Task, TaskState

DEFAULT_POOL = ipaddress.IPv4Network("10.240.0.0/12")  # default subnets are /24s of this
DEFAULT_PREFIX = 24
FIRST_VNI = 4096  # as docker's overlay driver: below is left to operators
MAX_VNI = (1 << 24) - 1
DEFAULT_MTU = 1450  # a 1500-byte underlay minus VXLAN's 50 bytes
QUARANTINE = 60.0  # seconds a freed address rests before reuse
DRIVERS = ("overlay",)
# The routing mesh (Swarm's `ingress`): a service's tasks with a published `mode: ingress` port get an
# address on it, so does every node; any node DNATs the port to a ready task's address there and
# SNATs to its own, so the reply comes back through it (agent/runtime/network/mesh.py).
INGRESS = "ingress"
INGRESS_SUBNET = "10.255.0.0/16"  # as Swarm's; a free /24 of the pool when it is taken
NODE_PREFIX = "node:"  # the owner an allocation records for a node's own address on the ingress network
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class NetworkError(ValueError):
    """A network request that cannot be met; the message names the bad part."""


@dataclass(slots=True)
class Network:
    name: str
    subnet: str
    vni: int
    driver: str = "overlay"
    mtu: int = DEFAULT_MTU
    attachable: bool = False
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    ingress: bool = False  # the routing mesh's network (INGRESS): made by the scheduler, joined by every node
    mod_revision: int = 0  # etcd metadata

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The first address: reserved (virtual IPs and host gateways live above it, never tasks)."""
        return str(self.network.network_address + 1)

    def encode(self) -> bytes:
        d = asdict(self)
        d.pop("mod_revision")
        return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, rev: int = 0) -> Network:
        d = json.loads(raw)
        return cls(name=str(d["name"]), subnet=str(d["subnet"]), vni=int(d["vni"]), driver=str(d.get("driver", "overlay")),
                   mtu=int(d.get("mtu", DEFAULT_MTU)), attachable=bool(d.get("attachable", False)),
                   internal=bool(d.get("internal", False)), labels=dict(d.get("labels", {})),
                   created_at=float(d.get("created_at", 0.0)), ingress=bool(d.get("ingress", False)),
                   mod_revision=rev)


@dataclass(slots=True)
class Allocation:
    network: str
    ip: str
    task_id: str
    service: str
    slot: int
    mod_revision: int = 0

    def encode(self) -> bytes:
        return json.dumps({"task_id": self.task_id, "service": self.service, "slot": self.slot},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, network: str, ip: str, raw: bytes, rev: int = 0) -> Allocation:
        d = json.loads(raw)
        return cls(network, ip, str(d["task_id"]), str(d.get("service", "")), int(d.get("slot", 0)), rev)


@dataclass(slots=True)
class Quarantined:
    network: str
    ip: str
    freed_at: float
    mod_revision: int = 0

    def encode(self) -> bytes:
        return json.dumps({"freed_at": self.freed_at}).encode()

    @classmethod
    def decode(cls, network: str, ip: str, raw: bytes, rev: int = 0) -> Quarantined:
        return cls(network, ip, float(json.loads(raw)["freed_at"]), rev)


def mac_for(ip: str) -> str:
    """Derived from the address (02:42:a.b.c.d, as docker does): a move changes only the VTEP, so no
    peer's ARP entry is ever wrong."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


# --- create ----------------------------------------------------------------------------------

def new_network(name: str, existing: Iterable[Network], *, subnet: str = "", driver: str = "overlay",
                attachable: bool = False, internal: bool = False, mtu: int = 0,
                labels: Mapping[str, str] | None = None, now: float = 0.0) -> Network:
    """A checked Network, with a free /24 of DEFAULT_POOL and the lowest free VNI unless given."""
    nets = list(existing)
    if not _NAME.match(name):
        raise NetworkError(f"network name {name!r}: 1-63 letters, digits, '_', '.' or '-', starting with a "
                           "letter or digit")
    if any(n.name == name for n in nets):
        raise NetworkError(f"network {name} already exists")
    if driver not in DRIVERS:
        raise NetworkError(f"driver {driver!r}: dockyard's cluster networks are {', '.join(DRIVERS)}")
    # Kept in the record (the wire and etcd have them), refused until they do something: a plain
    # container cannot join a cluster network yet, and a task's eth0 on its host's bridge still
    # reaches beyond the host, so neither would be honoured.
    if attachable:
        raise NetworkError("--attachable: plain containers cannot join cluster networks yet (only services' tasks)")
    if mtu and not 576 <= mtu <= 9000:
        raise NetworkError(f"mtu {mtu}: between 576 and 9000")
    taken = [n.network for n in nets]
    if subnet:
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as e:
            raise NetworkError(f"subnet {subnet!r}: {e}") from None
        if net.prefixlen > 29:
            raise NetworkError(f"subnet {subnet}: too small, at most /29")
        if not net.is_private:
            raise NetworkError(f"subnet {subnet}: not a private range (RFC 1918 or similar)")
        for n in nets:
            if n.network.overlaps(net):
                raise NetworkError(f"subnet {subnet} overlaps {n.subnet} of network {n.name}")
    else:
        free = next((s for s in DEFAULT_POOL.subnets(new_prefix=DEFAULT_PREFIX)
                     if not any(s.overlaps(t) for t in taken)), None)
        if free is None:
            raise NetworkError(f"no free /{DEFAULT_PREFIX} left in {DEFAULT_POOL}: give --subnet")
        net = free
    used = {n.vni for n in nets}
    vni = next((v for v in range(FIRST_VNI, MAX_VNI + 1) if v not in used), None)
    if vni is None:
        raise NetworkError("no free VXLAN network identifier")
    return Network(name=name, subnet=str(net), vni=vni, driver=driver, mtu=mtu or DEFAULT_MTU,
                   attachable=attachable, internal=internal, labels=dict(labels or {}), created_at=now)


def unknown_networks(spec: ServiceSpec, networks: Mapping[str, Network]) -> list[str]:
    return [a.name for a in spec.networks if a.name not in networks]


def attached(spec: ServiceSpec) -> tuple[str, ...]:
    """Every network a task of `spec` has an address on: its own, and the ingress network when it
    publishes a port through the routing mesh."""
    names = tuple(a.name for a in spec.networks)
    return (*names, INGRESS) if spec.mesh_ports and INGRESS not in names else names


def host_ports_isolated(spec: ServiceSpec, networks: Mapping[str, Network]) -> bool:
    nets = [networks[a.name] for a in spec.networks if a.name in networks]
    return bool(nets) and all(n.internal for n in nets) and bool(spec.host_ports)


def check_endpoint(spec: ServiceSpec, others: Iterable[ServiceSpec],
                   networks: Mapping[str, Network] | None = None) -> None:
    """A service's endpoint against the rest of the cluster (Swarm's checks): a port published
    through the mesh belongs to one service on every node, so no other service may publish it in
    any mode; dnsrr has no virtual IP for the mesh to reach."""
    if spec.endpoint_mode not in ("vip", "dnsrr"):
        raise NetworkError(f"service {spec.name}: endpoint_mode {spec.endpoint_mode!r}: vip or dnsrr")
    networks = networks or {}
    if spec.endpoint_mode == "dnsrr" and spec.mesh_ports:
        p = spec.mesh_ports[0]
        raise NetworkError(f"service {spec.name}: port {p.published}/{p.protocol} is published in ingress mode, "
                           "which needs endpoint_mode vip (publish it with mode: host for dnsrr)")
    if host_ports_isolated(spec, networks):
        p = next(p for p in spec.ports if p.published is not None and not p.meshed)
        raise NetworkError(f"service {spec.name}: port {p.published}/{p.protocol} in host mode needs a route out of "
                           f"the node, and every network of the service is internal (publish it in ingress mode)")
    if any(a.name == INGRESS for a in spec.networks):
        raise NetworkError(f"service {spec.name}: network {INGRESS} is the routing mesh's; a service joins it by "
                           "publishing a port")
    mine = {(p.published, p.protocol): p for p in spec.ports if p.published is not None}
    for other in others:
        if other.name == spec.name:
            continue
        for p in other.ports:
            key = (p.published, p.protocol)
            if p.published is None or key not in mine:
                continue
            if p.meshed or mine[key].meshed:
                raise NetworkError(f"port {p.published}/{p.protocol} is already published by service {other.name}"
                                   f" ({'ingress' if p.meshed else 'host'} mode)")


def ingress_network(existing: Iterable[Network], now: float = 0.0) -> Network:
    """The routing mesh's network, to create: INGRESS_SUBNET, or a free /24 when it overlaps one."""
    nets = list(existing)
    subnet = INGRESS_SUBNET
    if any(n.network.overlaps(ipaddress.IPv4Network(subnet)) for n in nets):
        subnet = ""
    net = new_network(INGRESS, nets, subnet=subnet, now=now)
    net.ingress = True
    return net


# --- addresses -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Assign:
    """Take a free address for a task (the key must not exist)."""
    allocation: Allocation


@dataclass(frozen=True, slots=True)
class Transfer:
    """Hand a slot's address to its new task (guarded by the key's mod_revision)."""
    allocation: Allocation  # the new value; mod_revision is the current key's


@dataclass(frozen=True, slots=True)
class Release:
    """The owner task is gone: delete the key, quarantine the address."""
    allocation: Allocation
    freed_at: float


@dataclass(frozen=True, slots=True)
class Expire:
    """A quarantined address has rested long enough."""
    entry: Quarantined


@dataclass(frozen=True, slots=True)
class Exhausted:
    """No free address for this task: it is (or goes back to) pending with the reason."""
    task: Task
    network: str

    @property
    def reason(self) -> str:
        return f"pending: no free address in {self.network}"  # as reconcile words a Pending


AddressOp = Assign | Transfer | Release | Expire | Exhausted


def _wants(t: Task) -> bool:
    return t.desired_state is DesiredState.RUNNING and not t.state.terminal


def networks_of(task: Task, services: Mapping[str, Service]) -> tuple[str, ...]:
    svc = services.get(task.service)
    if svc is None:
        return ()
    spec = svc.spec
    if svc.previous_spec is not None and svc.previous_spec.digest == task.spec_version:
        spec = svc.previous_spec
    return attached(spec)


def meshed(services: Mapping[str, Service]) -> bool:
    """Some service publishes a port through the routing mesh (then every node joins it)."""
    return any(s.spec.mesh_ports for s in services.values())


def plan_addresses(networks: Mapping[str, Network], allocations: Iterable[Allocation],
                   quarantine: Iterable[Quarantined], tasks: Mapping[str, Task], services: Mapping[str, Service],
                   now: float, *, rest: float = QUARANTINE, nodes: Iterable[str] = ()) -> list[AddressOp]:
    """What to write so that every task wanted running holds one address on each of its networks,
    each service a virtual IP on each (vip mode), and each node one on the ingress network while a
    service publishes through the mesh."""
    ops: list[AddressOp] = []
    by_net: dict[str, dict[str, Allocation]] = {n: {} for n in networks}
    held: dict[tuple[str, str], Allocation] = {}  # (network, task id) -> its allocation
    by_slot: dict[tuple[str, str, int], list[Allocation]] = {}
    for a in allocations:
        by_net.setdefault(a.network, {})[a.ip] = a
        held[a.network, a.task_id] = a
        by_slot.setdefault((a.network, a.service, a.slot), []).append(a)
    resting: dict[str, set[str]] = {}
    for q in quarantine:
        if now - q.freed_at >= rest:
            ops.append(Expire(q))
        else:
            resting.setdefault(q.network, set()).add(q.ip)
    handed: set[tuple[str, str]] = set()
    exhausted: set[str] = set()
    for t in sorted(tasks.values(), key=lambda t: (t.service, t.slot, t.created_at, t.id)):
        if not _wants(t):
            continue
        for net_name in networks_of(t, services):
            net = networks.get(net_name)
            if net is None or (net_name, t.id) in held:
                continue
            # a slot's address passes to its new task once the old one is no longer wanted
            heir = None
            for a in by_slot.get((net_name, t.service, t.slot), []):
                owner = tasks.get(a.task_id)
                if (net_name, a.ip) not in handed and (owner is None or not _wants(owner)):
                    heir = a
                    break
            if heir is not None:
                handed.add((net_name, heir.ip))
                new = Allocation(net_name, heir.ip, t.id, t.service, t.slot, heir.mod_revision)
                held[net_name, t.id] = new
                ops.append(Transfer(new))
                continue
            ip = None if net_name in exhausted else _free_ip(net, by_net[net_name], resting.get(net_name, set()))
            if ip is None:
                exhausted.add(net_name)
                ops.append(Exhausted(t, net_name))
                continue
            new = Allocation(net_name, ip, t.id, t.service, t.slot)
            by_net[net_name][ip] = new
            held[net_name, t.id] = new
            handed.add((net_name, ip))
            ops.append(Assign(new))
    # every node's own address on the ingress network: the source of the mesh's SNAT
    ingress = networks.get(INGRESS)
    wanted_nodes = set(nodes) if ingress is not None and ingress.ingress and meshed(services) else set()
    for node in sorted(wanted_nodes):
        node_owner = NODE_PREFIX + node
        if (INGRESS, node_owner) in held or INGRESS in exhausted or ingress is None:
            continue
        ip = _free_ip(ingress, by_net[INGRESS], resting.get(INGRESS, set()))
        if ip is None:
            exhausted.add(INGRESS)
            continue
        new = Allocation(INGRESS, ip, node_owner, "", 0)
        by_net[INGRESS][ip] = new
        held[INGRESS, node_owner] = new
        handed.add((INGRESS, ip))
        ops.append(Assign(new))
    # a virtual IP per service and network: the service's name answers with it, and every host
    # DNATs it to the service's ready tasks (agent/runtime/network/vip.py); none in dnsrr mode,
    # none on the ingress network (the mesh DNATs to the tasks themselves)
    for name, svc in sorted(services.items()):
        if svc.spec.endpoint_mode == "dnsrr":
            continue
        for att in svc.spec.networks:
            net = networks.get(att.name)
            vip = vip_owner(name)
            if net is None or (att.name, vip) in held or att.name in exhausted:
                continue
            ip = _free_ip(net, by_net[att.name], resting.get(att.name, set()), top=True)
            if ip is None:
                continue  # no VIP: the name answers with the tasks' addresses instead
            new = Allocation(att.name, ip, vip, name, 0)
            by_net[att.name][ip] = new
            held[att.name, vip] = new
            handed.add((att.name, ip))
            ops.append(Assign(new))
    for net_map in by_net.values():
        for a in net_map.values():
            if a.mod_revision and (a.network, a.ip) not in handed and _slot_gone(a, tasks, services, wanted_nodes):
                ops.append(Release(a, now))
    return ops


VIP_PREFIX = "vip:"


def vip_owner(service: str) -> str:
    """The owner an address allocation records for a service's virtual IP."""
    return VIP_PREFIX + service


def _slot_gone(a: Allocation, tasks: Mapping[str, Task], services: Mapping[str, Service],
               nodes: set[str] | frozenset[str] = frozenset()) -> bool:
    """The address is free again: its task is removed, or ended and its slot (or the service's use
    of the network) is gone, so no successor will come for it. A VIP: its service left the network
    (or went to dnsrr). A node's: the node is gone, or no service publishes through the mesh."""
    if a.task_id.startswith(NODE_PREFIX):
        return a.task_id[len(NODE_PREFIX):] not in nodes
    if a.task_id.startswith(VIP_PREFIX):
        svc = services.get(a.task_id[len(VIP_PREFIX):])
        return (svc is None or svc.spec.endpoint_mode == "dnsrr"
                or all(n.name != a.network for n in svc.spec.networks))
    owner = tasks.get(a.task_id)
    if owner is None:
        return True
    if _wants(owner):
        return False
    svc = services.get(a.service)
    return svc is None or a.slot > svc.spec.replicas or a.network not in attached(svc.spec)


def _free_ip(net: Network, used: Mapping[str, Allocation], resting: set[str], top: bool = False) -> str | None:
    """The lowest free address (tasks), or the highest (VIPs: so the two stay apart)."""
    subnet = net.network
    first = int(subnet.network_address) + 2  # +1 is the reserved gateway
    last = int(subnet.broadcast_address) - 1
    for n in (range(last, first - 1, -1) if top else range(first, last + 1)):
        ip = str(ipaddress.IPv4Address(n))
        if ip not in used and ip not in resting:
            return ip
    return None


def full_networks(ops: Iterable[AddressOp]) -> dict[str, str]:
    """service -> why its tasks cannot be placed now (for reconcile: they stay pending)."""
    out: dict[str, str] = {}
    for op in ops:
        if isinstance(op, Exhausted):
            out.setdefault(op.task.service, op.reason.removeprefix("pending: "))
    return out


def pending_again(op: Exhausted, now: float) -> Task | None:
    """The task written back to pending with the reason, or None when it already says so."""
    t = op.task
    if t.node is None and t.state is TaskState.PENDING and t.error == op.reason:
        return None
    return t.with_(node=None, state=TaskState.PENDING, state_at=now, error=op.reason)


# --- what every host programs -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EndpointView:
    network: str
    ip: str
    mac: str
    task_id: str
    task: str  # service.slot
    service: str
    node: str
    vtep: str  # the node's underlay address
    names: tuple[str, ...] = ()  # the service's names on this network: full, short (in its stack), aliases
    ready: bool = False  # running and not unhealthy: DNS answers with it
    container: str = ""  # the task's container name

STACK_LABEL = "com.docker.stack.namespace"


def service_names(svc: Service | None, network: str, service: str) -> tuple[str, ...]:
    names = [service]
    if svc is not None:
        stack = dict(svc.spec.labels).get(STACK_LABEL, "")
        if stack and service.startswith(stack + "_"):
            names.append(service[len(stack) + 1:])
        for att in svc.spec.networks:
            if att.name == network:
                names.extend(att.aliases)
    return tuple(dict.fromkeys(names))


def moved_endpoints(migrations: Iterable[Migration]) -> dict[str, str]:
    """Task id -> the node its addresses are on, for live moves past the switch (scheduler/migrate.py):
    the target's, though the task is still the source's until the move finishes."""
    return {m.task_id: m.target for m in migrations if m.phase == "switched"}


def endpoints(networks: Mapping[str, Network], allocations: Iterable[Allocation], tasks: Mapping[str, Task],
              node_addresses: Mapping[str, str], services: Mapping[str, Service] | None = None,
              moved: Mapping[str, str] | None = None) -> list[EndpointView]:
    """The endpoints hosts must reach: each allocation whose task has a node (and that node's VTEP);
    `moved` (moved_endpoints) overrides the node of tasks being moved live."""
    out = []
    for a in allocations:
        if a.task_id.startswith(NODE_PREFIX) and a.network in networks:  # a node's own ingress address
            node = a.task_id[len(NODE_PREFIX):]
            out.append(EndpointView(a.network, a.ip, mac_for(a.ip), a.task_id, "", "", node,
                                    vtep_of(node_addresses.get(node, ""))))
            continue
        t = tasks.get(a.task_id)
        if a.network not in networks or t is None or t.node is None or not _wants(t):
            continue
        ready = t.state is TaskState.RUNNING and t.healthy is not False
        names = service_names((services or {}).get(t.service), a.network, t.service)
        node = (moved or {}).get(t.id, t.node)
        out.append(EndpointView(a.network, a.ip, mac_for(a.ip), t.id, t.name, t.service, node,
                                vtep_of(node_addresses.get(node, "")), names, ready, f"{t.name}.{t.id}"))
    out.sort(key=lambda e: (e.network, ipaddress.IPv4Address(e.ip)))
    return out


@dataclass(frozen=True, slots=True)
class VipView:
    network: str
    service: str
    ip: str
    names: tuple[str, ...]


def vips(networks: Mapping[str, Network], allocations: Iterable[Allocation],
         services: Mapping[str, Service]) -> list[VipView]:
    out = []
    for a in allocations:
        if a.network in networks and a.task_id.startswith(VIP_PREFIX):
            svc = services.get(a.service)
            if svc is not None:
                out.append(VipView(a.network, a.service, a.ip, service_names(svc, a.network, a.service)))
    out.sort(key=lambda v: (v.network, v.service))
    return out


@dataclass(frozen=True, slots=True)
class MeshPort:
    """A port the routing mesh publishes on every node, for a service."""
    service: str
    protocol: str
    published: int
    target: int


def mesh_ports(services: Mapping[str, Service]) -> list[MeshPort]:
    return sorted((MeshPort(name, p.protocol, p.published, p.target) for name, svc in services.items()
                   for p in svc.spec.mesh_ports if p.published is not None),
                  key=lambda m: (m.published, m.protocol, m.service))


def vtep_of(address: str) -> str:
    """The host part of a node's agent address ("10.0.0.11:7070" -> "10.0.0.11")."""
    host = address.removeprefix("tcp://").rsplit(":", 1)[0] if address else ""
    return host.strip("[]")
