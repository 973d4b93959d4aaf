"""Global services in reconcile: one task per node that is ready, active and fits, following joins,
drains, downs, constraint changes, restarts and rolling updates (the simulator of test_reconcile)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from scheduler.model import (
    NANO,
    Availability,
    Node,
    NodeStatus,
    PlacementSpec,
    Resources,
    ResourceSpec,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    TaskState,
    UpdateConfig,
)
from scheduler.reconcile import Place, Stop, Update
from tests.unit.test_reconcile import BAD_IMAGE, Sim


def agent(image: str = "agent:1", **kw: Any) -> ServiceSpec:
    return ServiceSpec(name="agent", image=image, mode=ServiceMode.GLOBAL, **kw)


def on_nodes(sim: Sim, service: str = "agent") -> Counter[str]:
    return Counter(t.node or "" for t in sim.running(service))


def live(sim: Sim, service: str = "agent") -> list[Any]:
    return [t for t in sim.tasks.values() if t.service == service and t.live]


def test_one_task_per_node_with_distinct_slots() -> None:
    sim = Sim(3)
    sim.deploy(agent())
    plan = sim.step()
    assert len(plan.of(Place)) == 3
    sim.run(2)
    assert on_nodes(sim) == {"n1": 1, "n2": 1, "n3": 1}
    assert sorted(t.slot for t in live(sim)) == [1, 2, 3]
    assert len(sim.step()) == 0  # converged: nothing more to do


def test_replicas_do_not_count_for_a_global_service() -> None:
    sim = Sim(2)
    sim.deploy(agent(replicas=7))
    sim.run(2)
    assert on_nodes(sim) == {"n1": 1, "n2": 1}


def test_a_node_that_joins_gets_one() -> None:
    sim = Sim(2)
    sim.deploy(agent())
    sim.run(2)
    sim.nodes["n9"] = Node("n9", capacity=Resources(4 * NANO, 8 << 30))
    plan = sim.step()
    assert [a.task.node for a in plan.of(Place) if isinstance(a, Place)] == ["n9"]
    sim.run(1)
    assert on_nodes(sim) == {"n1": 1, "n2": 1, "n9": 1} and sorted(t.slot for t in live(sim)) == [1, 2, 3]


@pytest.mark.parametrize("change", [{"availability": Availability.DRAIN}, {"status": NodeStatus.DOWN}],
                         ids=["drain", "down"])
def test_drained_or_down_node_loses_its_task_and_gets_one_back(change: dict[str, Any]) -> None:
    sim = Sim(3)
    sim.deploy(agent())
    sim.run(2)
    before = {t.node: t for t in sim.running("agent")}
    sim.set_node("n2", **change)
    plan = sim.step()
    stops = [a for a in plan.actions if isinstance(a, Stop)]
    assert [a.task.id for a in stops] == [before["n2"].id] and not plan.of(Place)  # not moved elsewhere
    sim.run(2)
    assert on_nodes(sim) == {"n1": 1, "n3": 1}
    # back to active and ready: the node gets a task again (a down node's stale copy is fenced first)
    sim.set_node("n2", availability=Availability.ACTIVE, status=NodeStatus.READY)
    sim.run(3)
    assert on_nodes(sim) == {"n1": 1, "n2": 1, "n3": 1}
    assert sim.tasks[before["n2"].id].state is TaskState.SHUTDOWN


def test_removed_node_task_is_stopped_and_forgotten() -> None:
    sim = Sim(3)
    sim.deploy(agent())
    sim.run(2)
    del sim.nodes["n3"]
    sim.run(3)
    assert on_nodes(sim) == {"n1": 1, "n2": 1}
    assert not [t for t in sim.tasks.values() if t.node == "n3"]


def test_constraints_choose_the_nodes_and_follow_label_changes() -> None:
    sim = Sim(3)
    sim.set_node("n1", labels={"role": "edge"})
    sim.set_node("n3", labels={"role": "edge"})
    sim.deploy(agent(placement=PlacementSpec(constraints=("node.labels.role == edge",))))
    sim.run(2)
    assert on_nodes(sim) == {"n1": 1, "n3": 1}
    sim.set_node("n3", labels={})
    plan = sim.step()
    assert [a.why for a in plan.actions if isinstance(a, Stop)] == ["node n3 no longer matches the constraints"]
    sim.set_node("n2", labels={"role": "edge"})
    sim.run(2)
    assert on_nodes(sim) == {"n1": 1, "n2": 1}


def test_a_node_without_room_gets_no_task() -> None:
    sim = Sim(2)
    sim.nodes["small"] = Node("small", capacity=Resources(NANO, 64 << 20))
    sim.deploy(agent(resources=ResourceSpec(reservations=Resources(2 * NANO, 1 << 30))))
    sim.run(2)
    assert on_nodes(sim) == {"n1": 1, "n2": 1}
    assert not [t for t in sim.tasks.values() if t.node == "small" or t.node is None]


def test_restart_on_the_same_node_with_the_same_slot() -> None:
    sim = Sim(2)
    sim.deploy(agent(image=BAD_IMAGE, restart_policy=RestartPolicy(RestartCondition.ON_FAILURE, delay=2.0,
                                                                    max_attempts=2)))
    sim.run(12)
    by_node = Counter((t.node, t.slot) for t in sim.tasks.values())
    assert set(by_node) == {("n1", 1), ("n2", 2)} or set(by_node) == {("n1", 2), ("n2", 1)}
    assert all(n == 3 for n in by_node.values())  # the first try and max_attempts restarts, each in place
    assert not live(sim)


def test_rolling_update_node_by_node() -> None:
    sim = Sim(3)
    sim.deploy(agent(update_config=UpdateConfig(parallelism=1, monitor=0.0)))
    sim.run(2)
    slots = {t.node: t.slot for t in sim.running("agent")}
    sim.deploy(agent(image="agent:2", update_config=UpdateConfig(parallelism=1, monitor=0.0)))
    plan = sim.step()
    updates = [a for a in plan.actions if isinstance(a, Update)]
    assert len(updates) == 1 and updates[0].new.node == updates[0].old.node
    sim.run(6)
    digest = sim.services["agent"].spec.digest
    assert on_nodes(sim) == {"n1": 1, "n2": 1, "n3": 1}
    assert all(t.spec_version == digest for t in sim.running("agent"))
    assert {t.node: t.slot for t in sim.running("agent")} == slots


def test_replicated_to_global_and_back() -> None:
    sim = Sim(3)
    sim.deploy(ServiceSpec(name="agent", image="agent:1", replicas=5))
    sim.run(3)
    sim.deploy(agent(update_config=UpdateConfig(parallelism=0, monitor=0.0)))
    sim.run(6)
    assert on_nodes(sim) == {"n1": 1, "n2": 1, "n3": 1} and len(live(sim)) == 3
    sim.deploy(ServiceSpec(name="agent", image="agent:1", replicas=4,
                           update_config=UpdateConfig(parallelism=0, monitor=0.0)))
    sim.run(6)
    assert len(sim.running("agent")) == 4 and sorted(t.slot for t in live(sim)) == [1, 2, 3, 4]
