"""Reconcile: examples of each step, and hypothesis properties over a simulated cluster.

The simulator is the whole loop without etcd or agents: reconcile -> apply (what the executor
writes) -> simulated agents act on what they are told -> time passes -> events happen.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.model import (
    NANO,
    Availability,
    DesiredState,
    FailureAction,
    Node,
    NodeStatus,
    Resources,
    ResourceSpec,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    UpdateOrder,
    UpdateState,
)
from scheduler.reconcile import (
    Migrate,
    Place,
    Plan,
    Remove,
    SetService,
    Stop,
    Update,
    apply,
    new_service,
    reconcile,
    rollback_service,
    update_service,
)

BAD_IMAGE = "broken:1"  # the simulated agents fail every task of this image


class Sim:
    def __init__(self, n_nodes: int = 3, seed: int = 0, dt: float = 1.0) -> None:
        self.nodes = {f"n{i}": Node(f"n{i}", capacity=Resources(64 * NANO, 256 << 30)) for i in range(1, n_nodes + 1)}
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, Task] = {}
        self.now = 0.0
        self.dt = dt
        self.ids = itertools.count()
        self.rng = random.Random(seed)
        self.last_plan = Plan()

    def new_id(self) -> str:
        return f"t{next(self.ids)}"

    def deploy(self, spec: ServiceSpec) -> None:
        old = self.services.get(spec.name)
        self.services[spec.name] = new_service(spec, self.now) if old is None else update_service(old, spec)

    def reconcile(self) -> Plan:
        plan = reconcile(self.services, self.tasks.values(), self.nodes.values(), self.now,
                         new_id=self.new_id, rng=self.rng)
        self.services, self.tasks = apply(plan, self.services, self.tasks.values())
        self.last_plan = plan
        return plan

    def agents(self) -> None:
        """What each ready node's agent does with the tasks it is given."""
        for tid, t in list(self.tasks.items()):
            node = self.nodes.get(t.node or "")
            if node is None or node.status is not NodeStatus.READY:
                continue
            if t.desired_state is DesiredState.SHUTDOWN and t.state.active:
                self.tasks[tid] = t.with_(state=TaskState.SHUTDOWN, state_at=self.now)
            elif t.desired_state is DesiredState.RUNNING and t.state is TaskState.ASSIGNED:
                svc = self.services.get(t.service)
                spec = svc.spec if svc else None
                if svc and svc.previous_spec and svc.previous_spec.digest == t.spec_version:
                    spec = svc.previous_spec
                if spec is not None and spec.image == BAD_IMAGE:
                    self.tasks[tid] = t.with_(state=TaskState.FAILED, state_at=self.now, started_at=self.now,
                                              exit_code=1, error="exit 1")
                else:
                    self.tasks[tid] = t.with_(state=TaskState.RUNNING, state_at=self.now, started_at=self.now)

    def step(self) -> Plan:
        plan = self.reconcile()
        self.agents()
        check_invariants(self)
        self.now += self.dt
        return plan

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def set_node(self, name: str, **changes: object) -> None:
        self.nodes[name] = replace(self.nodes[name], **changes)  # type: ignore[arg-type]

    def running(self, service: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.service == service and t.state is TaskState.RUNNING
                and self.nodes.get(t.node or "", Node("?", status=NodeStatus.DOWN)).status is NodeStatus.READY]


def check_invariants(sim: Sim) -> None:
    # Never two running copies of one task: per slot, at most one running on the reachable nodes.
    copies = Counter((t.service, t.slot) for t in sim.tasks.values()
                     if t.state is TaskState.RUNNING and sim.nodes.get(t.node or "") is not None
                     and sim.nodes[t.node or ""].status is NodeStatus.READY)
    assert all(n <= 1 for n in copies.values()), f"two running copies: {copies.most_common(3)}"
    # Per slot, at most one task wanted running (stop-first everywhere in these tests).
    wanted = Counter((t.service, t.slot) for t in sim.tasks.values() if t.live)
    assert all(n <= 1 for n in wanted.values()), f"two live tasks in a slot: {wanted.most_common(3)}"
    # Nothing is wanted on a node that is down or drained.
    for t in sim.tasks.values():
        if t.live and t.node is not None:
            assert sim.nodes[t.node].schedulable, f"{t.name} wanted on {t.node} which is not schedulable"


