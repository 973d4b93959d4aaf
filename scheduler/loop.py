"""The leader loop: view (snapshot + watch) -> reconcile -> executor -> the dispatcher acts.

Each pass reconciles every service against the view, writes the plan with guarded transactions,
then waits until the view has seen its own writes before deciding again: a pass never decides
from a view older than the last plan, so a slot is never filled twice. It runs on any change the
watch brings (a report, a deploy, a node lost) and at the plan's wake_at (restart delays, update
monitors); only while this replica is the leader.

Nodes keep their leases through the schedulers' Heartbeat calls: with every replica gone for
longer than a lease (one replica restarted on a loaded host), each lease ran out while nobody
could renew it, and is not a sign the node is lost. So for `grace` seconds after it takes the
lead, a new leader waits, doing nothing, while a node that has live tasks has no lease: its agent
registers again as soon as it reaches a scheduler (as swarmkit's dispatcher gives every node a
fresh heartbeat period after an election). A node still without a lease after that is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable

from scheduler import netalloc
from scheduler.executor import Executor
from scheduler.metrics import SchedulerMetrics
from scheduler.model import DesiredState, Node, NodeStatus, Task, TaskState
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


def awaited_nodes(nodes: Iterable[Node], tasks: Iterable[Task], lead_since: float | None, now: float,
                  grace: float) -> list[str]:
    """The nodes a new leader waits for (see above): without a lease, with live tasks, while
    the grace after taking the lead lasts."""
    if lead_since is None or now - lead_since >= grace:
        return []
    busy = {t.node for t in tasks if t.live and t.node}
    return sorted(n.name for n in nodes if n.status is NodeStatus.DOWN and n.name in busy)


def new_task_id() -> str:
    return secrets.token_hex(6)


class LeaderLoop:
    def __init__(self, view: View, store: Store, metrics: SchedulerMetrics, *,
                 clock: Callable[[], float] = time.time, idle: float = 1.0, grace: float = 0.0) -> None:
        self.view = view
        self.store = store
        self.metrics = metrics
        self.executor = Executor(store)
        self.clock = clock
        self.idle = idle
        self.rng = random.Random()
        self.passes = 0
        self.pipeline = TimedPipeline(metrics.placement_seconds.observe)
        self.grace = grace  # after taking the lead: how long a node without a lease may take to register
        self.lead_since: float | None = None

    async def run(self, active: Callable[[], bool]) -> None:
        wake_at: float | None = None
        while True:
            timeout = self.idle if wake_at is None else max(0.0, min(self.idle, wake_at - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.view.changed.wait(), timeout)
            self.view.changed.clear()
            leading = active()
            self.update_gauges(leading)
            if not leading:
                self.lead_since = None
            elif self.lead_since is None:
                self.lead_since = self.clock()
            if not leading or not self.view.loaded.is_set() or not self.view.etcd_ok:
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
        if away := awaited_nodes(v.node_list(), v.tasks.values(), self.lead_since, now, self.grace):
            log.info("new leader: waiting up to %.0f s for %s to register again before moving their tasks",
                     self.grace - (now - (self.lead_since or now)), ", ".join(away))
            return (self.lead_since or now) + self.grace
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
