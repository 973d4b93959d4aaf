"""scheduler/loop.py's awaited_nodes: after an election, a node whose lease ran out while no
scheduler could renew it is waited for (grace), not taken for lost."""

from __future__ import annotations

from scheduler.loop import awaited_nodes
from scheduler.model import DesiredState, Node, NodeStatus, Task, TaskState


def task(node: str, live: bool = True) -> Task:
    return Task(service="web", slot=1, id=f"t-{node}-{live}", spec_version="v", node=node,
                desired_state=DesiredState.RUNNING if live else DesiredState.SHUTDOWN,
                state=TaskState.RUNNING if live else TaskState.SHUTDOWN)


NODES = [Node("up"), Node("away", status=NodeStatus.DOWN), Node("empty", status=NodeStatus.DOWN)]


def test_a_new_leader_waits_for_leaseless_nodes_with_live_tasks() -> None:
    tasks = [task("up"), task("away"), task("empty", live=False)]
    assert awaited_nodes(NODES, tasks, lead_since=100.0, now=101.0, grace=6.0) == ["away"]


def test_the_grace_ends_and_a_follower_waits_for_nothing() -> None:
    tasks = [task("away")]
    assert awaited_nodes(NODES, tasks, lead_since=100.0, now=106.0, grace=6.0) == []
    assert awaited_nodes(NODES, tasks, lead_since=None, now=101.0, grace=6.0) == []
    assert awaited_nodes(NODES, tasks, lead_since=100.0, now=101.0, grace=0.0) == []