def converged(sim: Sim, service: str) -> bool:
    svc = sim.services[service]
    run = sim.running(service)
    return (len(run) == svc.spec.replicas
            and all(t.spec_version == svc.spec.digest for t in run)
            and sorted(t.slot for t in run) == list(range(1, svc.spec.replicas + 1)))


def web(replicas: int = 6, image: str = "nginx:1", **kw: Any) -> ServiceSpec:
    return ServiceSpec(name="web", image=image, replicas=replicas, **kw)


def per_node(sim: Sim, service: str = "web") -> dict[str, int]:
    return dict(Counter(t.node or "" for t in sim.running(service)))


# -- examples --------------------------------------------------------------------------------------

def test_fresh_service_spreads_2_2_2() -> None:
    sim = Sim(3)
    sim.deploy(web(6))
    plan = sim.step()
    assert len(plan.of(Place)) == 6
    sim.run(2)
    assert sorted(per_node(sim).values()) == [2, 2, 2]
    assert converged(sim, "web")
    assert len(sim.step()) == 0  # nothing left to do


def test_down_node_tasks_move_and_come_back_stopped() -> None:
    sim = Sim(3)
    sim.deploy(web(6))
    sim.run(3)
    stale = [t for t in sim.running("web") if t.node == "n1"]
    assert len(stale) == 2
    sim.set_node("n1", status=NodeStatus.DOWN)
    plan = sim.step()
    moves = plan.of(Migrate)
    assert {m.old.id for m in moves if isinstance(m, Migrate)} == {t.id for t in stale}
    assert all(isinstance(m, Migrate) and m.new.node in {"n2", "n3"} for m in moves)
    sim.run(2)
    assert converged(sim, "web") and set(per_node(sim)) == {"n2", "n3"}
    # The old copies still run on n1 (it was cut off, not dead). It comes back: they are fenced.
    assert all(sim.tasks[t.id].state is TaskState.RUNNING for t in stale)
    sim.set_node("n1", status=NodeStatus.READY)
    plan = sim.step()
    fenced = [a for a in plan.actions if isinstance(a, Stop) and a.fence]
    assert {a.task.id for a in fenced if isinstance(a, Stop)} == {t.id for t in stale}
    assert all(sim.tasks[t.id].state is TaskState.SHUTDOWN for t in stale)
    assert converged(sim, "web")


def test_drain_moves_tasks_off() -> None:
    sim = Sim(3)
    sim.deploy(web(3))
    sim.run(2)
    sim.set_node("n2", availability=Availability.DRAIN)
    plan = sim.step()
    assert len(plan.of(Migrate)) == 1
    sim.run(2)
    assert "n2" not in per_node(sim) and converged(sim, "web")


def test_scale_down_stops_highest_slots() -> None:
    sim = Sim(3)
    sim.deploy(web(5))
    sim.run(2)
    sim.deploy(web(2))
    plan = sim.step()
    assert sorted(a.task.slot for a in plan.of(Stop) if isinstance(a, Stop)) == [3, 4, 5]
    assert converged(sim, "web")


def test_restart_policy_delay_and_max_attempts() -> None:
    sim = Sim(1)
    policy = RestartPolicy(condition=RestartCondition.ON_FAILURE, delay=5.0, max_attempts=2)
    sim.deploy(web(1, image=BAD_IMAGE, restart_policy=policy))
    sim.step()  # placed, then the agent reports it failed
    plan = sim.step()
    assert plan.of(Place) == [] and plan.wake_at == 5.0  # delay not over: wake up then
    sim.now = 5.0
    plan = sim.step()
    (restart,) = plan.of(Place)
    assert isinstance(restart, Place) and restart.replaces is not None and restart.task.attempt == 1
    sim.now = 11.0
    sim.step()
    assert [t.attempt for t in sim.tasks.values()] == [0, 1, 2]
    sim.now = 30.0
    plan = sim.step()
    assert plan.of(Place) == []  # max_attempts reached


