"""Reconcile: (services, tasks, nodes, now) -> Plan. Pure: it reads no clock, no etcd, no globals.

It only decides. The executor writes the plan to etcd (guarded by mod_revision); the dispatcher
tells agents. Ids and randomness come in as parameters so tests and hypothesis can drive them.

One pass, per service, in this order (each step sees what the steps before it decided):
  1. fence    tasks wanted stopped that a ready node still runs -> Stop (never two live copies)
  2. move     live tasks on a down, drained or removed node -> Migrate to another node
  3. retry    pending tasks -> Place when a node fits now
  4. restart  finished tasks -> a new task for the slot, as the restart policy says
  5. scale    missing slots -> Place; slots above replicas -> Stop
  6. update   outdated slots -> Update, `parallelism` at a time, `delay` apart, each batch gated
              on its tasks running (and healthy) for `monitor`; failures pause, continue or roll back
  7. forget   finished tasks beyond the history limit -> Remove

A global service (ServiceSpec.mode) has one task per node that is ready, active and fits it
(constraints, resources, ports) instead of `replicas`: a node that joins or comes back gets one,
a task on a node that goes down, is drained or removed, or no longer matches the constraints is
stopped (not moved), and each task's slot is its own (web.1, web.2, ... in the order nodes got them).
Restart and rolling update work per node as they work per slot. A node without room gets no task
(it is not a pending one, as nothing else could run it).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from scheduler import constraints as constraint_lang
from scheduler.model import (
    DesiredState,
    FailureAction,
    Node,
    NodeStatus,
    RestartCondition,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    UpdateOrder,
    UpdateState,
    UpdateStatus,
)
from scheduler.placement import ClusterState, Pending, Pipeline, Placed, filters

IdFactory = Callable[[], str]


@dataclass(frozen=True, slots=True)
class Place:
    """Write `task`: a new one, or a pending one retried. Assigned to a node, or pending with a reason."""

    task: Task
    why: str
    replaces: Task | None = None  # a finished task this one restarts: its desired state becomes shutdown
    placed: Placed | None = None  # the winning node's scores, for `service ps --explain`


@dataclass(frozen=True, slots=True)
class Stop:
    task: Task
    why: str
    fence: bool = False  # desired state is already shutdown: only the agent still has to act


@dataclass(frozen=True, slots=True)
class Update:
    """Replace an outdated task of a slot by one running the current spec."""

    old: Task
    new: Task
    stop_old: bool  # stop-first: now; start-first: a later Stop once `new` runs


@dataclass(frozen=True, slots=True)
class Migrate:
    old: Task
    new: Task
    why: str


@dataclass(frozen=True, slots=True)
class SetService:
    service: Service  # the new value (update progress, or a rollback to the previous spec)
    why: str


@dataclass(frozen=True, slots=True)
class Remove:
    task: Task
    why: str


Action = Place | Stop | Update | Migrate | SetService | Remove


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    wake_at: float | None = None  # reconcile again at this time even if nothing changes

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at

    def of(self, kind: type[Action]) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

    def __len__(self) -> int:
        return len(self.actions)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for a in self.actions:
            out[type(a).__name__.lower()] += 1
        return dict(out)


def _newest(tasks: Iterable[Task]) -> Task | None:
    return max(tasks, key=lambda t: (t.created_at, t.id), default=None)


def _restart_due(task: Task, spec: ServiceSpec) -> tuple[bool, float, int]:
    """(restart at all, at what time, attempt number of the replacement)."""
    policy = spec.restart_policy
    if policy.condition is RestartCondition.NONE:
        return False, 0.0, 0
    if policy.condition is RestartCondition.ON_FAILURE and task.state is TaskState.COMPLETE:
        return False, 0.0, 0
    ran = task.state_at - task.started_at if task.started_at else 0.0
    attempt = task.attempt + 1
    if policy.window > 0 and ran >= policy.window:
        attempt = 1  # it ran long enough to count as a success: start counting afresh
    if policy.max_attempts and attempt > policy.max_attempts:
        return False, 0.0, 0
    return True, task.state_at + policy.delay, attempt


class _Pass:
    def __init__(self, services: Mapping[str, Service], tasks: list[Task], nodes: list[Node], now: float,
                 new_id: IdFactory, rng: random.Random, pipeline: Pipeline, history: int,
                 cluster: ClusterState | None, blocked: Mapping[str, str] | None = None,
                 addressed: Collection[str] = ()) -> None:
        self.services = services
        self.tasks = tasks
        self.nodes = {n.name: n for n in nodes}
        self.now = now
        self.new_id = new_id
        self.pipeline = pipeline
        self.history = history
        self.plan = Plan()
        # A service whose task fit nowhere will not fit for its next replica either, until
        # something is released: skip the full scan for the rest of its replicas.
        self.pending: dict[str, Pending] = {}
        # services whose new tasks cannot be placed whatever the nodes (their network has no free
        # address); their tasks that already hold their addresses (`addressed`) are placed as usual
        self.blocked = {name: Pending((), note=why) for name, why in (blocked or {}).items()}
        self.addressed = addressed
        self.digests: dict[int, str] = {}  # by id(): specs live as long as the pass
        self.service_action: dict[str, int] = {}  # service -> index of its SetService in the plan
        self.by_digest: dict[tuple[str, str], ServiceSpec] = {}
        for svc in services.values():
            if svc.previous_spec is not None:
                self.by_digest[svc.name, svc.previous_spec.digest] = svc.previous_spec
            self.by_digest[svc.name, self.digest(svc.spec)] = svc.spec
        if cluster is None:
            cluster = ClusterState(nodes, tasks, self.spec_of, rng)
        else:
            cluster.spec_of = self.spec_of
        self.cluster = cluster

    def node_ok(self, name: str | None) -> bool:
        node = self.nodes.get(name or "")
        return node is not None and node.schedulable

    def node_ready(self, name: str | None) -> bool:
        node = self.nodes.get(name or "")
        return node is not None and node.status is NodeStatus.READY

    def release(self, task: Task) -> None:
        self.cluster.release(task)
        self.pending.clear()

    def spec_of(self, task: Task) -> ServiceSpec | None:
        spec = self.by_digest.get((task.service, task.spec_version))
        if spec is None:
            svc = self.services.get(task.service)
            spec = svc.spec if svc is not None else None
        return spec

    def digest(self, spec: ServiceSpec) -> str:
        key = id(spec)
        d = self.digests.get(key)
        if d is None:
            d = self.digests[key] = spec.digest
        return d

    def new_task(self, spec: ServiceSpec, slot: int, attempt: int = 0) -> tuple[Task, Placed | None]:
        decision = self.blocked.get(spec.name) or self.decide(spec)
        if isinstance(decision, Placed):
            return Task(service=spec.name, slot=slot, id=self.new_id(), spec_version=self.digest(spec),
                        node=decision.node, state=TaskState.ASSIGNED, created_at=self.now, state_at=self.now,
                        attempt=attempt), decision
        return Task(service=spec.name, slot=slot, id=self.new_id(), spec_version=self.digest(spec),
                    created_at=self.now, state_at=self.now, attempt=attempt, error=decision.message), None

    def new_tasks(self, spec: ServiceSpec, slots: list[int]) -> list[tuple[Task, Placed | None]]:
        """New tasks for many slots of one service at once (Pipeline.place_many)."""
        if not slots:
            return []
        memo = self.blocked.get(spec.name) or self.pending.get(spec.name)
        decisions: list[Placed | Pending]
        if memo is not None:
            decisions = [memo] * len(slots)
        else:
            decisions = self.pipeline.place_many(self.cluster, self.cluster.request(spec), len(slots))
        digest = self.digest(spec)
        now = self.now
        out: list[tuple[Task, Placed | None]] = []
        for slot, d in zip(slots, decisions, strict=True):
            if isinstance(d, Placed):
                out.append((Task(service=spec.name, slot=slot, id=self.new_id(), spec_version=digest, node=d.node,
                                 state=TaskState.ASSIGNED, created_at=now, state_at=now), d))
            else:
                if d is not self.blocked.get(spec.name):
                    self.pending[spec.name] = d
                out.append((Task(service=spec.name, slot=slot, id=self.new_id(), spec_version=digest,
                                 created_at=now, state_at=now, error=d.message), None))
        return out

    def decide(self, spec: ServiceSpec) -> Placed | Pending:
        memo = self.pending.get(spec.name)
        if memo is not None:
            return memo
        decision = self.pipeline.place(self.cluster, self.cluster.request(spec))
        if isinstance(decision, Pending):
            self.pending[spec.name] = decision
        return decision

    def assign(self, spec: ServiceSpec, task: Task) -> tuple[Task, Placed | None]:
        blocked = None if task.id in self.addressed else self.blocked.get(spec.name)
        decision = blocked or self.decide(spec)
        if isinstance(decision, Placed):
            return task.with_(node=decision.node, state=TaskState.ASSIGNED, state_at=self.now, error=""), decision
        return task.with_(node=None, state=TaskState.PENDING, error=decision.message), None

    # -- the steps -------------------------------------------------------------------------------

    def run(self) -> Plan:
        by_service: dict[str, list[Task]] = defaultdict(list)
        for t in self.tasks:
            by_service[t.service].append(t)
        self.fence()
        for name in sorted(set(by_service) - set(self.services)):
            for t in by_service[name]:
                if t.desired_state is DesiredState.RUNNING:
                    self.release(t)
                    self.plan.actions.append(Stop(t, f"service {name} removed"))
                elif t.state.terminal or t.state is TaskState.PENDING or t.node not in self.nodes:
                    # As Swarm: a removed service's tasks go once stopped, and with them their
                    # containers (the dispatcher removes a container whose task is gone), its
                    # volumes' holds and its secrets' tmpfs.
                    self.plan.actions.append(Remove(t, f"service {name} removed"))
        for name in sorted(self.services):
            self.service(self.services[name], by_service.get(name, []))
        self.forget(by_service)
        return self.plan

    def fence(self) -> None:
        for t in self.tasks:
            if t.desired_state is DesiredState.SHUTDOWN and t.state.active and t.node \
                    and self.node_ready(t.node):
                self.plan.actions.append(Stop(t, f"stale copy of {t.name} on {t.node}", fence=True))

    def service(self, svc: Service, tasks: list[Task]) -> None:
        if svc.spec.mode is ServiceMode.GLOBAL:
            self.global_service(svc, tasks)
            return
        spec = svc.spec
        digest = self.digest(spec)
        slots: dict[int, list[Task]] = defaultdict(list)
        for t in tasks:
            if t.desired_state is DesiredState.RUNNING:
                slots[t.slot].append(t)
        touched: set[int] = set()

        # 2. move: tasks on nodes that are gone, down or drained
        for slot, group in sorted(slots.items()):
            for t in list(group):
                if not t.live or t.node is None or self.node_ok(t.node):
                    continue
                node = self.nodes.get(t.node)
                why = ("node removed" if node is None else
                       f"node {t.node} is down" if node.status is NodeStatus.DOWN else f"node {t.node} drained")
                self.release(t)
                group.remove(t)
                if any(o.live and o.node and self.node_ok(o.node) for o in group) or slot > spec.replicas:
                    self.plan.actions.append(Stop(t, why))
                    continue
                new, _ = self.new_task(spec, slot, t.attempt if t.spec_version == digest else 0)
                self.plan.actions.append(Migrate(t, new, why))
                group.append(new)
                touched.add(slot)

        # 3. retry pending tasks
        for slot, group in sorted(slots.items()):
            for i, t in enumerate(group):
                if t.live and t.node is None and slot <= spec.replicas and slot not in touched:
                    if t.spec_version != digest:
                        t = t.with_(spec_version=digest)
                    new, placed = self.assign(spec, t)
                    if new.node is not None or new.error != group[i].error or new.spec_version != group[i].spec_version:
                        self.plan.actions.append(Place(new, "retry pending" if new.node else new.error,
                                                       placed=placed))
                        group[i] = new
                    touched.add(slot)

        # 4. restart finished tasks
        for slot, group in sorted(slots.items()):
            if slot > spec.replicas or slot in touched or any(t.live for t in group):
                continue
            last = _newest(group)
            if last is None:
                continue
            restart, at, attempt = _restart_due(last, spec)
            if not restart:
                continue
            if at > self.now:
                self.plan.wake(at)
                touched.add(slot)
                continue
            new, placed = self.new_task(spec, slot, attempt)
            why = f"restart {last.name}: {last.state.value}" + (f" ({last.error})" if last.error else "")
            self.plan.actions.append(Place(new, why, replaces=last, placed=placed))
            group.append(new)
            touched.add(slot)

        # 5. scale
        for slot in sorted(slots):
            if slot > spec.replicas:
                for t in slots[slot]:
                    self.release(t)
                    self.plan.actions.append(Stop(t, f"scaled down to {spec.replicas}"))
        missing = [slot for slot in range(1, spec.replicas + 1) if slot not in slots]
        for slot, (new, placed) in zip(missing, self.new_tasks(spec, missing), strict=True):
            self.plan.actions.append(Place(new, f"scale to {spec.replicas}", placed=placed))
            slots[slot].append(new)
            touched.add(slot)

        self.start_first_leftovers(slots, digest)

        # 6. rolling update
        self.update(svc, digest, slots, touched)

    def start_first_leftovers(self, slots: dict[int, list[Task]], digest: str) -> None:
        """start-first leftovers: once the slot's current-spec task runs, the old one stops."""
        for slot in sorted(slots):
            group = [t for t in slots[slot] if t.live]
            fresh = [t for t in group if t.spec_version == digest and t.state is TaskState.RUNNING]
            if len(group) > 1 and fresh:
                keep = _newest(fresh)
                for t in group:
                    if t is not keep:
                        self.release(t)
                        slots[slot].remove(t)
                        self.plan.actions.append(Stop(t, f"replaced by {keep.id if keep else ''}"))

    def new_task_on(self, spec: ServiceSpec, slot: int, node: str, attempt: int = 0) -> Task | None:
        """A task of `spec` assigned to `node` when it fits there (every filter), else None."""
        ns = self.cluster.nodes.get(node)
        req = self.cluster.request(spec)
        if ns is None or self.pipeline.check(ns, req) is not None:
            return None
        self.cluster.assign(req, node)
        return Task(service=spec.name, slot=slot, id=self.new_id(), spec_version=self.digest(spec), node=node,
                    state=TaskState.ASSIGNED, created_at=self.now, state_at=self.now, attempt=attempt)

    def global_service(self, svc: Service, tasks: list[Task]) -> None:
        spec = svc.spec
        digest = self.digest(spec)
        req = self.cluster.request(spec)
        by_node: dict[str, list[Task]] = defaultdict(list)
        used = {t.slot for t in tasks if t.desired_state is DesiredState.RUNNING}
        for t in tasks:
            if t.desired_state is not DesiredState.RUNNING:
                continue
            if t.node is None:  # pending from before the service became global
                self.plan.actions.append(Stop(t, "a global service runs one task per node"))
                continue
            by_node[t.node].append(t)
        # 1. tasks on nodes that are gone, down, drained or no longer match -> stopped, not moved
        for name in sorted(by_node):
            node = self.nodes.get(name)
            ns = self.cluster.nodes.get(name)
            why = ("node removed" if node is None else f"node {name} is down" if node.status is NodeStatus.DOWN
                   else f"node {name} drained" if not node.schedulable
                   else f"node {name} no longer matches the constraints"
                   if ns is not None and spec.placement.constraints and filters.constraints(ns, req) is not None
                   else None)
            if why is None:
                continue
            for t in by_node.pop(name):
                if t.live:
                    self.release(t)
                    self.plan.actions.append(Stop(t, why))
        slots: dict[int, list[Task]] = defaultdict(list)
        touched: set[int] = set()
        free_slot = 1
        for name in sorted(self.nodes):
            if not self.nodes[name].schedulable:
                continue
            group = by_node.get(name, [])
            live = [t for t in group if t.live]
            if live:
                # one slot per node: a second one (two leaders' writes, a replicated past) stops
                keep_slot = min(t.slot for t in live)
                for t in live:
                    if t.slot != keep_slot:
                        self.release(t)
                        self.plan.actions.append(Stop(t, f"a global service runs one task per node ({name})"))
                    else:
                        slots[t.slot].append(t)
                continue
            last = _newest(group)
            if last is not None:  # 2. restart what finished here, as the restart policy says
                restart, at, attempt = _restart_due(last, spec)
                if not restart:
                    continue
                if at > self.now:
                    self.plan.wake(at)
                    continue
                new = self.new_task_on(spec, last.slot, name, attempt)
                if new is not None:
                    why = f"restart {last.name}: {last.state.value}" + (f" ({last.error})" if last.error else "")
                    self.plan.actions.append(Place(new, why, replaces=last))
                    slots[new.slot].append(new)
                    touched.add(new.slot)
                continue
            while free_slot in used:  # 3. a node without a task gets one
                free_slot += 1
            new = self.new_task_on(spec, free_slot, name)
            if new is not None:
                used.add(free_slot)
                self.plan.actions.append(Place(new, f"global: one task on {name}"))
                slots[new.slot].append(new)
                touched.add(new.slot)
        self.start_first_leftovers(slots, digest)
        # 4. rolling update, node by node: each new task on its old one's node
        self.update(svc, digest, slots, touched, live_slots=sorted(slots),
                    place=lambda slot, old: self.new_task_on(spec, slot, old.node or ""))

    def set_service(self, action: SetService) -> None:
        """One write per service per plan: a later decision in the pass replaces an earlier one
        (both were computed from the same stored value, so the later one already includes it)."""
        at = self.service_action.get(action.service.name)
        if at is None:
            self.service_action[action.service.name] = len(self.plan.actions)
            self.plan.actions.append(action)
        else:
            self.plan.actions[at] = action

    def settled(self, t: Task, cfg: UpdateConfig, spec: ServiceSpec) -> bool:
        if t.state is not TaskState.RUNNING or t.healthy is False:
            return False
        if spec.healthcheck is not None and spec.healthcheck.enabled and t.healthy is not True:
            return False
        return self.now - t.started_at >= cfg.monitor

    def update(self, svc: Service, digest: str, slots: dict[int, list[Task]], touched: set[int], *,
               live_slots: Iterable[int] | None = None,
               place: Callable[[int, Task], Task | None] | None = None) -> None:
        spec = svc.spec
        status = svc.update
        cfg = spec.rollback_config if status.state.rolling_back else spec.update_config
        live_slots = list(range(1, spec.replicas + 1) if live_slots is None else live_slots)
        outdated: list[tuple[int, Task]] = []
        for slot in live_slots:
            group = [t for t in slots.get(slot, []) if t.live]
            if group and all(t.spec_version != digest for t in group) and slot not in touched:
                old = _newest(group)
                assert old is not None
                outdated.append((slot, old))
        rolling = status.target == digest and status.state in (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED)
        changed = svc.previous_spec is not None and self.digest(svc.previous_spec) != digest
        if status.target != digest and (outdated or changed):
            # A new spec reached tasks that run an older one: an update begins now.
            state = UpdateState.ROLLBACK_STARTED if status.state.rolling_back else UpdateState.UPDATING
            status = UpdateStatus(state=state, target=digest, started_at=self.now,
                                  message="rollback started" if state.rolling_back else "update in progress")
            self.set_service(SetService(replace(svc, update=status), f"update {spec.name} to {digest}"))
            rolling = True
        if not rolling:
            return
        since = status.started_at
        batch = [t for s in live_slots for t in slots.get(s, [])
                 if t.spec_version == digest and t.created_at >= since]
        failed = [t for t in batch if t.state in (TaskState.FAILED, TaskState.REJECTED)
                  or (t.state is TaskState.RUNNING and t.healthy is False)]
        failed = [t for t in failed if not t.started_at or t.state_at - t.started_at < cfg.monitor
                  or t.healthy is False]
        if failed and cfg.failure_action is not FailureAction.CONTINUE \
                and len(failed) > cfg.max_failure_ratio * max(1, len(batch)):
            culprit = failed[0]
            why = f"{culprit.name} {culprit.state.value}" + (f": {culprit.error}" if culprit.error else "")
            if cfg.failure_action is FailureAction.ROLLBACK and not status.state.rolling_back \
                    and svc.previous_spec is not None:
                back = Service(spec=svc.previous_spec, version=svc.version + 1, previous_spec=spec,
                               update=UpdateStatus(UpdateState.ROLLBACK_STARTED, svc.previous_spec.digest,
                                                   self.now, f"rollback: update failed: {why}"),
                               created_at=svc.created_at, mod_revision=svc.mod_revision)
                self.set_service(SetService(back, f"roll back {spec.name}: {why}"))
            else:
                paused = UpdateState.ROLLBACK_PAUSED if status.state.rolling_back else UpdateState.PAUSED
                self.set_service(SetService(
                    replace(svc, update=replace(status, state=paused, message=f"update paused: {why}")),
                    f"pause update of {spec.name}: {why}"))
            return
        in_flight = [t for t in batch if t.live and not self.settled(t, cfg, spec)]
        for t in in_flight:
            if t.state is TaskState.RUNNING:
                self.plan.wake(t.started_at + cfg.monitor)
        if not outdated:
            current = all(any(t.live and t.spec_version == digest for t in slots.get(s, [])) for s in live_slots)
            if not in_flight and current:
                done = UpdateState.ROLLBACK_COMPLETED if status.state.rolling_back else UpdateState.COMPLETED
                message = done.value.replace("_", " ")
                if status.message.startswith("rollback: update failed"):  # keep why it rolled back
                    message += ": " + status.message.removeprefix("rollback: ")
                self.set_service(SetService(
                    replace(svc, update=replace(status, state=done, message=message)),
                    f"{spec.name} is at {digest}"))
            return
        if in_flight:
            return
        settled_at = max((t.started_at + cfg.monitor for t in batch if t.started_at), default=0.0)
        if batch and self.now < settled_at + cfg.delay:
            self.plan.wake(settled_at + cfg.delay)
            return
        size = cfg.parallelism or len(outdated)
        for slot, old in outdated[:size]:
            stop_first = cfg.order is UpdateOrder.STOP_FIRST
            if stop_first:
                self.release(old)
            if place is None:
                new, _ = self.new_task(spec, slot)
            else:
                placed = place(slot, old)
                if placed is None:  # the new spec does not fit where the old task runs
                    if stop_first:
                        self.cluster.hold(old)
                    continue
                new = placed
            self.plan.actions.append(Update(old, new, stop_old=stop_first))

    def forget(self, by_service: dict[str, list[Task]]) -> None:
        for name, tasks in by_service.items():
            if name not in self.services:
                continue  # removed service: run() has its tasks
            per_slot: dict[int, list[Task]] = defaultdict(list)
            for t in tasks:
                if t.desired_state is not DesiredState.SHUTDOWN:
                    continue
                if t.node is not None and t.node not in self.nodes:
                    # its node was removed from the cluster: no agent will ever report on it
                    self.plan.actions.append(Remove(t, f"node {t.node} removed"))
                elif t.state.terminal or t.state is TaskState.PENDING:
                    per_slot[t.slot].append(t)
            for group in per_slot.values():
                group.sort(key=lambda t: (t.created_at, t.id), reverse=True)
                for t in group[self.history:]:
                    self.plan.actions.append(Remove(t, "history limit"))


