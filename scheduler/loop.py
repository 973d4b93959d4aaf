"""The leader loop: view (snapshot + watch) -> reconcile -> executor -> the dispatcher acts.

Each pass reconciles every service against the view, writes the plan with guarded transactions,
then waits until the view has seen its own writes before deciding again: a pass never decides
from a view older than the last plan, so a slot is never filled twice. It runs on any change the
watch brings (a report, a deploy, a node lost) and at the plan's wake_at (restart delays, update
monitors); only while this replica is the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable

from scheduler import netalloc
from scheduler.executor import Executor
from scheduler.metrics import SchedulerMetrics
from scheduler.model import DesiredState, Task, TaskState
from scheduler.network import Exhausted, full_networks
from scheduler.placement.pipeline import Decision, Pipeline
from scheduler.placement.state import ClusterState, PlacementRequest
from scheduler.reconcile import Action, Migrate, Place, Remove, Stop, Update, reconcile
from scheduler.store import Store, StoreError
from scheduler.view import View

log = logging.getLogger("dockyard.scheduler.loop")


def _touches(a: Action) -> set[str]:
    if isinstance(a, (Update, Migrate)):
        return {a.old.id}
    if isinstance(a, (Stop, Remove)):
        return {a.task.id}
    return set()


def _tasks_of(a: Action) -> list[Task]:
    if isinstance(a, (Update, Migrate)):
        return [a.old, a.new]
    if isinstance(a, (Stop, Remove, Place)):
        return [a.task]
    return []


def new_task_id() -> str:
    return secrets.token_hex(6)


class LeaderLoop:
    def __init__(self, view: View, store: Store, metrics: SchedulerMetrics, *,
                 clock: Callable[[], float] = time.time, idle: float = 1.0) -> None:
        self.view = view
        self.store = store
        self.metrics = metrics
        self.executor = Executor(store)
        self.clock = clock
        self.idle = idle
        self.rng = random.Random()
        self.passes = 0
        self.pipeline = TimedPipeline(metrics.placement_seconds.observe)

    async def run(self, active: Callable[[], bool]) -> None:
        wake_at: float | None = None
        while True:
            timeout = self.idle if wake_at is None else max(0.0, min(self.idle, wake_at - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.view.changed.wait(), timeout)
            self.view.changed.clear()
            self.update_gauges(active())
            if not active() or not self.view.loaded.is_set() or not self.view.etcd_ok:
                continue
            try:
                wake_at = await self.one_pass()
            except StoreError as e:
                log.warning("reconcile pass not written: %s", e)
                await asyncio.sleep(0.2)
            except Exception as e:  # keep leading: the next change retries
                log.exception("reconcile pass failed: %s", e)
                await asyncio.sleep(0.5)

    async def one_pass(self) -> float | None:
        now = self.clock()
        v = self.view
        # Addresses first: a service whose network is full stays pending (reconcile is told so);
        # tasks this pass creates get theirs in the next pass (the dispatcher waits for them).
        addresses = netalloc.plan(v, now)
        blocked: dict[str, str] = {}
        addressed: set[str] = set()
        if addresses:
            blocked = full_networks(addresses)
            waiting = {op.task.id for op in addresses if isinstance(op, Exhausted)}
            addressed = {a.task_id for a in v.allocations.values()} - waiting
        with self.metrics.reconcile():
            plan = reconcile(v.services, list(v.tasks.values()), v.node_list(), now, new_id=new_task_id,
                             rng=self.rng, blocked=blocked, addressed=addressed, pipeline=self.pipeline)
        self.passes += 1
        migrating = v.migrating()
        if migrating:  # a task being moved is the migration's: act on it once its record is gone
            plan.actions = [a for a in plan.actions if not (_touches(a) & migrating)]
        if addresses:
            touched = {t.id for a in plan.actions for t in _tasks_of(a)}
            rev = await netalloc.write(self.store, [op for op in addresses if not (
                isinstance(op, Exhausted) and op.task.id in touched)], now)
            if rev:
                await v.wait_revision(rev)
        if not plan.actions:
            return plan.wake_at
        for a in plan.actions:
            if isinstance(a, Place):
                self.metrics.attempt("scheduled" if a.task.node else "unschedulable")
        log.info("plan: %s", plan.summary())
        with self.metrics.etcd("txn"):
            result = await self.executor.apply(plan)
        for action, why in result.dropped:
            log.info("dropped %s: %s", type(action).__name__, why)
        if result.revision:
            await v.wait_revision(result.revision)
        return plan.wake_at

    def update_gauges(self, leader: bool) -> None:
        m, v = self.metrics, self.view
        m.set_leader(leader)
        m.set_nodes(v.nodes.values())
        live = [t for t in v.tasks.values() if t.desired_state is DesiredState.RUNNING]
        running = Counter(t.service for t in live if t.state is TaskState.RUNNING)
        m.set_services({s.name: s.spec.replicas for s in v.services.values()},
                       {name: running.get(name, 0) for name in v.services})
        m.set_pending(sum(1 for t in live if t.state is TaskState.PENDING))


class TimedPipeline(Pipeline):
    """The placement pipeline with the time of each task's placement observed (the
    dockyard_scheduler_placement_seconds histogram): the clock is read here, at the edge, so the
    decisions stay pure. place_many's time is shared evenly by the tasks it placed."""

    def __init__(self, observe: Callable[[float], None], *, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self._observe, self._clock = observe, clock
        self._depth = 0  # place_many may call place: only the outermost call is timed

    def place(self, cluster: ClusterState, req: PlacementRequest) -> Decision:
        return self._timed(lambda: [super(TimedPipeline, self).place(cluster, req)])[0]

    def place_many(self, cluster: ClusterState, req: PlacementRequest, count: int) -> list[Decision]:
        return self._timed(lambda: super(TimedPipeline, self).place_many(cluster, req, count))

    def _timed(self, f: Callable[[], list[Decision]]) -> list[Decision]:
        self._depth += 1
        t0 = self._clock()
        try:
            out = f()
        finally:
            self._depth -= 1
        if self._depth == 0 and out:
            each = (self._clock() - t0) / len(out)
            for _ in out:
                self._observe(each)
        return out