def test_on_failure_does_not_restart_a_clean_exit() -> None:
    sim = Sim(1)
    sim.deploy(web(1, restart_policy=RestartPolicy(condition=RestartCondition.ON_FAILURE, delay=0)))
    sim.run(2)
    (t,) = sim.running("web")
    sim.tasks[t.id] = t.with_(state=TaskState.COMPLETE, exit_code=0, state_at=sim.now)
    assert sim.step().of(Place) == []
    sim.tasks[t.id] = t.with_(state=TaskState.FAILED, exit_code=2, state_at=sim.now)
    assert len(sim.step().of(Place)) == 1


def test_pending_reason_then_placed_when_a_node_joins() -> None:
    sim = Sim(1)
    sim.nodes["n1"] = replace(sim.nodes["n1"], capacity=Resources(NANO, 1 << 30))
    big = web(1, resources=ResourceSpec(reservations=Resources(0, 2 << 30)))
    sim.deploy(big)
    sim.step()
    (t,) = sim.tasks.values()
    assert t.state is TaskState.PENDING and t.error == "pending: 1 node lacks 2 GiB memory"
    assert len(sim.step()) == 0  # the same reason is not written again
    sim.nodes["n2"] = Node("n2", capacity=Resources(NANO, 4 << 30))
    plan = sim.step()
    (p,) = plan.of(Place)
    assert isinstance(p, Place) and p.task.id == t.id and p.task.node == "n2"
    sim.step()
    assert converged(sim, "web")


def test_rolling_update_parallelism_monitor_delay() -> None:
    sim = Sim(3)
    cfg = UpdateConfig(parallelism=2, delay=3.0, monitor=2.0)
    sim.deploy(web(6, update_config=cfg))
    sim.run(3)
    sim.deploy(web(6, image="nginx:2", update_config=cfg))
    plan = sim.step()
    assert len(plan.of(Update)) == 2 and any(isinstance(a, SetService) for a in plan.actions)
    assert sim.services["web"].update.state is UpdateState.UPDATING
    batches = [2]
    for _ in range(60):
        n = len(sim.step().of(Update))
        if n:
            batches.append(n)
    assert batches == [2, 2, 2]
    assert converged(sim, "web")
    assert sim.services["web"].update.state is UpdateState.COMPLETED
    # batches are at least monitor + delay apart
    starts = sorted({t.created_at for t in sim.tasks.values() if t.spec_version == sim.services["web"].spec.digest})
    assert all(b - a >= 5.0 for a, b in itertools.pairwise(starts))


def test_failed_update_rolls_back_to_the_old_spec() -> None:
    sim = Sim(3)
    cfg = UpdateConfig(parallelism=1, monitor=2.0, failure_action=FailureAction.ROLLBACK)
    good = web(4, update_config=cfg)
    sim.deploy(good)
    sim.run(3)
    sim.deploy(web(4, image=BAD_IMAGE, update_config=cfg))
    for _ in range(40):
        sim.step()
    svc = sim.services["web"]
    assert svc.spec == good and svc.update.state is UpdateState.ROLLBACK_COMPLETED
    assert "rollback" in svc.update.message or svc.update.state.rolling_back
    assert converged(sim, "web")
    assert all(t.spec_version == good.digest for t in sim.running("web"))


def test_failed_update_pauses_by_default() -> None:
    sim = Sim(2)
    sim.deploy(web(4, update_config=UpdateConfig(monitor=1.0)))
    sim.run(3)
    sim.deploy(web(4, image=BAD_IMAGE, update_config=UpdateConfig(monitor=1.0)))
    sim.run(10)
    svc = sim.services["web"]
    assert svc.update.state is UpdateState.PAUSED and "web.1 failed" in svc.update.message
    # only the first slot was touched: the others still run the old spec
    assert len([t for t in sim.running("web") if t.spec_version == svc.previous_spec.digest]) == 3  # type: ignore[union-attr]


def test_start_first_keeps_the_old_task_until_the_new_one_runs() -> None:
    sim = Sim(3)
    cfg = UpdateConfig(parallelism=1, order=UpdateOrder.START_FIRST, monitor=0.0)
    sim.deploy(web(1, update_config=cfg))
    sim.run(2)
    (old,) = sim.running("web")
    sim.deploy(web(1, image="nginx:2", update_config=cfg))
    plan = sim.reconcile()
    (u,) = plan.of(Update)
    assert isinstance(u, Update) and not u.stop_old
    assert sim.tasks[old.id].desired_state is DesiredState.RUNNING  # still serving
    sim.agents()
    sim.now += 1
    plan = sim.reconcile()
    assert [a.task.id for a in plan.of(Stop) if isinstance(a, Stop)] == [old.id]