def reconcile(services: Mapping[str, Service], tasks: Iterable[Task], nodes: Iterable[Node], now: float, *,
              new_id: IdFactory, rng: random.Random, pipeline: Pipeline | None = None,
              history: int = 5, cluster: ClusterState | None = None,
              blocked: Mapping[str, str] | None = None, addressed: Collection[str] = ()) -> Plan:
    """Decide what has to change so that `tasks` on `nodes` become what `services` ask for.

    `cluster` lets a long-running scheduler keep node usage between passes (updated as plans are
    applied) instead of rebuilding it from every task each time; it must already count `tasks`
    of other services. Without it, usage is computed from `tasks`. `blocked` (service -> why) keeps
    a service's new and pending tasks pending whatever the nodes (no free address on its network),
    except its tasks in `addressed` (ids of tasks that hold all their addresses).
    """
    return _Pass(services, list(tasks), list(nodes), now, new_id, rng, pipeline or Pipeline(), history,
                 cluster, blocked, addressed).run()


def apply(plan: Plan, services: Mapping[str, Service], tasks: Iterable[Task]
          ) -> tuple[dict[str, Service], dict[str, Task]]:
    """What the store holds after `plan` is written: the executor's meaning, without etcd.

    Tests and the simulator use it; the executor must write exactly this.
    """
    svcs = dict(services)
    out = {t.id: t for t in tasks}
    for a in plan.actions:
        for tid, value in task_writes(a):
            if value is None:
                out.pop(tid, None)
            else:
                out[tid] = value
        if isinstance(a, SetService):
            svcs[a.service.name] = a.service
    return svcs, out


