"""What placement looks at: a request built once per service, and each node's usage as tasks land.

NodeState is mutable on purpose: one planning pass places thousands of tasks and each placement
must see the ones before it. It is built from (nodes, tasks) and thrown away after the pass.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from scheduler.constraints import Constraint, attribute_getter, node_attribute, parse_all
from scheduler.model import Availability, Node, NodeStatus, Resources, ServiceSpec, Task

NO_RESOURCES = Resources()
SpecLookup = Callable[[Task], ServiceSpec | None]


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one node cannot take a task, phrased to be counted: '3 nodes lack 512 MiB memory'."""

    code: str
    plural: str  # "lack 512 MiB memory"
    singular: str  # "lacks 512 MiB memory"


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    service: str
    image: str = ""
    reservations: Resources = NO_RESOURCES
    host_ports: tuple[tuple[int, str], ...] = ()
    constraints: tuple[Constraint, ...] = ()
    spread: tuple[str, ...] = ()  # label keys to spread across, e.g. node.labels.zone
    max_replicas_per_node: int = 0
    strategy: str = "spread"
    # key -> label value -> tasks of this service on nodes with that value. Owned and kept
    # current by ClusterState; empty for requests built by hand without one.
    spread_counts: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    spread_values: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    # key -> (lowest, highest) count over spread_values: kept with the counts, so a scorer reads it
    # instead of recomputing it for every node it looks at.
    spread_bounds: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)

    def recount(self, key: str) -> None:
        counts = self.spread_counts.get(key, {})
        per = [counts.get(v, 0) for v in self.spread_values.get(key, ())] or [0]
        self.spread_bounds[key] = (min(per), max(per))

    @classmethod
    def for_spec(cls, spec: ServiceSpec) -> PlacementRequest:
        return cls(
            service=spec.name,
            image=spec.image,
            reservations=spec.resources.reservations,
            host_ports=spec.host_ports,
            constraints=parse_all(spec.placement.constraints),
            spread=spec.placement.spread,
            max_replicas_per_node=spec.placement.max_replicas_per_node,
            strategy=spec.strategy,
        )


class NodeState:
    # The node's fixed facts are copied into slots: filters and scorers run ~30 times per
    # placement, and one attribute load is measurably cheaper than node.capacity.nano_cpus.
    __slots__ = ("active", "cpu_cap", "cpu_used", "images", "mem_cap", "mem_used", "node", "ports", "pressure",
                 "ready", "service_tasks", "tasks")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ready = node.status is NodeStatus.READY
        self.active = node.availability is Availability.ACTIVE
        self.pressure = node.pressure
        self.cpu_cap = node.capacity.nano_cpus
        self.mem_cap = node.capacity.memory_bytes
        self.images = node.images
        self.cpu_used = 0
        self.mem_used = 0
        self.ports: dict[tuple[int, str], int] = {}  # a count: a broken past may have doubled one
        self.service_tasks: dict[str, int] = {}
        self.tasks = 0

    def add(self, service: str, reservations: Resources, ports: Iterable[tuple[int, str]]) -> None:
        self.cpu_used += reservations.nano_cpus
        self.mem_used += reservations.memory_bytes
        for p in ports:
            self.ports[p] = self.ports.get(p, 0) + 1
        self.service_tasks[service] = self.service_tasks.get(service, 0) + 1
        self.tasks += 1

    def remove(self, service: str, reservations: Resources, ports: Iterable[tuple[int, str]]) -> None:
        self.cpu_used -= reservations.nano_cpus
        self.mem_used -= reservations.memory_bytes
        for p in ports:
            left = self.ports.get(p, 0) - 1
            if left > 0:
                self.ports[p] = left
            else:
                self.ports.pop(p, None)
        left = self.service_tasks.get(service, 0) - 1
        if left > 0:
            self.service_tasks[service] = left
        else:
            self.service_tasks.pop(service, None)
        self.tasks -= 1

    @property
    def allocated(self) -> Resources:
        return Resources(self.cpu_used, self.mem_used)


def holds_resources(task: Task) -> bool:
    """A task counts against its node while it is wanted there or may still be running there."""
    return task.node is not None and (task.live or task.state.active)