def test_manual_rollback() -> None:
    sim = Sim(2)
    sim.deploy(web(2))
    sim.run(2)
    sim.deploy(web(2, image="nginx:2"))
    sim.run(30)
    back = rollback_service(sim.services["web"], sim.now)
    assert back is not None
    sim.services["web"] = back
    sim.run(30)
    assert converged(sim, "web") and sim.services["web"].spec.image == "nginx:1"
    assert sim.services["web"].update.state is UpdateState.ROLLBACK_COMPLETED


def test_removed_service_is_stopped_and_forgotten() -> None:
    sim = Sim(2)
    sim.deploy(web(3))
    sim.run(2)
    del sim.services["web"]
    plan = sim.step()
    assert len(plan.of(Stop)) == 3
    plan = sim.step()
    # once stopped they go (as in Swarm), so the dispatcher removes their containers and whatever
    # the node held for them (the secrets' tmpfs)
    assert len(plan.of(Remove)) == 3 and {a.why for a in plan.of(Remove)} == {"service web removed"}
    assert not sim.running("web") and not [t for t in sim.tasks.values() if t.service == "web"]
    assert not sim.step().actions


def test_history_is_bounded() -> None:
    sim = Sim(1)
    sim.deploy(web(1, image=BAD_IMAGE, restart_policy=RestartPolicy(delay=0)))
    sim.run(20)
    per_slot = [t for t in sim.tasks.values() if t.desired_state is DesiredState.SHUTDOWN]
    assert len(per_slot) <= 5 + 1  # the limit, plus the task this very pass replaced


def test_reconcile_is_deterministic() -> None:
    def once() -> list[str]:
        sim = Sim(5, seed=7)
        sim.deploy(web(10))
        return [repr(a) for a in sim.step().actions]

    assert once() == once()


# -- properties ------------------------------------------------------------------------------------

Event = tuple[str, int, int]
events = st.lists(st.tuples(st.sampled_from(["down", "up", "drain", "activate", "scale", "update", "fail", "tick"]),
                            st.integers(1, 4), st.integers(0, 8)), max_size=25)


def drive(sim: Sim, evs: list[Event]) -> None:
    for kind, node_i, n in evs:
        node = f"n{node_i}"
        svc = sim.services["web"]
        if kind == "down":
            sim.set_node(node, status=NodeStatus.DOWN)
        elif kind == "up":
            sim.set_node(node, status=NodeStatus.READY)
        elif kind == "drain":
            sim.set_node(node, availability=Availability.DRAIN)
        elif kind == "activate":
            sim.set_node(node, availability=Availability.ACTIVE)
        elif kind == "scale":
            sim.deploy(replace(svc.spec, replicas=n))
        elif kind == "update":
            sim.deploy(replace(svc.spec, image=f"nginx:{n}"))
        elif kind == "fail":
            running = sorted(sim.running("web"), key=lambda t: t.id)
            if running:
                t = running[n % len(running)]
                sim.tasks[t.id] = t.with_(state=TaskState.FAILED, exit_code=137, state_at=sim.now)
        sim.step()


