"""Placement as tables of {nodes, request, want}: filters, scorers, the pipeline and its reasons."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.model import (
    NANO,
    Availability,
    Node,
    NodeStatus,
    PlacementSpec,
    PortSpec,
    Resources,
    ResourceSpec,
    ServiceSpec,
)
from scheduler.placement import (
    ClusterState,
    NodeState,
    Pending,
    Pipeline,
    Placed,
    PlacementRequest,
    filters,
    scorers,
)

MiB = 1 << 20
GiB = 1 << 30


@dataclass
class N:
    """A node in a table, with what already runs on it."""

    name: str
    cpus: float = 4
    mem: int = 8 * GiB
    labels: dict[str, str] = field(default_factory=dict)
    down: bool = False
    drained: bool = False
    pressure: str = ""  # the agent's heartbeat: why it takes no new work
    role: str = "worker"
    images: frozenset[str] = frozenset()
    running: list[tuple[str, float, int, tuple[int, ...]]] = field(default_factory=list)  # service, cpus, mem, ports

    def node(self) -> Node:
        return Node(self.name, labels=self.labels, capacity=Resources(int(self.cpus * NANO), self.mem),
                    status=NodeStatus.DOWN if self.down else NodeStatus.READY,
                    availability=Availability.DRAIN if self.drained else Availability.ACTIVE,
                    role=self.role, images=self.images, pressure=self.pressure)


def spec(name: str = "web", cpus: float = 0, mem: int = 0, ports: tuple[int | tuple[int, str], ...] = (),
         constraints: tuple[str, ...] = (), spread: tuple[str, ...] = (), max_per_node: int = 0,
         strategy: str = "spread", image: str = "nginx") -> ServiceSpec:
    port_specs = tuple(PortSpec(target=p, published=p) if isinstance(p, int) else
                       PortSpec(target=p[0], published=p[0], protocol=p[1]) for p in ports)
    return ServiceSpec(name=name, image=image, ports=port_specs, strategy=strategy,
                       resources=ResourceSpec(reservations=Resources(int(cpus * NANO), mem)),
                       placement=PlacementSpec(constraints=constraints, spread=spread,
                                               max_replicas_per_node=max_per_node))


def cluster(nodes: list[N], seed: int = 0) -> ClusterState:
    c = ClusterState([n.node() for n in nodes], [], lambda t: None, random.Random(seed))
    for n in nodes:
        for service, cpus, mem, ports in n.running:
            c.assign(PlacementRequest(service=service, reservations=Resources(int(cpus * NANO), mem),
                                      host_ports=tuple((p, "tcp") for p in ports)), n.name)
    return c


def place(nodes: list[N], s: ServiceSpec, seed: int = 0) -> Placed | Pending:
    c = cluster(nodes, seed)
    return Pipeline().place(c, c.request(s))


# Each row: name, nodes, request, want (the set of acceptable nodes, or the exact pending message).
TABLE: list[tuple[str, list[N], ServiceSpec, set[str] | str]] = [
    ("the only ready and active node", [N("n1", down=True), N("n2", drained=True), N("n3")], spec(), {"n3"}),
    ("memory", [N("n1", mem=256 * MiB), N("n2", mem=1 * GiB)], spec(mem=512 * MiB), {"n2"}),
    ("memory already held", [N("n1", mem=1 * GiB, running=[("db", 0, 768 * MiB, ())]), N("n2", mem=1 * GiB)],
     spec(mem=512 * MiB), {"n2"}),
    ("cpu", [N("n1", cpus=1, running=[("db", 0.75, 0, ())]), N("n2", cpus=1)], spec(cpus=0.5), {"n2"}),
    ("host port", [N("n1", running=[("other", 0, 0, (80,))]), N("n2")], spec(ports=(80,)), {"n2"}),
    ("udp and tcp ports differ", [N("n1", running=[("dns", 0, 0, (53,))])], spec(ports=((53, "udp"),)), {"n1"}),
    ("label constraint", [N("n1", labels={"zone": "b"}), N("n2", labels={"zone": "a"})],
     spec(constraints=("node.labels.zone == a",)), {"n2"}),
    ("constraint values ignore case", [N("n1", labels={"zone": "A"})], spec(constraints=("node.labels.zone == a",)),
     {"n1"}),
    ("hostname !=", [N("h1"), N("h2")], spec(constraints=("node.hostname != h1",)), {"h2"}),
    ("role", [N("w1"), N("m1", role="manager")], spec(constraints=("node.role == manager",)), {"m1"}),
    ("missing label never equals", [N("n1"), N("n2", labels={"ssd": "true"})],
     spec(constraints=("node.labels.ssd == true",)), {"n2"}),
    ("missing label is !=", [N("n1"), N("n2", labels={"ssd": "true"})],
     spec(constraints=("node.labels.ssd != true",)), {"n1"}),
    ("max replicas per node", [N("n1", running=[("web", 0, 0, ())] * 2), N("n2", running=[("web", 0, 0, ())])],
     spec(max_per_node=2), {"n2"}),
    ("spread across nodes", [N("n1", running=[("web", 0, 0, ())]), N("n2")], spec(), {"n2"}),
    ("spread ignores other services", [N("n1", running=[("db", 0, 0, ())] * 3), N("n2", running=[("web", 0, 0, ())])],
     spec(), {"n1"}),
    ("spread across a label first", [
        N("a1", labels={"zone": "a"}), N("a2", labels={"zone": "a"}, running=[("web", 0, 0, ())]),
        N("b1", labels={"zone": "b"}, running=[("web", 0, 0, ())])],
     spec(spread=("node.labels.zone",)), {"a1"}),
    ("least allocated by default", [N("n1", running=[("db", 2, 4 * GiB, ())]), N("n2", running=[("db", 1, GiB, ())])],
     spec(name="api"), {"n2"}),
    ("binpack fills the fuller node", [N("n1", running=[("db", 2, 4 * GiB, ())]), N("n2", running=[("db", 1, GiB, ())])],
     spec(name="api", strategy="binpack", cpus=0.5), {"n1"}),
    ("image locality breaks a tie", [N("n1"), N("n2", images=frozenset({"nginx"})), N("n3")], spec(), {"n2"}),
    # Pending: every node's reason, counted, most common first.
    ("aggregated reasons", [
        N("n1", mem=256 * MiB), N("n2", mem=256 * MiB), N("n3", mem=256 * MiB),
        N("n4", running=[("lb", 0, 0, (80,))]), N("n5", running=[("lb", 0, 0, (80,))])],
     spec(mem=512 * MiB, ports=(80,)), "pending: 3 nodes lack 512 MiB memory, 2 nodes have port 80 taken"),
    ("singular", [N("n1", down=True)], spec(), "pending: 1 node is down"),
    ("down, drained and constraint", [N("n1", down=True), N("n2", drained=True), N("n3", drained=True),
                                      N("n4", labels={"zone": "b"})],
     spec(constraints=("node.labels.zone == a",)),
     "pending: 2 nodes are drained, 1 node is down, 1 node does not match node.labels.zone == a"),
    ("cpu reason", [N("n1", cpus=1), N("n2", cpus=1)], spec(cpus=1.5), "pending: 2 nodes lack 1.5 CPUs"),
    ("max replicas reason", [N("n1", running=[("web", 0, 0, ())])], spec(max_per_node=1),
     "pending: 1 node already runs 1 task of web (max_replicas_per_node)"),
    ("udp port reason", [N("n1", running=[("dns", 0, 0, ())])], spec(ports=((53, "udp"),), name="dns2"), {"n1"}),
    ("no nodes", [], spec(), "pending: no nodes in the cluster"),
    ("a full disk is left out", [N("n1", pressure="disk almost full: /var/lib/dockyard has 1.0 GiB free"), N("n2")],
     spec(), {"n2"}),
    ("full disks only", [N("n1", pressure="disk almost full"), N("n2", pressure="disk almost full"), N("n3", down=True)],
     spec(), "pending: 2 nodes are almost out of disk, 1 node is down"),
]


@pytest.mark.parametrize(("name", "nodes", "request_", "want"), TABLE, ids=[row[0] for row in TABLE])
def test_placement_table(name: str, nodes: list[N], request_: ServiceSpec, want: set[str] | str) -> None:
    for seed in range(5):  # the walk order is random: the answer must not depend on it
        got = place(nodes, request_, seed)
        if isinstance(want, str):
            assert isinstance(got, Pending), f"{name}: placed on {got}"
            assert got.message == want
        else:
            assert isinstance(got, Placed), f"{name}: {got}"
            assert got.node in want, f"{name}: chose {got.node} ({got.why})"


FILTERS = [
    # filter, node, request, reason code or None
    (filters.node_ready, N("n", down=True), spec(), "down"),
    (filters.node_ready, N("n"), spec(), None),
    (filters.node_active, N("n", drained=True), spec(), "drained"),
    (filters.node_has_room, N("n", pressure="disk almost full"), spec(), "disk"),
    (filters.node_has_room, N("n"), spec(), None),
    (filters.resources, N("n", mem=GiB), spec(mem=2 * GiB), "memory"),
    (filters.resources, N("n", cpus=1), spec(cpus=2), "cpu"),
    (filters.resources, N("n", cpus=1, mem=GiB), spec(cpus=1, mem=GiB), None),  # exactly full fits
    (filters.host_ports, N("n", running=[("x", 0, 0, (8080,))]), spec(ports=(8080,)), "port"),
    (filters.constraints, N("n", labels={"zone": "a"}), spec(constraints=("node.labels.zone != a",)), "constraint"),
    (filters.max_replicas_per_node, N("n", running=[("web", 0, 0, ())]), spec(max_per_node=1), "max_replicas"),
    (filters.max_replicas_per_node, N("n", running=[("web", 0, 0, ())]), spec(max_per_node=0), None),
]


@pytest.mark.parametrize(("f", "node", "request_", "want"), FILTERS)
def test_filter_table(f: filters.Filter, node: N, request_: ServiceSpec, want: str | None) -> None:
    c = cluster([node])
    reason = f(c.nodes[node.name], c.request(request_))
    assert (reason.code if reason else None) == want


def test_large_cluster_scores_only_about_log2_nodes() -> None:
    nodes = [N(f"n{i}") for i in range(5000)]
    got = place(nodes, spec(mem=MiB))
    assert isinstance(got, Placed)
    assert got.considered == math.ceil(math.log2(5000)) == 13


def test_large_cluster_pending_counts_every_node() -> None:
    nodes = [N(f"n{i}", mem=GiB) for i in range(4000)] + [N(f"d{i}", down=True) for i in range(1000)]
    got = place(nodes, spec(mem=2 * GiB))
    assert isinstance(got, Pending)
    assert got.message == "pending: 4000 nodes lack 2 GiB memory, 1000 nodes are down"
    assert sum(n for n, _ in got.reasons) == 5000


def test_the_walk_spreads_a_service_in_a_large_cluster() -> None:
    c = cluster([N(f"n{i}") for i in range(1000)])
    p = Pipeline()
    req = c.request(spec())
    chosen = [p.place(c, req) for _ in range(1000)]
    assert all(isinstance(x, Placed) for x in chosen)
    assert max(ns.service_tasks.get("web", 0) for ns in c.nodes.values()) <= 2


def test_small_cluster_spread_is_exact() -> None:
    c = cluster([N("n1"), N("n2"), N("n3")])
    p = Pipeline()
    req = c.request(spec(mem=MiB))
    for _ in range(6):
        assert isinstance(p.place(c, req), Placed)
    assert sorted(ns.service_tasks["web"] for ns in c.nodes.values()) == [2, 2, 2]


def test_placed_records_why() -> None:
    got = place([N("n1", images=frozenset({"nginx"}))], spec())
    assert isinstance(got, Placed)
    why = dict(got.why)
    assert set(why) == {"spread_label", "spread_nodes", "least_allocated", "image_locality"}
    assert why["image_locality"] == 100.0 and 0 <= got.score <= 100


@given(cpu_used=st.integers(0, 8 * NANO), mem_used=st.integers(0, 16 * GiB), cpu_want=st.integers(0, 8 * NANO),
       mem_want=st.integers(0, 16 * GiB), count=st.integers(0, 50), strategy=st.sampled_from(["spread", "binpack"]))
def test_scores_are_bounded(cpu_used: int, mem_used: int, cpu_want: int, mem_want: int, count: int,
                            strategy: str) -> None:
    ns = NodeState(Node("n", capacity=Resources(8 * NANO, 16 * GiB)))
    ns.cpu_used, ns.mem_used = cpu_used, mem_used
    ns.service_tasks["web"] = count
    req = PlacementRequest(service="web", reservations=Resources(cpu_want, mem_want), strategy=strategy,
                           spread=("node.labels.zone",), spread_counts={"node.labels.zone": {"": count, "a": 0}},
                           spread_values={"node.labels.zone": ("", "a")})
    for f in (scorers.least_allocated, scorers.most_allocated, scorers.service_spread, scorers.label_spread,
              scorers.image_locality):
        assert 0.0 <= f(ns, req) <= 100.0
    total, _ = Pipeline().explain(ns, req)
    assert 0.0 <= total <= 100.0


def test_place_many_spreads_like_one_by_one() -> None:
    c = cluster([N(f"n{i}") for i in range(1000)])
    got = Pipeline().place_many(c, c.request(spec(mem=MiB)), 1000)
    assert all(isinstance(x, Placed) for x in got)
    assert max(ns.service_tasks.get("web", 0) for ns in c.nodes.values()) == 1
    assert all(x.considered >= 10 for x in got if isinstance(x, Placed))  # each is a best of >= log2(N)


def test_place_many_binpacks_and_then_says_why() -> None:
    nodes = [N(f"n{i}", cpus=2, running=[("db", 1, 0, ())] if i == 3 else []) for i in range(50)]
    c = cluster(nodes)
    got = Pipeline().place_many(c, c.request(spec(cpus=0.5, strategy="binpack")), 6)
    assert [x.node for x in got if isinstance(x, Placed)][:2] == ["n3", "n3"]  # the fullest node first
    c = cluster([N("a", cpus=1), N("b", cpus=1)])
    got = Pipeline().place_many(c, c.request(spec(cpus=0.5)), 6)
    assert sum(isinstance(x, Placed) for x in got) == 4
    assert [x.message for x in got if isinstance(x, Pending)] == ["pending: 2 nodes lack 0.5 CPUs"] * 2


@given(n_nodes=st.integers(1, 80), count=st.integers(1, 60), cpus=st.sampled_from([0, 0.25, 1]),
       port=st.booleans(), max_per_node=st.integers(0, 3), strategy=st.sampled_from(["spread", "binpack"]),
       seed=st.integers(0, 50))
def test_place_many_never_overcommits(n_nodes: int, count: int, cpus: float, port: bool, max_per_node: int,
                                      strategy: str, seed: int) -> None:
    c = cluster([N(f"n{i}", cpus=2) for i in range(n_nodes)], seed)
    s = spec(cpus=cpus, ports=(80,) if port else (), max_per_node=max_per_node, strategy=strategy)
    got = Pipeline().place_many(c, c.request(s), count)
    placed = sum(isinstance(x, Placed) for x in got)
    for ns in c.nodes.values():
        assert ns.cpu_used <= ns.cpu_cap
        assert ns.ports.get((80, "tcp"), 0) <= 1
        assert not max_per_node or ns.service_tasks.get("web", 0) <= max_per_node
    # it places as many as fit: everything, or up to the capacity of the cluster
    per_node = min(x for x in (int(2 / cpus) if cpus else count, 1 if port else count, max_per_node or count))
    assert placed == min(count, per_node * n_nodes)


@given(ops=st.lists(st.tuples(st.sampled_from(["place", "stop", "finish", "down", "up", "add"]),
                              st.integers(0, 5), st.integers(0, 30)), max_size=60),
       seed=st.integers(0, 20))
def test_kept_cluster_state_matches_a_rebuild(ops: list[tuple[str, int, int]], seed: int) -> None:
    """A leader keeps one ClusterState and feeds it changes; it must equal one built from scratch."""
    from scheduler.model import DesiredState, Task, TaskState

    specs = {"web": spec("web", cpus=0.5, mem=256 * MiB, ports=(80,), spread=("node.labels.zone",)),
             "db": spec("db", cpus=1, mem=GiB)}
    nodes = {f"n{i}": N(f"n{i}", labels={"zone": "ab"[i % 2]}).node() for i in range(4)}
    tasks: dict[str, Task] = {}
    kept = ClusterState(nodes.values(), [], lambda t: specs[t.service], random.Random(seed))
    p = Pipeline()
    for i, (kind, k, j) in enumerate(ops):
        live = sorted(tasks)
        if kind == "place":
            name = ["web", "db"][k % 2]
            got = p.place(kept, kept.request(specs[name]))
            if isinstance(got, Placed):
                tasks[f"t{i}"] = Task(name, i, f"t{i}", "v", node=got.node, state=TaskState.ASSIGNED)
        elif kind in ("stop", "finish") and live:
            old = tasks[live[j % len(live)]]
            new = (old.with_(desired_state=DesiredState.SHUTDOWN, state=TaskState.SHUTDOWN) if kind == "stop"
                   else old.with_(state=TaskState.FAILED))
            kept.track(old, new)
            tasks[old.id] = new
        elif kind in ("down", "up"):
            name = f"n{k % 4}"
            nodes[name] = replace(nodes[name], status=NodeStatus.DOWN if kind == "down" else NodeStatus.READY)
            kept.set_node(nodes[name])
        elif kind == "add" and f"x{k}" not in nodes:
            nodes[f"x{k}"] = N(f"x{k}", labels={"zone": "c"}).node()
            kept.set_node(nodes[f"x{k}"])
    fresh = ClusterState(nodes.values(), tasks.values(), lambda t: specs[t.service], random.Random(0))
    for name in nodes:
        a, b = kept.nodes[name], fresh.nodes[name]
        assert (a.cpu_used, a.mem_used, a.ports, a.service_tasks, a.ready) == \
               (b.cpu_used, b.mem_used, b.ports, b.service_tasks, b.ready), name
    ra, rb = kept.request(specs["web"]), fresh.request(specs["web"])
    assert {k: v for k, v in ra.spread_counts["node.labels.zone"].items() if v} == \
           {k: v for k, v in rb.spread_counts["node.labels.zone"].items() if v}
    assert ra.spread_bounds == rb.spread_bounds