def task_writes(action: Action) -> list[tuple[str, Task | None]]:
    """The task values an action writes (None: delete). Shared by apply() and the executor."""
    shut = DesiredState.SHUTDOWN
    if isinstance(action, Place):
        out: list[tuple[str, Task | None]] = [(action.task.id, action.task)]
        if action.replaces is not None and action.replaces.desired_state is not shut:
            out.append((action.replaces.id, action.replaces.with_(desired_state=shut)))
        return out
    if isinstance(action, Stop):
        if action.fence or action.task.desired_state is shut:
            return []
        return [(action.task.id, action.task.with_(desired_state=shut, error=action.why))]
    if isinstance(action, Update):
        out = [(action.new.id, action.new)]
        if action.stop_old:
            out.append((action.old.id, action.old.with_(desired_state=shut, error="updated")))
        return out
    if isinstance(action, Migrate):
        return [(action.new.id, action.new),
                (action.old.id, action.old.with_(desired_state=shut, error=action.why))]
    if isinstance(action, Remove):
        return [(action.task.id, None)]
    return []


def new_service(spec: ServiceSpec, now: float) -> Service:
    return Service(spec=spec, version=1, created_at=now)


def update_service(svc: Service, spec: ServiceSpec) -> Service:
    """`service update` / a redeploy: the new spec, the old one kept for rollback. Unchanged -> same."""
    if spec == svc.spec:
        return svc
    # A new spec after a paused update or a rollback is a new update (rolled out with update_config),
    # not the rollback going on.
    done = svc.update.state.paused or svc.update.state.rolling_back
    status = replace(svc.update, state=UpdateState.NONE, target="") if done else svc.update
    return replace(svc, spec=spec, version=svc.version + 1, previous_spec=svc.spec, update=status)