def heal(sim: Sim) -> None:
    for name in sim.nodes:
        sim.set_node(name, status=NodeStatus.READY, availability=Availability.ACTIVE)
    sim.dt = 3.0
    for _ in range(80):
        sim.step()
        if converged(sim, "web") and len(sim.last_plan) == 0:
            return


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evs=events, replicas=st.integers(0, 8), seed=st.integers(0, 1000))
def test_property_invariants_hold_and_replicas_converge(evs: list[Event], replicas: int, seed: int) -> None:
    sim = Sim(4, seed=seed)
    sim.deploy(web(replicas, update_config=UpdateConfig(parallelism=2, monitor=1.0, delay=0.0,
                                                        failure_action=FailureAction.CONTINUE),
                   restart_policy=RestartPolicy(delay=1.0)))
    sim.step()
    drive(sim, evs)  # invariants are checked after every step
    heal(sim)
    assert converged(sim, "web"), (sim.services["web"].update, sorted(
        (t.slot, t.state.value, t.desired_state.value, t.node) for t in sim.tasks.values()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(down=st.sets(st.integers(1, 4), min_size=1, max_size=3), replicas=st.integers(1, 8), seed=st.integers(0, 99))
def test_property_a_down_nodes_tasks_move(down: set[int], replicas: int, seed: int) -> None:
    sim = Sim(4, seed=seed)
    sim.deploy(web(replicas))
    sim.run(3)
    for i in down:
        sim.set_node(f"n{i}", status=NodeStatus.DOWN)
    sim.run(3)
    assert converged(sim, "web")
    assert not {t.node for t in sim.running("web")} & {f"n{i}" for i in down}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replicas=st.integers(1, 6), parallelism=st.integers(0, 3), noise=events, seed=st.integers(0, 99))
def test_property_rollback_restores_the_old_spec(replicas: int, parallelism: int, noise: list[Event],
                                                 seed: int) -> None:
    sim = Sim(4, seed=seed)
    cfg = UpdateConfig(parallelism=parallelism, monitor=1.0, failure_action=FailureAction.ROLLBACK,
                       order=UpdateOrder.STOP_FIRST)
    good = web(replicas, update_config=cfg, rollback_config=UpdateConfig(parallelism=0, monitor=1.0),
               restart_policy=RestartPolicy(delay=1.0))
    sim.deploy(good)
    sim.run(3)
    sim.deploy(replace(good, image=BAD_IMAGE))
    drive(sim, [e for e in noise if e[0] in ("down", "up", "fail", "tick")])
    heal(sim)
    svc = sim.services["web"]
    assert svc.spec == good, svc.update
    assert converged(sim, "web")
    assert {t.spec_version for t in sim.running("web")} == {good.digest}


def test_explicit_migration_goes_where_asked_or_says_why() -> None:
    from scheduler.reconcile import plan_migration

    sim = Sim(3)
    sim.deploy(web(3, resources=ResourceSpec(reservations=Resources(0, 1 << 30))))
    sim.run(2)
    t = next(t for t in sim.running("web") if t.node == "n1")
    got = plan_migration(t, sim.services, sim.tasks.values(), sim.nodes.values(), sim.now, new_id=sim.new_id,
                         rng=random.Random(0), to="n3")
    assert isinstance(got, Migrate) and got.new.node == "n3" and got.new.slot == t.slot
    assert got.new.spec_version == t.spec_version
    anywhere = plan_migration(t, sim.services, sim.tasks.values(), sim.nodes.values(), sim.now,
                              new_id=sim.new_id, rng=random.Random(0))
    assert isinstance(anywhere, Migrate) and anywhere.new.node in {"n2", "n3"}
    small = dict(sim.nodes, n3=replace(sim.nodes["n3"], capacity=Resources(NANO, 1 << 30)))  # full already
    nope = plan_migration(t, sim.services, sim.tasks.values(), small.values(), sim.now, new_id=sim.new_id,
                          rng=random.Random(0), to="n3")
    assert not isinstance(nope, Migrate)
    assert nope.message == ("pending: 1 node does not match node.id != n1, 1 node does not match node.id == n3, "
                            "1 node lacks 1 GiB memory")
    # applied like any plan: the old copy is told to stop, the slot keeps one live task
    sim.services, sim.tasks = apply(Plan([got]), sim.services, sim.tasks.values())
    sim.agents()
    check_invariants(sim)
    sim.run(2)
    assert converged(sim, "web") and per_node(sim) == {"n2": 1, "n3": 2}


def test_tasks_of_a_removed_node_are_replaced_then_forgotten() -> None:
    sim = Sim(2)
    sim.deploy(web(2))
    sim.run(2)
    gone = [t.id for t in sim.running("web") if t.node == "n1"]
    del sim.nodes["n1"]  # `dockyard node rm n1`
    plan = sim.step()
    assert {a.old.id for a in plan.of(Migrate) if isinstance(a, Migrate)} == set(gone)
    for _ in range(6):  # a later pass lets go of records no agent will ever report on
        sim.step()
    assert not set(gone) & set(sim.tasks)
    assert converged(sim, "web")
