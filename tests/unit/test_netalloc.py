"""Cluster networks, the pure part (scheduler/network.py): creating a network, and the address
decisions: assign, hand a slot's address to its next task, free it when the slot is gone, quarantine,
and an exhausted pool keeping tasks pending (with reconcile told so)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from scheduler import network as netmod
from scheduler.model import (
    NANO,
    DesiredState,
    NetworkAttachment,
    Node,
    Resources,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)
from scheduler.network import (
    Allocation,
    Assign,
    Exhausted,
    Expire,
    Network,
    NetworkError,
    Quarantined,
    Release,
    Transfer,
    new_network,
    plan_addresses,
)
from scheduler.reconcile import Place, apply, reconcile

# --- create ------------------------------------------------------------------------------------


def test_defaults_pick_a_free_subnet_and_the_lowest_free_vni() -> None:
    a = new_network("a", [])
    assert (a.subnet, a.vni, a.mtu, a.gateway) == ("10.240.0.0/24", 4096, 1450, "10.240.0.1")
    b = new_network("b", [a])
    assert (b.subnet, b.vni) == ("10.240.1.0/24", 4097)
    c = new_network("c", [a, replace(b, vni=4100)], subnet="192.168.7.0/24", mtu=1400)
    assert (c.subnet, c.vni, c.mtu) == ("192.168.7.0/24", 4097, 1400)
    assert Network.decode(c.encode(), 7) == replace(c, mod_revision=7)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "a"}, "network a already exists"),
    ({"name": "bad name"}, "network name 'bad name'"),
    ({"name": "x", "subnet": "10.240.0.128/25"}, "overlaps 10.240.0.0/24 of network a"),
    ({"name": "x", "subnet": "10.240.0.0/8"}, "has host bits set"),
    ({"name": "x", "subnet": "10.1.2.300/24"}, "subnet '10.1.2.300/24'"),
    ({"name": "x", "subnet": "10.9.9.0/30"}, "too small"),
    ({"name": "x", "subnet": "8.8.8.0/24"}, "not a private range"),
    ({"name": "x", "driver": "macvlan"}, "driver 'macvlan'"),
    ({"name": "x", "mtu": 100}, "mtu 100"),
    ({"name": "x", "attachable": True}, "--attachable: plain containers cannot join cluster networks yet"),
])
def test_bad_requests_name_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    existing = [new_network("a", [])]
    name = str(kwargs.pop("name"))
    with pytest.raises(NetworkError, match=message.replace("(", r"\(").replace(".", r"\.")):
        new_network(name, existing, **kwargs)  # type: ignore[arg-type]


# --- addresses ---------------------------------------------------------------------------------

NET = Network("appnet", "10.250.0.0/29", 4096)  # .2 .. .6: five addresses for tasks


def svc(replicas: int = 2, networks: tuple[str, ...] = ("appnet",)) -> Service:
    return Service(ServiceSpec("s_web", "busybox", replicas=replicas,
                               networks=tuple(NetworkAttachment(n) for n in networks)))


def task(tid: str, slot: int, spec: ServiceSpec, **kw: object) -> Task:
    t = Task("s_web", slot, tid, spec.digest, node="n1", state=TaskState.RUNNING)
    return t.with_(**kw) if kw else t


class World:
    """The store as the allocator sees it; write() applies decisions as netalloc would."""

    def __init__(self, replicas: int = 2) -> None:
        self.services = {"s_web": svc(replicas)}
        self.tasks: dict[str, Task] = {}
        self.allocs: dict[str, Allocation] = {}
        self.quarantine: dict[str, Quarantined] = {}
        self.rev = itertools.count(10)

    def plan(self, now: float = 0.0) -> list[netmod.AddressOp]:
        return plan_addresses({"appnet": NET}, self.allocs.values(), self.quarantine.values(), self.tasks,
                              self.services, now)

    def write(self, now: float = 0.0) -> list[netmod.AddressOp]:
        ops = self.plan(now)
        for op in ops:
            if isinstance(op, Assign | Transfer):
                self.allocs[op.allocation.ip] = replace(op.allocation, mod_revision=next(self.rev))
            elif isinstance(op, Release):
                del self.allocs[op.allocation.ip]
                self.quarantine[op.allocation.ip] = Quarantined("appnet", op.allocation.ip, op.freed_at, 1)
            elif isinstance(op, Expire):
                del self.quarantine[op.entry.ip]
        return ops

    def ip_of(self, tid: str) -> str | None:
        return next((a.ip for a in self.allocs.values() if a.task_id == tid), None)


def test_each_task_gets_an_address_once() -> None:
    w = World()
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec), "t2": task("t2", 2, spec)}
    ops = w.write()
    assert sorted((type(o).__name__, o.allocation.ip, o.allocation.task_id) for o in ops
                  if isinstance(o, Assign)) == [("Assign", "10.250.0.2", "t1"), ("Assign", "10.250.0.3", "t2"),
                                                ("Assign", "10.250.0.6", "vip:s_web")]  # VIPs from the top
    assert w.plan() == []  # nothing more to do: idempotent


def test_a_restarted_or_rescheduled_task_keeps_its_slots_address() -> None:
    w = World()
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec), "t2": task("t2", 2, spec)}
    w.write()
    # t1 failed (or its node died and it was replaced): a new task for slot 1 on another node
    w.tasks["t1"] = w.tasks["t1"].with_(state=TaskState.FAILED, desired_state=DesiredState.SHUTDOWN)
    w.tasks["t3"] = task("t3", 1, spec, node="n2", state=TaskState.ASSIGNED)
    ops = w.write()
    assert [type(o) for o in ops] == [Transfer]
    assert w.ip_of("t3") == "10.250.0.2" and w.ip_of("t1") is None
    # the old task leaving the history frees nothing: the slot's address is t3's now
    del w.tasks["t1"]
    assert w.plan() == []


def test_a_start_first_copy_running_beside_the_old_gets_its_own_address() -> None:
    w = World(replicas=1)
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec)}
    w.write()
    w.tasks["t2"] = task("t2", 1, spec, state=TaskState.ASSIGNED)
    w.write()
    assert (w.ip_of("t1"), w.ip_of("vip:s_web"), w.ip_of("t2")) == ("10.250.0.2", "10.250.0.6", "10.250.0.3")


def test_scaled_away_slots_free_their_address_into_quarantine_then_reuse() -> None:
    w = World(replicas=2)
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec), "t2": task("t2", 2, spec)}
    w.write()
    w.services["s_web"] = replace(w.services["s_web"], spec=replace(spec, replicas=1))
    w.tasks["t2"] = w.tasks["t2"].with_(state=TaskState.SHUTDOWN, desired_state=DesiredState.SHUTDOWN)
    ops = w.write(now=100.0)
    assert [(type(o), o.allocation.ip) for o in ops if isinstance(o, Release)] == [(Release, "10.250.0.3")]
    assert set(w.quarantine) == {"10.250.0.3"}
    # a new task while .3 rests gets .4; after the rest .3 is given again
    w.tasks["t4"] = task("t4", 7, spec)
    w.write(now=110.0)
    assert w.ip_of("t4") == "10.250.0.4"
    ops = w.write(now=100.0 + netmod.QUARANTINE)
    assert [type(o) for o in ops] == [Expire] and not w.quarantine
    w.tasks["t5"] = task("t5", 8, spec)
    w.write(now=200.0)
    assert w.ip_of("t5") == "10.250.0.3"


def test_an_exhausted_pool_leaves_tasks_pending_with_the_reason() -> None:
    w = World(replicas=7)
    spec = w.services["s_web"].spec
    w.tasks = {f"t{i}": task(f"t{i}", i, spec, state=TaskState.ASSIGNED) for i in range(1, 8)}
    ops = w.write()
    assigned = [o for o in ops if isinstance(o, Assign)]
    exhausted = [o for o in ops if isinstance(o, Exhausted)]
    assert len(assigned) == 5 and [o.task.id for o in exhausted] == ["t6", "t7"]
    assert not [o for o in assigned if o.allocation.task_id.startswith("vip:")]  # no room left for a VIP
    # a VIP that is there first keeps its address: one task fewer fits
    w2 = World(replicas=7)
    w2.write()  # the service alone: its VIP
    w2.tasks = dict(w.tasks)
    assert [o.task.id for o in w2.write() if isinstance(o, Exhausted)] == ["t5", "t6", "t7"]
    again = netmod.pending_again(exhausted[0], 5.0)
    assert again is not None and (again.node, again.state, again.error) == (
        None, TaskState.PENDING, "pending: no free address in appnet")
    assert netmod.pending_again(Exhausted(again, "appnet"), 6.0) is None  # already says so: no write
    assert netmod.full_networks(ops) == {"s_web": "no free address in appnet"}


def test_reconcile_keeps_a_blocked_service_pending_without_churn() -> None:
    nodes = [Node("n1", capacity=Resources(8 * NANO, 8 << 30))]
    services = {"s_web": svc(replicas=3)}
    ids = (f"id{i}" for i in itertools.count())
    blocked = {"s_web": "no free address in appnet"}
    plan = reconcile(services, [], nodes, 0.0, new_id=lambda: next(ids), rng=random.Random(1), blocked=blocked)
    placed = [a for a in plan.actions if isinstance(a, Place)]
    assert len(placed) == 3 and all(a.task.node is None for a in placed)
    assert {a.task.error for a in placed} == {"pending: no free address in appnet"}
    _, tasks = apply(plan, services, [])
    again = reconcile(services, tasks.values(), nodes, 1.0, new_id=lambda: next(ids), rng=random.Random(1),
                      blocked=blocked)
    assert again.actions == []  # nothing rewritten while it stays blocked
    # the ones that got their addresses meanwhile are placed; the rest stay as they are
    first = sorted(tasks)[0]
    some = reconcile(services, tasks.values(), nodes, 1.5, new_id=lambda: next(ids), rng=random.Random(1),
                     blocked=blocked, addressed={first})
    assert [(a.task.id, a.task.node) for a in some.actions if isinstance(a, Place)] == [(first, "n1")]
    unblocked = reconcile(services, tasks.values(), nodes, 2.0, new_id=lambda: next(ids), rng=random.Random(1))
    assert sum(1 for a in unblocked.actions if isinstance(a, Place) and a.task.node == "n1") == 3


def test_a_service_has_a_vip_per_network_until_it_leaves_it() -> None:
    w = World()
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec)}
    w.write()
    assert w.ip_of("vip:s_web") == "10.250.0.6"
    vs = netmod.vips({"appnet": NET}, w.allocs.values(), w.services)
    assert [(v.service, v.ip, v.names) for v in vs] == [("s_web", "10.250.0.6", ("s_web",))]
    assert w.plan() == []
    # the service leaves the network: its VIP is freed with the rest
    w.services["s_web"] = replace(w.services["s_web"], spec=replace(spec, networks=()))
    w.tasks["t1"] = w.tasks["t1"].with_(state=TaskState.SHUTDOWN, desired_state=DesiredState.SHUTDOWN)
    released = {o.allocation.ip for o in w.write(now=5.0) if isinstance(o, Release)}
    assert released == {"10.250.0.2", "10.250.0.6"}


def test_endpoints_follow_the_tasks_node() -> None:
    w = World()
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec), "t2": task("t2", 2, spec, node="n2")}
    w.write()
    eps = netmod.endpoints({"appnet": NET}, w.allocs.values(), w.tasks,
                           {"n1": "192.0.2.1:7070", "n2": "192.0.2.2:7070"})
    assert [(e.ip, e.mac, e.node, e.vtep, e.task) for e in eps] == [
        ("10.250.0.2", "02:42:0a:fa:00:02", "n1", "192.0.2.1", "s_web.1"),
        ("10.250.0.3", "02:42:0a:fa:00:03", "n2", "192.0.2.2", "s_web.2")]


def test_a_live_move_past_the_switch_points_the_endpoint_at_the_target() -> None:
    """From phase "switched" on (the source froze the task) every host sends to the target, though
    the task is still the source's; before it, and once the record is gone (rolled back), the source."""
    from scheduler.model import Migration

    w = World()
    spec = w.services["s_web"].spec
    w.tasks = {"t1": task("t1", 1, spec), "t2": task("t2", 2, spec, node="n2")}
    w.write()
    addrs = {"n1": "192.0.2.1:7070", "n2": "192.0.2.2:7070", "n3": "192.0.2.3:7070"}

    def where(phase: str | None) -> list[tuple[str, str, str]]:
        ms = [] if phase is None else [Migration("m1", "t1", "s_web", 1, "n1", "n3", "live", phase)]
        eps = netmod.endpoints({"appnet": NET}, w.allocs.values(), w.tasks, addrs,
                               moved=netmod.moved_endpoints(ms))
        return [(e.task, e.node, e.vtep) for e in eps]

    at_source = [("s_web.1", "n1", "192.0.2.1"), ("s_web.2", "n2", "192.0.2.2")]
    assert where(None) == at_source
    assert where("running") == at_source
    assert where("switched") == [("s_web.1", "n3", "192.0.2.3"), ("s_web.2", "n2", "192.0.2.2")]


def test_specs_without_networks_keep_their_digest() -> None:
    spec = ServiceSpec("s_web", "busybox")
    # the digest this spec had before networks existed (tasks in etcd record it: no restart on upgrade)
    assert spec.digest == "11308cdd744b24cc"
    assert spec.digest != replace(spec, networks=(NetworkAttachment("appnet"),)).digest
