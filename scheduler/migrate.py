"""Moving a task to another node through the scheduler: `dockyard migrate`, `node drain`, `rebalance`.

    record    one guarded txn: /dockyard/migrations/<id> (task, from, to, mode, phase) is created only
              if absent, and the task is re-put guarded by its mod_revision (unchanged since we decided)
    run       the leader calls the source agent's MigrateContainer(target = the target node's address):
              the agent keeps the container's name (so the dispatcher matches it on the target), and
              removes its own copy only once the target runs it, rolling back otherwise
    switch    (live) once the source says the task is frozen: phase "switched", and the network map
              points the task's cluster addresses at the target (before the target restores it)
    finish    one txn: the task's node and container id move to the target, the record is deleted
    recover   a record with no migration running for it (a new leader, or this one after an error):
              the container running on the target -> finish (and make sure the source copy is gone);
              else make sure the source copy runs (restore from its checkpoint, or start it), remove
              any copy left on the target, delete the record. A source node that is down: the record
              is dropped and the task is replaced like any task of a lost node (fenced on return).

While a record exists the dispatcher leaves the task's containers alone on both nodes, reports about
the task are not written (a checkpointed container reads as exited), and the leader loop does not
act on the task. Live needs CRIU on both ends, the same cgroup version and architecture, a target kernel
no older and a target CPU with every feature of the source's (choose_mode); else cold, and we say why.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc

from common import faults
from protos import agent_pb2 as apb
from protos import cluster_pb2 as pb
from scheduler.dispatch import TASK_LABEL, Agents, container_name
from scheduler.metrics import SchedulerMetrics
from scheduler.model import Availability, DesiredState, Migration, Node, NodeStatus, Task, TaskState
from scheduler.store import Conflict, Delete, Op, Put, Store, StoreError
from scheduler.view import View

log = logging.getLogger("dockyard.scheduler.migrate")

CALL_TIMEOUT = 10.0
GRANT_SECONDS = 300.0  # a migration's agent-to-agent calls all start within this (common/grants.py)


class MigrationError(Exception):
    """A migration that cannot start (a user error: the message says why)."""


def choose_mode(source: Node, target: Node, asked: str) -> tuple[str, str]:
    """(mode, why not live) for a move from source to target; asked is live, cold or "" (auto).

    Live needs a working CRIU on both nodes, the same cgroup version (the restored tree's cgroup
    paths and controllers must exist on the target), the same architecture, a target kernel no
    older than the source's (the process may use what the source kernel offers: syscalls, /proc
    files, socket options), and every CPU feature of the source on the target (a process keeps
    the instructions it picked at start: without one it dies of SIGILL after the move)."""
    why = _why_not_live(source, target)
    if asked == "live" and why:
        raise MigrationError(f"cannot migrate live: {why}")
    if asked == "cold":
        return "cold", ""
    return ("cold", why) if why else ("live", "")


def _why_not_live(source: Node, target: Node) -> str:
    s, t = source.capabilities, target.capabilities
    if not s.criu:
        return f"{source.name} has no working CRIU"
    if not t.criu:
        return f"{target.name} has no working CRIU"
    if s.cgroup_version != t.cgroup_version:
        return f"cgroup v{s.cgroup_version} on {source.name}, v{t.cgroup_version} on {target.name}"
    if source.arch != target.arch:
        return f"{source.name} is {source.arch}, {target.name} is {target.arch}"
    if not s.kernel or not t.kernel:
        unknown = source.name if not s.kernel else target.name
        return f"{unknown}'s kernel is unknown (its agent is too old to say)"
    if kernel_version(t.kernel) < kernel_version(s.kernel):
        return f"{target.name}'s kernel {t.kernel} is older than {source.name}'s {s.kernel}"
    missing = sorted(set(s.cpu_features) - set(t.cpu_features))
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        return f"{target.name}'s CPU lacks {shown}, which {source.name}'s has"
    return ""


def kernel_version(release: str) -> tuple[int, ...]:
    """"6.18.44-fc-v782" -> (6, 18, 44)."""
    m = re.match(r"\d+(?:\.\d+)*", release)
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def progress(m: Migration, phase: str, message: str = "", **kw: Any) -> pb.MigrationProgress:
    return pb.MigrationProgress(migration_id=m.id, task=m.task_name, task_id=m.task_id, from_node=m.source,
                                to_node=m.target, mode=m.mode, phase=phase, message=message, **kw)


def _code(e: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = e.code()
    return code


class Migrator:
    """The leader's migrations: run them, and finish or roll back recorded ones nobody runs."""

    def __init__(self, view: View, store: Store, agents: Agents, metrics: SchedulerMetrics, *, replica: str,
                 clock: Callable[[], float] = time.time, recover_every: float = 1.0) -> None:
        self.view = view
        self.store = store
        self.agents = agents
        self.metrics = metrics
        self.replica = replica
        self.clock = clock
        self.recover_every = recover_every
        self.running: dict[str, asyncio.Task[Any]] = {}  # migration id -> its runner, here
        self.faults = faults.FAULTS  # tests pause migrations at a phase (common/faults.py)

    async def _pause(self, m: Migration, phase: str) -> None:
        svc = self.view.services.get(m.service)
        secs = self.faults.migration_pause(dict(svc.spec.labels), phase) if svc is not None else 0.0
        if secs:
            log.warning("fault injection: migration %s pauses %s s at phase %s", m.id, secs, phase)
            await asyncio.sleep(secs)

    # --- deciding ------------------------------------------------------------------------------

    def plan(self, t: Task, to: str, asked: str) -> Migration:
        v = self.view
        if t.desired_state is not DesiredState.RUNNING or t.state is not TaskState.RUNNING or not t.node:
            raise MigrationError(f"{t.name} is not running on a node ({t.state.value})")
        if any(m.task_id == t.id for m in v.migrations.values()):
            raise MigrationError(f"{t.name} is being migrated already")
        source = v.nodes.get(t.node)
        if source is None or source.status is not NodeStatus.READY:
            raise MigrationError(f"{t.name}'s node {t.node} is not ready")
        if not to:
            to = self.placement_target(t)
        if to == t.node:
            raise MigrationError(f"{t.name} already runs on {to}")
        target = v.nodes.get(to)
        if target is None:
            raise MigrationError(f"node {to} not found")
        if target.status is not NodeStatus.READY:
            raise MigrationError(f"node {to} is not ready")
        if target.availability is not Availability.ACTIVE:
            raise MigrationError(f"node {to} is {target.availability.value}: no tasks are placed there")
        mode, why = choose_mode(source, target, asked)
        return Migration(id=secrets.token_hex(6), task_id=t.id, service=t.service, slot=t.slot, source=t.node,
                         target=to, mode=mode, phase="recorded", reason=why, started_at=self.clock(),
                         leader=self.replica)

    def placement_target(self, t: Task) -> str:
        """Where the placement pipeline would put this task, off its node (filters and scorers)."""
        import random

        from scheduler.reconcile import Migrate, plan_migration

        v = self.view
        decision = plan_migration(t, v.services, list(v.tasks.values()), v.node_list(), self.clock(),
                                  new_id=lambda: "x", rng=random.Random())
        if not isinstance(decision, Migrate):
            raise MigrationError(f"{t.name} fits on no other node: {decision.message}")
        assert decision.new.node is not None
        return decision.new.node

    # --- running -------------------------------------------------------------------------------

    async def record(self, m: Migration, t: Task) -> Migration:
        """The record and the unchanged task in one txn guarded by both: the task is still where
        and as we decided (a report that changed nothing that matters is re-read and retried)."""
        for _ in range(5):
            cur = await self.store.get_task(t.service, t.id)
            if cur is None or cur.node != m.source or not cur.live or cur.state is not TaskState.RUNNING:
                raise MigrationError(f"{t.name} is no longer running on {m.source}")
            try:
                rev = await self.store.commit([Put(self.store.keys.migration(m.id), m.encode(), 0),
                                               self.store.put_task_op(cur)])
            except Conflict:
                await asyncio.sleep(0.05)
                continue
            await self.view.wait_revision(rev)
            return replace(m, mod_revision=rev)
        raise MigrationError(f"{t.name} keeps changing while the migration is recorded; try again")

    async def _set_phase(self, m: Migration, phase: str) -> Migration:
        new = replace(m, phase=phase, leader=self.replica)
        rev = await self.store.commit([Put(self.store.keys.migration(m.id), new.encode(), m.mod_revision)])
        return replace(new, mod_revision=rev)

    async def run(self, t: Task, to: str, asked: str) -> AsyncIterator[pb.MigrationProgress]:
        """Plan, record and run one migration, yielding its progress."""
        t = self.view.tasks.get(t.id, t)
        m = self.plan(t, to, asked)
        if m.reason:
            yield progress(m, "planned", f"cold, not live: {m.reason}")
        m = await self.record(m, t)
        yield progress(m, "recorded", f"{m.task_name}: {m.source} -> {m.target} ({m.mode})")
        queue: asyncio.Queue[pb.MigrationProgress | None] = asyncio.Queue()
        runner = asyncio.create_task(self._execute(m, queue.put_nowait))
        self.running[m.id] = runner
        runner.add_done_callback(lambda _t: queue.put_nowait(None))
        try:
            while (p := await queue.get()) is not None:
                yield p
        finally:
            if not runner.done():  # the caller went away: the migration goes on (it is recorded)
                runner.add_done_callback(self._forget(m.id))
            else:
                self.running.pop(m.id, None)

    def _forget(self, mid: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(_t: asyncio.Task[Any]) -> None:
            self.running.pop(mid, None)

        return done

    async def _execute(self, m: Migration, emit: Callable[[pb.MigrationProgress], None]) -> None:
        t0 = time.monotonic()
        try:
            await self._pause(m, "recorded")
            m = await self._set_phase(m, "running")
            await self._pause(m, "running")
            source, target = self.view.nodes[m.source], self.view.nodes[m.target]
            stub = self.agents.stub(source.address, source.agent_id)
            done: apb.MigrateProgress | None = None
            grant = self._grant(m, source, target)
            call = stub.MigrateContainer(apb.MigrateRequest(id=self._container(m), target=target.address,
                                                            live=m.mode == "live", target_node=target.agent_id,
                                                            grant=grant, crl=await self._crl(grant)), timeout=600)
            async for p in call:
                if p.phase == "done":
                    done = p
                    continue
                if p.phase == "frozen" and m.mode == "live":
                    m = await self._switch(m)
                elif p.phase == "rollback" and m.phase == "switched":
                    m = await self._switch(m, back=True)
                emit(progress(m, p.phase, p.message, bytes=p.bytes, total=p.total))
            if done is None:
                raise StoreError("the source agent ended the migration without a result")
            await self._pause(m, "finishing")
            await self._finish(m, done.new_id)
            self.metrics.migration(m.mode, "succeeded", downtime=done.downtime_seconds)
            log.info("migrated %s %s -> %s (%s): downtime %.0f ms, total %.2f s", m.task_name, m.source,
                     m.target, m.mode, done.downtime_seconds * 1000, time.monotonic() - t0)
            emit(progress(m, "done", f"{m.task_name} runs on {m.target}", downtime_seconds=done.downtime_seconds,
                          total_seconds=time.monotonic() - t0))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            why = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            log.warning("migration %s of %s failed: %s; recovering", m.id, m.task_name, why)
            emit(progress(m, "failed", why or type(e).__name__))
            outcome = await self.recover_until_settled(m)
            self.metrics.migration(m.mode, "failed" if outcome != "finished" else "succeeded")
            phase = {"rolled": "rolled_back"}.get(outcome.split(" ")[0], outcome.split(" ")[0])
            emit(progress(m, phase, f"{m.task_name}: {outcome}", total_seconds=time.monotonic() - t0))

    async def _crl(self, grant: bytes) -> bytes:
        """Over TLS (a grant is made): the CRL of removed nodes' certificates, made now, that the
        source's CRIU page server checks clients against (scheduler/tls.py revocation_list)."""
        if not grant:
            return b""
        from scheduler.tls import revocation_list

        return await revocation_list(self.store)

    def _grant(self, m: Migration, source: Node, target: Node) -> bytes:
        """Over TLS, what lets the source agent drive the target for this one move: signed with this
        replica's scheduler key, for this container, source and target, for GRANT_SECONDS."""
        bundle = getattr(getattr(self.agents, "identity", None), "tls", None)  # agents: a fake in plan tests
        if bundle is None:
            return b""
        from common import grants

        t = self.view.tasks.get(m.task_id)
        name = container_name(t) if t is not None else f"{m.task_name}.{m.task_id}"
        return grants.sign(bundle, grants.Grant(migration=m.id, container=name, source=source.agent_id,
                                                target=target.agent_id, not_after=self.clock() + GRANT_SECONDS))

    async def _switch(self, m: Migration, back: bool = False) -> Migration:
        """The source froze the task and locked its network: from now on every host sends to its
        cluster addresses on the target (the network map follows this phase, scheduler/network.py
        endpoints), while the archive goes and the target restores behind its own lock (agent/
        checkpoint/netlock.py). So peers are pointed at the target before the restored sockets
        take packets, and none is sent to a host where nothing can answer any more.

        back: the source reports a rollback (the target failed; its own copy runs on): the
        addresses point at the source again at once, not only once recovery has settled the
        record (which waits for an unreachable target to answer or be declared down)."""
        t0 = time.monotonic()
        m = await self._set_phase(m, "running" if back else "switched")
        await self.view.wait_revision(m.mod_revision)
        log.info("migration %s: %s's addresses point at %s (%.0f ms)", m.id, m.task_name,
                 m.source if back else m.target, (time.monotonic() - t0) * 1000)
        return m

    def _container(self, m: Migration) -> str:
        t = self.view.tasks.get(m.task_id)
        return t.container_id if t is not None and t.container_id else f"{m.task_name}.{m.task_id}"

    async def _finish(self, m: Migration, new_id: str) -> None:
        """One txn: the task now lives on the target (its new container id), the record goes."""
        for _ in range(10):
            t = await self.store.get_task(m.service, m.task_id)
            rec = await self.store.get_raw(self.store.keys.migration(m.id))
            if rec is None:
                return  # finished (or rolled back) by someone else
            ops: list[Op] = [Delete(self.store.keys.migration(m.id), rec[1])]
            if t is not None:
                ops.append(self.store.put_task_op(t.with_(node=m.target, container_id=new_id or t.container_id,
                                                          state=TaskState.RUNNING, state_at=self.clock())))
            try:
                rev = await self.store.commit(ops)
                await self.view.wait_revision(rev)
                return
            except Conflict:
                await asyncio.sleep(0.05)
        raise StoreError(f"migration {m.id}: the task keeps changing; not finished")

    async def _drop(self, m: Migration) -> None:
        rec = await self.store.get_raw(self.store.keys.migration(m.id))
        if rec is not None:
            rev = await self.store.commit([Delete(self.store.keys.migration(m.id), rec[1])])
            await self.view.wait_revision(rev)

    # --- recovery ------------------------------------------------------------------------------

    async def watch(self, active: Callable[[], bool]) -> None:
        """While leading: every recorded migration that is not running here is finished or rolled back."""
        while True:
            await asyncio.sleep(self.recover_every)
            if not active() or not self.view.loaded.is_set() or not self.view.etcd_ok:
                continue
            for mid, m in list(self.view.migrations.items()):
                if mid in self.running:
                    continue
                log.info("migration %s of %s (%s -> %s, phase %s) has no runner here: recovering",
                         mid, m.task_name, m.source, m.target, m.phase)
                task = asyncio.create_task(self.recover_until_settled(m))
                self.running[mid] = task
                task.add_done_callback(self._forget(mid))

    async def recover_until_settled(self, m: Migration) -> str:
        delay = 0.5
        while True:
            try:
                outcome = await self.recover(m)
                if outcome:
                    log.info("migration %s of %s: %s", m.id, m.task_name, outcome)
                    return outcome
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("recovering migration %s of %s: %s", m.id, m.task_name, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def _held(self, node: Node, task_id: str) -> list[apb.ContainerSummary] | None:
        """The task's containers on the node; None when its agent does not answer."""
        try:
            r = await self.agents.stub(node.address, node.agent_id).ListContainers(
                apb.ListContainersRequest(all=True, filters={"label": f"{TASK_LABEL}={task_id}"}),
                timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError:
            return None
        return [c for c in r.containers if c.labels.get(TASK_LABEL) == task_id]

    async def recover(self, m: Migration) -> str:
        """One attempt: "finished", "rolled back", "dropped", or "" (try again later)."""
        v = self.view
        if m.id not in v.migrations and await self.store.get_raw(self.store.keys.migration(m.id)) is None:
            return "settled elsewhere"
        source, target = v.nodes.get(m.source), v.nodes.get(m.target)
        on_target = await self._held(target, m.task_id) if target is not None else []
        on_source = await self._held(source, m.task_id) if source is not None else []
        running_target = [c for c in on_target or [] if c.state in ("running", "paused")]
        if running_target:
            # The target runs it: the move happened. The source copy must go before we say so.
            if on_source is None:
                return ""  # wait for the source agent (or for its node to be declared down)
            assert source is not None
            for c in on_source:
                await self.agents.stub(source.address, source.agent_id).RemoveContainer(
                    apb.RemoveContainerRequest(id=c.id, force=True), timeout=CALL_TIMEOUT)
            await self._finish(m, running_target[0].id)
            return "finished"
        if on_source is None:
            if source is None or source.status is NodeStatus.DOWN:
                # The source host is gone: the task is replaced like any task of a lost node.
                if on_target is not None and target is not None:
                    await self._remove_all(target, on_target)
                await self._drop(m)
                return "dropped (source node down: the task is replaced elsewhere)"
            return ""
        # Not on the target: the source copy must run. Remove what the target holds first.
        if on_target is None and target is not None and target.status is not NodeStatus.DOWN:
            return ""  # the target agent may still be restoring it: wait until it answers (or is down)
        # (a down target's copy, if it made one, is fenced by the dispatcher when the node returns:
        # the task is the source's again once the record is gone)
        assert source is not None
        if on_target and target is not None:
            await self._remove_all(target, on_target)
        stub = self.agents.stub(source.address, source.agent_id)
        for c in on_source:
            if c.state in ("running", "paused"):
                break
            try:
                await stub.RestoreContainer(self._restore_ref(c.id), timeout=60)
                log.info("migration %s: %s restored from its checkpoint on %s", m.id, m.task_name, m.source)
            except grpc.aio.AioRpcError as e:
                if _code(e) != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                await stub.StartContainer(apb.ContainerRef(id=c.id), timeout=60)
                log.info("migration %s: %s started again on %s", m.id, m.task_name, m.source)
            break
        else:
            if not on_source:
                # No copy anywhere (the source agent removed it, the target never ran it): the task
                # failed; the restart policy makes a new one once the record is gone.
                t = v.tasks.get(m.task_id)
                await self._drop(m)
                if t is not None:
                    with _suppress_store():
                        await self.store.commit([self.store.put_task_op(t.with_(
                            state=TaskState.FAILED, state_at=self.clock(),
                            error="lost in a migration (no copy on either node)"))])
                return "lost (no copy on either node; the restart policy replaces it)"
        await self._drop(m)
        return "rolled back"

    @staticmethod
    def _restore_ref(cid: str) -> AsyncIterator[apb.RestoreChunk]:
        async def chunks() -> AsyncIterator[apb.RestoreChunk]:
            yield apb.RestoreChunk(header=apb.RestoreHeader(id=cid))

        return chunks()

    async def _remove_all(self, node: Node, cs: list[apb.ContainerSummary]) -> None:
        for c in cs:
            await self.agents.stub(node.address, node.agent_id).RemoveContainer(apb.RemoveContainerRequest(id=c.id, force=True),
                                                                 timeout=CALL_TIMEOUT)

    # --- many at once ---------------------------------------------------------------------------

    async def drain(self, node: str, asked: str) -> AsyncIterator[pb.MigrationProgress]:
        """Each task of the node moved off (placement picks where), then the node set to drain.
        Not drain first: the leader loop replaces (restarts elsewhere) every task of a drained node,
        which would race the moves. A task placed there meanwhile is replaced once it is drained."""
        if self.view.nodes.get(node) is None:
            raise MigrationError(f"node {node} not found")
        for t in sorted(self.view.tasks_on(node), key=lambda t: (t.service, t.slot)):
            if not (t.desired_state is DesiredState.RUNNING and t.state is TaskState.RUNNING):
                continue
            async for p in self._one(t, "", asked):
                yield p
        for _ in range(5):
            cur = await self.store.get_node(node)
            if cur is None:
                raise MigrationError(f"node {node} not found")
            if cur.availability is Availability.DRAIN:
                break
            cur.availability = Availability.DRAIN
            try:
                rev = await self.store.commit([self.store.put_node_op(cur)])
                await self.view.wait_revision(rev)
                break
            except Conflict:
                continue

    async def _one(self, t: Task, to: str, asked: str) -> AsyncIterator[pb.MigrationProgress]:
        try:
            async for p in self.run(t, to, asked):
                yield p
        except MigrationError as e:
            yield pb.MigrationProgress(task=t.name, task_id=t.id, from_node=t.node or "", phase="skipped",
                                       message=str(e))

    def rebalance_plan(self) -> list[tuple[Task, str]]:
        """Moves that even out running tasks per ready, active node: from the fullest node to the
        emptiest while they differ by more than one (a new node starts empty, so it gets tasks)."""
        v = self.view
        nodes = [n for n in v.nodes.values() if n.status is NodeStatus.READY and n.availability is Availability.ACTIVE]
        if len(nodes) < 2:
            return []
        busy = {m.task_id for m in v.migrations.values()}
        load: dict[str, list[Task]] = {n.name: [] for n in nodes}
        for t in v.tasks.values():
            if t.node in load and t.desired_state is DesiredState.RUNNING and t.state is TaskState.RUNNING \
                    and t.id not in busy:
                load[t.node].append(t)
        moves: list[tuple[Task, str]] = []
        while True:
            hi = max(load, key=lambda n: (len(load[n]), n))
            lo = min(load, key=lambda n: (len(load[n]), n))
            if len(load[hi]) - len(load[lo]) <= 1:
                return moves
            # a task whose service has the most copies on the full node, and none yet on the empty one
            on_lo = {t.service for t in load[lo]}
            cands = sorted(load[hi], key=lambda t: (t.service in on_lo, t.service, -t.slot))
            t = cands[0]
            load[hi].remove(t)
            load[lo].append(t)
            moves.append((t, lo))

    async def rebalance(self, dry_run: bool) -> AsyncIterator[pb.MigrationProgress]:
        moves = self.rebalance_plan()
        if not moves:
            yield pb.MigrationProgress(phase="skipped", message="balanced: nothing to move")
            return
        for t, to in moves:
            if dry_run:
                yield pb.MigrationProgress(task=t.name, task_id=t.id, from_node=t.node or "", to_node=to,
                                           phase="planned", message=f"would move {t.name} {t.node} -> {to}")
                continue
            async for p in self._one(t, to, ""):
                yield p


class _suppress_store:
    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: object, exc: object, tb: object) -> bool:
        return isinstance(exc, StoreError)