class ClusterState:
    """Every node's usage, plus a walk order for the limited scan.

    Built from (nodes, tasks) for one planning pass, or kept by a long-running leader and fed
    what changes (track() for each task written or reported, set_node()/remove_node() for nodes),
    so a pass over the few services a node failure touches does not rebuild 100,000 tasks.
    """

    def __init__(self, nodes: Iterable[Node], tasks: Iterable[Task], spec_of: SpecLookup,
                 rng: random.Random) -> None:
        """`spec_of(task)` gives the spec a task was started with (its reservations and ports)."""
        self.nodes: dict[str, NodeState] = {n.name: NodeState(n) for n in nodes}
        self.spec_of = spec_of
        self._requests: dict[str, tuple[ServiceSpec, PlacementRequest]] = {}
        self._labels: dict[str, tuple[list[tuple[NodeState, str]], tuple[str, ...]]] = {}
        for t in tasks:
            if not holds_resources(t):
                continue
            ns = self.nodes.get(t.node or "")
            spec = spec_of(t)
            if ns is None:
                continue
            if spec is None:
                ns.add(t.service, Resources(), ())
            else:
                ns.add(t.service, spec.resources.reservations, spec.host_ports)
        # One shuffle per pass, then a rotating cursor: each placement looks at the next few nodes,
        # as Nomad does, instead of shuffling all N nodes for every task.
        self.rng = rng
        self.walk: list[NodeState] = list(self.nodes.values())
        rng.shuffle(self.walk)
        self.order: list[NodeState] = self.walk
        self.cursor = 0
        # Set by Pipeline.prepare: order then holds only nodes that pass the node filters, and
        # excluded counts why the others were left out (for the pending message).
        self.prepared = False
        self.excluded: Counter[Reason] = Counter()

    def request(self, spec: ServiceSpec) -> PlacementRequest:
        """The request for a service's tasks, cached for the pass, wired to live spread counts."""
        cached = self._requests.get(spec.name)
        if cached is not None and (cached[0] is spec or cached[0] == spec):
            return cached[1]
        base = PlacementRequest.for_spec(spec)
        counts: dict[str, dict[str, int]] = {}
        values: dict[str, tuple[str, ...]] = {}
        for key in base.spread:
            by_node, seen = self._label_index(key)
            per: dict[str, int] = {}
            for ns, v in by_node:
                c = ns.service_tasks.get(spec.name, 0)
                if c:
                    per[v] = per.get(v, 0) + c
            counts[key] = per
            values[key] = seen
        req = PlacementRequest(
            service=base.service, image=base.image, reservations=base.reservations,
            host_ports=base.host_ports, constraints=base.constraints, spread=base.spread,
            max_replicas_per_node=base.max_replicas_per_node, strategy=base.strategy,
            spread_counts=counts, spread_values=values,
        )
        for key in req.spread:
            req.recount(key)
        self._requests[spec.name] = (spec, req)
        return req

    def _label_index(self, key: str) -> tuple[list[tuple[NodeState, str]], tuple[str, ...]]:
        """Each node's value of a spread key, and the values schedulable nodes have; once per pass."""
        cached = self._labels.get(key)
        if cached is None:
            get = attribute_getter(key)
            by_node = [(ns, get(ns.node) or "") for ns in self.nodes.values()]
            seen = tuple(sorted({v for ns, v in by_node if ns.ready and ns.active}))
            cached = self._labels[key] = (by_node, seen)
        return cached

    def assign(self, req: PlacementRequest, node: str) -> None:
        ns = self.nodes[node]
        ns.add(req.service, req.reservations, req.host_ports)
        for key in req.spread:
            v = node_attribute(ns.node, key) or ""
            per = req.spread_counts.setdefault(key, {})
            per[v] = per.get(v, 0) + 1
            req.recount(key)

    def release(self, task: Task) -> None:
        """Give back what a task held, when the plan stops it or moves it away."""
        ns = self.nodes.get(task.node or "")
        if ns is None or not holds_resources(task) or task.service not in ns.service_tasks:
            return
        spec = self.spec_of(task)
        if spec is None:
            ns.remove(task.service, Resources(), ())
            return
        ns.remove(task.service, spec.resources.reservations, spec.host_ports)
        cached = self._requests.get(task.service)
        if cached is not None:
            req = cached[1]
            for key in req.spread:
                v = node_attribute(ns.node, key) or ""
                per = req.spread_counts.get(key, {})
                if per.get(v, 0) > 0:
                    per[v] -= 1
                    req.recount(key)

    def hold(self, task: Task) -> None:
        """Count a task against its node (the counterpart of release, for tasks placed elsewhere)."""
        ns = self.nodes.get(task.node or "")
        if ns is None or not holds_resources(task):
            return
        spec = self.spec_of(task)
        if spec is None:
            ns.add(task.service, Resources(), ())
            return
        ns.add(task.service, spec.resources.reservations, spec.host_ports)
        cached = self._requests.get(task.service)
        if cached is not None:
            req = cached[1]
            for key in req.spread:
                v = node_attribute(ns.node, key) or ""
                per = req.spread_counts.setdefault(key, {})
                per[v] = per.get(v, 0) + 1
                req.recount(key)

    def track(self, old: Task | None, new: Task | None) -> None:
        """A task changed in etcd (a plan written, an agent's report, a watch event): move its usage."""
        if old is not None:
            self.release(old)
        if new is not None:
            self.hold(new)

    def set_node(self, node: Node) -> None:
        """A node joined, changed (labels, capacity) or went down/up; what its tasks hold stays."""
        ns = self.nodes.get(node.name)
        if ns is None:
            ns = self.nodes[node.name] = NodeState(node)
            self.walk.insert(self.rng.randrange(len(self.walk) + 1), ns)
        else:
            ns.node = node
            ns.ready = node.status is NodeStatus.READY
            ns.active = node.availability is Availability.ACTIVE
            ns.cpu_cap, ns.mem_cap, ns.images = node.capacity.nano_cpus, node.capacity.memory_bytes, node.images
        self._changed()

    def remove_node(self, name: str) -> None:
        ns = self.nodes.pop(name, None)
        if ns is not None:
            self.walk.remove(ns)
            self._changed()

    def _changed(self) -> None:
        # The walk order, label values and spread counts derive from the nodes: recompute on use.
        self.prepared = False
        self.order = self.walk
        self._labels.clear()
        self._requests.clear()