def rollback_service(svc: Service, now: float) -> Service | None:
    """`service rollback`: back to the previous spec, rolled out with rollback_config. None: nothing to go back to."""
    if svc.previous_spec is None:
        return None
    return replace(svc, spec=svc.previous_spec, version=svc.version + 1, previous_spec=svc.spec,
                   update=UpdateStatus(UpdateState.ROLLBACK_STARTED, svc.previous_spec.digest, now,
                                       "manual rollback"))


def plan_migration(task: Task, services: Mapping[str, Service], tasks: Iterable[Task], nodes: Iterable[Node],
                   now: float, *, new_id: IdFactory, rng: random.Random, to: str | None = None,
                   pipeline: Pipeline | None = None) -> Migrate | Pending:
    """`dockyard migrate web.1 [--to host3]`: where the task goes, through the same filters and scorers.

    The new task keeps the old one's spec version, so a migration never doubles as an update; how it
    moves (cold export/import or live CRIU) is the migration module's business, not this decision's.
    Raises ValueError for a task that is not running or whose service is gone (a user error);
    a target that does not fit is a Pending with the reason, like any placement.
    """
    svc = services.get(task.service)
    if svc is None:
        raise ValueError(f"service {task.service} of {task.name} no longer exists")
    if not task.live or task.node is None:
        raise ValueError(f"{task.name} is not running on a node ({task.state.value})")
    spec = svc.spec
    if svc.previous_spec is not None and svc.previous_spec.digest == task.spec_version:
        spec = svc.previous_spec
    node_list = list(nodes)

    def spec_of(t: Task) -> ServiceSpec | None:
        # each task holds what its own service's spec reserves (ports, resources), not this one's
        s = services.get(t.service)
        if s is None:
            return None
        if s.previous_spec is not None and s.previous_spec.digest == t.spec_version:
            return s.previous_spec
        return s.spec

    cluster = ClusterState(node_list, tasks, spec_of, rng)
    extra = [constraint_lang.parse(f"node.id != {task.node}")]
    if to is not None:
        if to == task.node:
            raise ValueError(f"{task.name} already runs on {to}")
        extra.append(constraint_lang.parse(f"node.id == {to}"))
    base = cluster.request(spec)
    req = replace(base, constraints=base.constraints + tuple(extra))
    decision = (pipeline or Pipeline()).place(cluster, req)
    if isinstance(decision, Pending):
        return decision
    new = Task(service=task.service, slot=task.slot, id=new_id(), spec_version=task.spec_version,
               node=decision.node, state=TaskState.ASSIGNED, created_at=now, state_at=now, attempt=task.attempt)
    return Migrate(task, new, f"migrate {task.name} from {task.node} to {decision.node}")
