"""Applies a reconcile Plan to etcd: guarded transactions, batched, retried on conflict.

An action's writes (a new task and the one it replaces) always share one transaction, so a
restart or a migration is never half-written. Actions are packed into transactions of at most
128 ops, several in flight. A transaction that loses its guard is split: each of its actions is
retried alone after re-reading what moved. The retry keeps the decision only if what the decision
was based on still holds (same node, desired state and spec); what agents reported meanwhile
(observed state, exit code, health) is kept, not overwritten. Otherwise the action is dropped and
reported: the next reconcile pass decides again from fresh state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from scheduler import codec
from scheduler.model import DesiredState, Task, TaskState
from scheduler.reconcile import Action, Migrate, Place, Plan, Remove, SetService, Stop, Update, task_writes
from scheduler.store import MAX_TXN_OPS, Conflict, Op, Store

# What agents write (through the servicer); a retried decision keeps the newer values of these.
OBSERVED = ("state", "state_at", "started_at", "container_id", "exit_code", "healthy", "error")
# What a decision was based on; if any of these moved, the decision is void.
DECIDED = ("service", "slot", "node", "desired_state", "spec_version")


@dataclass(slots=True)
class _Write:
    planned: Task | None  # None: delete
    original: Task | None  # the value the plan was computed from; None for a new task
    task_id: str
    service: str


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0  # actions fully written
    retried: int = 0  # actions written after a conflict and a re-read
    dropped: list[tuple[Action, str]] = field(default_factory=list)  # to be decided again
    revision: int = 0
    transactions: int = 0


def rebase(planned: Task, original: Task | None, current: Task) -> Task | None:
    """The planned write, re-based on what etcd holds now, or None if the decision no longer holds."""
    if original is None:
        # A pending task being placed: only while it is still pending and wanted.
        if current.node is not None or current.state is not TaskState.PENDING \
                or current.desired_state is not planned.desired_state:
            return None
        return replace(planned, mod_revision=current.mod_revision)
    for f in DECIDED:
        if getattr(current, f) != getattr(original, f):
            return None
    keep = {f: getattr(current, f) for f in OBSERVED if getattr(planned, f) == getattr(original, f)}
    return replace(planned, mod_revision=current.mod_revision, **keep)


def _originals(action: Action) -> dict[str, Task]:
    if isinstance(action, Stop | Remove):
        return {action.task.id: action.task}
    if isinstance(action, Update | Migrate):
        return {action.old.id: action.old}
    if isinstance(action, Place) and action.replaces is not None:
        return {action.replaces.id: action.replaces}
    return {}


class Executor:
    def __init__(self, store: Store, *, concurrency: int = 8, retries: int = 5,
                 batch: int = MAX_TXN_OPS) -> None:
        self.store = store
        self.concurrency = concurrency
        self.retries = retries
        self.batch = batch

    def _writes(self, action: Action) -> list[_Write]:
        originals = _originals(action)
        out = []
        for tid, value in task_writes(action):
            orig = originals.get(tid)
            known = value if value is not None else orig
            assert known is not None
            # A planned value with a revision but no original is an existing pending task, placed.
            out.append(_Write(value, orig, tid, known.service))
        return out

    def _ops(self, action: Action, writes: list[_Write]) -> list[Op]:
        ops: list[Op] = []
        for w in writes:
            if w.planned is None:
                assert w.original is not None
                ops.append(self.store.delete_task_op(w.original))
            else:
                ops.append(self.store.put_task_op(w.planned))
        if isinstance(action, SetService):
            ops.append(self.store.put_service_op(action.service))
        return ops

    async def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        units: list[tuple[Action, list[_Write], list[Op]]] = []
        for action in plan.actions:
            if type(action) is Place and action.replaces is None and not action.task.mod_revision:
                # The common case by far (a new task): one create, nothing to re-base.
                t = action.task
                units.append((action, [_Write(t, None, t.id, t.service)], [self.store.put_task_op(t)]))
                continue
            writes = self._writes(action)
            ops = self._ops(action, writes)
            if ops:
                units.append((action, writes, ops))
            else:
                result.applied += 1  # nothing to write (a fence: only the agent acts)
        # etcd refuses a transaction that names one key twice: later writes to a key go in a later round.
        while units:
            seen: set[bytes] = set()
            now, later = [], []
            for u in units:
                keys = {op.key for op in u[2]}
                if keys & seen:
                    later.append(u)
                else:
                    seen |= keys
                    now.append(u)
            await self._round(now, result)
            units = later
        return result

    async def _round(self, units: list[tuple[Action, list[_Write], list[Op]]], result: ApplyResult) -> None:
        ops = [op for _, _, o in units for op in o]
        sizes = [len(o) for _, _, o in units]
        batches = await self.store.commit_batches(ops, batch=self.batch, concurrency=self.concurrency,
                                                  group=sizes)
        result.revision = max(result.revision, batches.revision)
        result.transactions += batches.transactions
        lost = {id(op) for b, _ in batches.conflicts for op in b}
        for action, writes, o in units:
            if not o or id(o[0]) not in lost:
                result.applied += 1
                continue
            await self._retry(action, writes, o, result)

    async def _retry(self, action: Action, writes: list[_Write], ops: list[Op], result: ApplyResult) -> None:
        for _ in range(self.retries):
            try:
                rev = await self.store.commit(ops)
            except Conflict as c:
                why = await self._rebase(action, writes, c)
                if why:
                    result.dropped.append((action, why))
                    return
                ops = self._ops(action, writes)
                continue
            result.revision = max(result.revision, rev)
            result.applied += 1
            result.retried += 1
            return
        result.dropped.append((action, f"still conflicting after {self.retries} retries"))

    async def _rebase(self, action: Action, writes: list[_Write], conflict: Conflict) -> str:
        """Re-read what moved and re-base the writes in place; a reason if the action is void."""
        if isinstance(action, SetService):
            return f"service {action.service.name} changed meanwhile"
        moved = set(conflict.keys)
        for w in writes:
            key = self.store.keys.task(w.service, w.task_id)
            if key not in moved:
                continue
            current = await self.store.get_task(w.service, w.task_id)
            if current is None:
                return f"task {w.task_id} is gone"
            if w.planned is None:
                assert w.original is not None
                if current.desired_state is not DesiredState.SHUTDOWN or not current.state.terminal:
                    return f"task {w.task_id} is no longer finished"
                w.original = current
                continue
            if w.original is None and w.planned.mod_revision == 0:
                return f"task id {w.task_id} already exists"
            rebased = rebase(w.planned, w.original, current)
            if rebased is None:
                return f"task {current.name} ({w.task_id}) changed meanwhile"
            w.planned = rebased
            if w.original is not None:
                w.original = replace(current)
        return ""


def task_json_size(task: Task) -> int:
    """Bytes one task takes in etcd (for capacity estimates)."""
    return len(json.dumps(codec.encode_task(task), separators=(",", ":")))

