"""The leader loop's TimedPipeline (scheduler/loop.py): what feeds
dockyard_scheduler_placement_seconds. Each task placed (or found unplaceable) is one observation;
place_many's time is shared by its tasks; a place() inside place_many is not counted again; the
decisions are the plain pipeline's."""

from __future__ import annotations

import itertools

from scheduler.loop import TimedPipeline
from scheduler.placement import Pipeline
from tests.unit.test_placement import GiB, N, cluster, spec


def fake_clock(step: float) -> tuple[list[float], TimedPipeline]:
    seen: list[float] = []
    ticks = itertools.count()
    return seen, TimedPipeline(seen.append, clock=lambda: next(ticks) * step)


def test_one_place_is_one_observation_and_the_same_decision() -> None:
    seen, timed = fake_clock(0.5)
    nodes = [N("n1"), N("n2", mem=1 * GiB)]
    a, b = cluster(nodes), cluster(nodes)
    assert timed.place(a, a.request(spec())) == Pipeline().place(b, b.request(spec()))
    assert seen == [0.5]


def test_place_many_shares_its_time_and_counts_each_task_once() -> None:
    seen, timed = fake_clock(1.0)
    c = cluster([N("n1"), N("n2"), N("n3")])
    decisions = timed.place_many(c, c.request(spec()), 4)
    assert len(decisions) == 4
    assert seen == [0.25] * 4  # one clock step over four tasks, nested place() calls not timed


def test_a_pending_task_is_observed_too() -> None:
    seen, timed = fake_clock(0.1)
    c = cluster([N("n1", down=True)])
    timed.place(c, c.request(spec()))
    assert len(seen) == 1
