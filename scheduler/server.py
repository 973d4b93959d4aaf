"""The thin gRPC servicer of protos/cluster.proto: messages in, dataclasses through convert.py,
reads from the replica's view, writes as guarded etcd transactions, logs and exec proxied to
the task's agent. Errors map to status codes in one place (`_fail`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from common import transport
from protos import agent_pb2 as apb
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg
from protos import service_pb2 as spb
from scheduler import convert, objects
from scheduler import network as netmod
from scheduler.dispatch import Agents, container_name, write_observed
from scheduler.leader import Election
from scheduler.model import (
    MAX_REPLICAS,
    Availability,
    DesiredState,
    Node,
    NodeStatus,
    Resources,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
)
from scheduler.observe import ContainerReport
from scheduler.reconcile import new_service, rollback_service, update_service
from scheduler.store import Conflict, Delete, Op, Put, Store, StoreError, Unavailable
from scheduler.view import View

if TYPE_CHECKING:
    from scheduler.migrate import Migrator

log = logging.getLogger("dockyard.scheduler.server")
T = TypeVar("T")

# How old a node's full report can be when it is handled: the agent's longest call deadline
# (agent/cluster.py CALL_DEADLINE), which the listing it sends was taken just before.
FULL_REPORT_AGE = 5.0


class ClusterError(Exception):
    code = grpc.StatusCode.UNKNOWN


class NotFound(ClusterError):
    code = grpc.StatusCode.NOT_FOUND


class Invalid(ClusterError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Exists(ClusterError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Refused(ClusterError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Forbidden(ClusterError):
    code = grpc.StatusCode.PERMISSION_DENIED


def _agent_caller() -> str:
    """The node id of the agent certificate calling, or "" (a plaintext scheduler, or not an agent)."""
    who = transport.caller()
    return who.node_id if who is not None and who.role == "agent" else ""


def _status(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, ClusterError):
        return e.code, str(e)
    if isinstance(e, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, f"{e} (the change was not made; try again)"
    if isinstance(e, Conflict):
        return grpc.StatusCode.ABORTED, f"{e}; try again"
    if isinstance(e, StoreError):
        return grpc.StatusCode.INTERNAL, str(e)
    if isinstance(e, objects.KeyMismatch):
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    if isinstance(e, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    return grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"


_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def _check_replicas(n: int, service: str = "") -> None:
    if not 0 <= n <= MAX_REPLICAS:
        raise Invalid((f"{service}: " if service else "") + f"replicas must be between 0 and {MAX_REPLICAS:,}, got {n:,}")


def _mapped(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except (ClusterError, StoreError, ValueError, objects.KeyMismatch) as e:
            code, msg = _status(e)
            await context.abort(code, msg)
            raise AssertionError("unreachable") from e

    return wrapper


class SchedulerServicer(pbg.SchedulerServicer):
    def __init__(self, store: Store, view: View, election: Election, agents: Agents, *, replica: str,
                 etcd: str, ttl: int = 3, heartbeat: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.view = view
        self.election = election
        self.agents = agents
        self.replica = replica
        self.etcd = etcd
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.cca: Any = None  # under TLS, the cluster CA as of now (scheduler/tls.py ClusterCA; main follows rotations)
        self.cert_lifetime = 0.0  # seconds a certificate issued here lives (0: pki.CERT_LIFETIME); --cert-lifetime
        self.clock = clock
        self.migrator: Migrator | None = None  # set by main: the leader runs migrations
        self.sealer: objects.Sealer | None = None  # set by main: the secrets key (scheduler/objects.py)
        self.sealer_problem = ""  # set by main: why this replica may not seal (another key than the cluster's)

    # --- status and nodes ------------------------------------------------------------------------

    @_mapped
    async def Status(self, request: pb.Empty, context: Any) -> pb.SchedulerStatus:
        return pb.SchedulerStatus(replica=self.replica, leader=self.election.is_leader,
                                  leader_replica=self.election.leader_replica, etcd_ok=self.view.etcd_ok,
                                  etcd=self.etcd, revision=self.view.revision)

    def _node_info(self, n: Node) -> pb.NodeInfo:
        live = [t for t in self.view.tasks_on(n.name) if t.live]
        reserved = Resources()
        for t in live:
            svc = self.view.services.get(t.service)
            if svc is not None:
                reserved = reserved + svc.spec.resources.reservations
        return convert.node_info(n, live, reserved)

    @_mapped
    async def ListNodes(self, request: pb.Empty, context: Any) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[self._node_info(n) for n in sorted(self.view.nodes.values(),
                                                                              key=lambda n: n.name)])

    def _node(self, name: str) -> Node:
        n = self.view.nodes.get(name)
        if n is None:
            raise NotFound(f"node {name} not found")
        return n

    @_mapped
    async def InspectNode(self, request: pb.NodeRef, context: Any) -> pb.NodeInfo:
        return self._node_info(self._node(request.name))

    @_mapped
    async def UpdateNode(self, request: pb.UpdateNodeRequest, context: Any) -> pb.NodeInfo:
        for _ in range(5):
            n = await self.store.get_node(request.name)
            if n is None:
                raise NotFound(f"node {request.name} not found")
            if request.availability:
                n.availability = convert.availability(request.availability)
            labels = dict(n.labels)
            labels.update(request.label_add)
            for k in request.label_rm:
                labels.pop(k, None)
            n.labels = labels
            try:
                rev = await self.store.commit([self.store.put_node_op(n)])
            except Conflict:
                continue
            await self.view.wait_revision(rev)
            return self._node_info(self.view.nodes.get(n.name, n))
        raise Refused(f"node {request.name} keeps changing; try again")

    @_mapped
    async def RemoveNode(self, request: pb.RemoveNodeRequest, context: Any) -> pb.Empty:
        n = await self.store.get_node(request.name)
        if n is None:
            raise NotFound(f"node {request.name} not found")
        if request.name in await self.store.alive_nodes() and not request.force:
            raise Refused(f"node {request.name} is up: drain it and stop its agent first, or use --force")
        ops: list[Op] = [Delete(self.store.keys.node(n.name), n.mod_revision),
                         Delete(self.store.keys.alive(n.name), None)]
        if transport.caller() is not None and n.agent_id:
            from scheduler import tls  # its certificate is refused from now on, on every replica

            ops.append(await tls.denied_op(self.store, n.agent_id))
        rev = await self.store.commit(ops)
        await self.view.wait_revision(rev)
        return pb.Empty()

    # --- services --------------------------------------------------------------------------------

    @_mapped
    async def Deploy(self, request: pb.DeployRequest, context: Any) -> pb.DeployResponse:
        if not request.stack:
            raise Invalid("deploy needs a stack name")
        now = self.clock()
        specs = []
        for msg in request.services:
            spec = convert.spec_from_pb(msg)
            if not spec.name.startswith(request.stack + "_"):
                raise Invalid(f"service {spec.name} is not in stack {request.stack}")
            _check_replicas(spec.replicas, spec.name)
            labels = dict(spec.labels)
            labels[convert.STACK_LABEL] = request.stack
            specs.append(replace(spec, labels=tuple(sorted(labels.items()))))
            missing = netmod.unknown_networks(spec, self.view.networks)
            if missing:
                raise Invalid(f"service {spec.name}: network {', '.join(missing)} not found (dockyard network "
                              f"create -d overlay NAME, or declare it under the stack's networks:)")
        ops, object_changes, made = await self._stack_objects(request.objects)
        for spec in specs:
            objects.check_refs(spec)
        ops += await self._object_guards(specs, made)
        await self._admit_endpoints(specs)
        current = {s.name: s for s in await self.store.list_services()}
        changes = []
        for spec in specs:
            old = current.get(spec.name)
            if old is None:
                ops.append(self.store.put_service_op(new_service(spec, now)))
                changes.append(pb.Change(service=spec.name, action="created"))
                continue
            new = update_service(old, spec)
            if new is old:
                changes.append(pb.Change(service=spec.name, action="unchanged"))
                continue
            ops.append(self.store.put_service_op(new))
            changes.append(pb.Change(service=spec.name, action="updated", fields=_changed_fields(old, spec)))
        if request.prune:
            wanted = {s.name for s in specs}
            for svc in current.values():
                if convert.stack_of(svc.spec) == request.stack and svc.name not in wanted:
                    ops.append(self.store.delete_service_op(svc))
                    changes.append(pb.Change(service=svc.name, action="removed"))
        if len(ops) > 128:
            raise Invalid(f"{len(ops)} services, secrets and configs in one deploy: at most 128")
        if ops:
            try:
                rev = await self.store.commit(ops)
            except Conflict as e:
                raise Refused(f"the stack's services, secrets or configs changed meanwhile ({e})") from None
            await self.view.wait_revision(rev)
        return pb.DeployResponse(changes=changes, objects=object_changes)

    async def _stack_objects(self, msgs: Iterable[pb.FileObject]) -> tuple[list[Op], list[pb.Change], set[tuple[str, str]]]:
        """A deploy's own secrets and configs: made if absent, left alone if equal, else refused."""
        ops: list[Op] = []
        changes = []
        made: set[tuple[str, str]] = set()
        for msg in msgs:
            obj = objects.FileObject(msg.kind, msg.name, bytes(msg.data), dict(msg.labels), self.clock())
            objects.check_object(obj)
            if (obj.kind, obj.name) in made:
                raise Invalid(f"{obj.kind} {obj.name} given twice")
            old = await self.store.get_object(obj.kind, obj.name)
            if old is not None:
                if old.open(self._sealer_for(obj.kind)).data != obj.data:
                    raise Refused(f"{obj.kind} {obj.name} exists with other data, and a {obj.kind} never changes: "
                                  f"give the new one another name (`name:` in the stack file), or remove the old "
                                  f"one once no service uses it")
                changes.append(pb.Change(service=f"{obj.kind} {obj.name}", action="unchanged"))
                continue
            ops.append(Put(self.store.keys.object(obj.kind, obj.name), objects.encode(obj, self._sealer_for(obj.kind)), 0))
            made.add((obj.kind, obj.name))
            changes.append(pb.Change(service=f"{obj.kind} {obj.name}", action="created"))
        return ops, changes, made

    def _sealer_for(self, kind: str) -> objects.Sealer | None:
        if kind == "secret" and self.sealer_problem:
            raise Refused(self.sealer_problem)
        if kind == "secret" and self.sealer is None:
            raise Refused("this scheduler has no secrets key")
        return self.sealer

    async def _object_guards(self, specs: Iterable[Any], made: Iterable[tuple[str, str]] = ()) -> list[Op]:
        """Every secret and config the specs use must exist; each is re-put unchanged, guarded by its
        revision, in the services' transaction, so a concurrent `secret rm` (guarded the same way)
        and this write cannot both succeed."""
        ops: list[Op] = []
        seen: set[tuple[str, str]] = set(made)
        for spec in specs:
            for kind, refs in (("secret", spec.secrets), ("config", spec.configs)):
                for r in refs:
                    if (kind, r.source) in seen:
                        continue
                    seen.add((kind, r.source))
                    key = self.store.keys.object(kind, r.source)
                    raw = await self.store.get_raw(key)
                    if raw is None:
                        raise NotFound(f"service {spec.name}: {kind} not found: {r.source} "
                                       f"(dockyard {kind} create {r.source} FILE)")
                    ops.append(Put(key, raw[0], raw[1]))
        return ops

    def _live(self, name: str) -> int:
        return sum(1 for t in self.view.tasks_of(name) if t.live)

    @_mapped
    async def CreateService(self, request: spb.ServiceSpec, context: Any) -> pb.ServiceInfo:
        spec = convert.spec_from_pb(request)
        if not _SERVICE_NAME.match(spec.name):
            raise Invalid(f"invalid service name {spec.name!r} (letters, digits, '_', '.', '-')")
        _check_replicas(spec.replicas, spec.name)
        if await self.store.get_service(spec.name) is not None:
            raise Exists(f"service {spec.name} already exists")
        objects.check_refs(spec)
        missing = netmod.unknown_networks(spec, self.view.networks)
        if missing:
            raise Invalid(f"service {spec.name}: network {', '.join(missing)} not found (dockyard network create "
                          "-d overlay NAME)")
        await self._admit_endpoints([spec])
        svc = new_service(spec, self.clock())
        try:
            rev = await self.store.commit([self.store.put_service_op(svc), *await self._object_guards([spec])])
        except Conflict:
            if await self.store.get_service(spec.name) is None:
                raise Refused(f"a secret or config of {spec.name} changed meanwhile; try again") from None
            raise Exists(f"service {spec.name} already exists") from None
        await self.view.wait_revision(rev)
        return convert.service_info(svc, 0, 0)

    def _running(self, name: str) -> int:
        return sum(1 for t in self.view.tasks_of(name)
                   if t.desired_state is DesiredState.RUNNING and t.state is TaskState.RUNNING)

    @_mapped
    async def ListServices(self, request: pb.ListServicesRequest, context: Any) -> pb.ListServicesResponse:
        out = [convert.service_info(s, self._running(s.name), self._live(s.name)) for s in sorted(self.view.services.values(),
                                                                                key=lambda s: s.name)
               if not request.stack or convert.stack_of(s.spec) == request.stack]
        return pb.ListServicesResponse(services=out)

    def _service(self, name: str) -> Service:
        svc = self.view.services.get(name)
        if svc is None:
            raise NotFound(f"service {name} not found")
        return svc

    @_mapped
    async def InspectService(self, request: pb.ServiceRef, context: Any) -> pb.ServiceInfo:
        svc = self._service(request.name)
        return convert.service_info(svc, self._running(svc.name), self._live(svc.name))

    @_mapped
    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        picked: list[Task] = []
        for name in request.services or sorted(self.view.services):
            if name in self.view.services:
                picked.extend(self.view.tasks_of(name))
            else:
                picked.append(self.resolve_task(name))
        out = []
        for t in sorted(picked, key=lambda t: (t.service, t.slot, -t.created_at)):
            if not request.all and t.desired_state is DesiredState.SHUTDOWN and t.state.terminal:
                continue
            svc = self.view.services.get(t.service)
            image = ""
            if svc is not None:
                image = svc.spec.image
                if svc.previous_spec is not None and svc.previous_spec.digest == t.spec_version:
                    image = svc.previous_spec.image
            out.append(convert.task_info(t, image))
        return pb.ListTasksResponse(tasks=out)

    async def _write_service(self, name: str, change: Callable[[Service], Service | None]) -> Service:
        for _ in range(5):
            svc = await self.store.get_service(name)
            if svc is None:
                raise NotFound(f"service {name} not found")
            new = change(svc)
            if new is None or new is svc:
                return svc
            objects.check_refs(new.spec)
            guards = await self._object_guards([new.spec])
            try:
                rev = await self.store.commit([self.store.put_service_op(new), *guards])
            except Conflict:
                continue
            await self.view.wait_revision(rev)
            return self.view.services.get(name, new)
        raise Refused(f"service {name} keeps changing; try again")

    @_mapped
    async def ScaleService(self, request: pb.ScaleRequest, context: Any) -> pb.ServiceInfo:
        _check_replicas(request.replicas)
        svc = self._service(request.name)
        if svc.spec.mode is ServiceMode.GLOBAL:
            raise Invalid(f"{request.name}: scale can only be used with replicated mode (it runs one task per node)")
        svc = await self._write_service(request.name, lambda s: replace(s, spec=replace(s.spec,
                                                                                         replicas=request.replicas)))
        return convert.service_info(svc, self._running(svc.name), self._live(svc.name))

    @_mapped
    async def UpdateService(self, request: pb.UpdateServiceRequest, context: Any) -> pb.ServiceInfo:
        new = convert.spec_from_pb(request.spec) if request.HasField("spec") else None
        if new is not None:
            await self._admit_endpoints([new])

        def change(s: Service) -> Service | None:
            spec = new if new is not None else s.spec
            if request.expect_version and request.expect_version != s.version:
                raise Refused(f"service {s.name} changed while it was being edited (version {request.expect_version} "
                              f"-> {s.version}); try again")
            if spec.name != s.name:
                raise Invalid(f"the spec is named {spec.name}, not {s.name}")
            if request.image:
                spec = replace(spec, image=request.image)
            if request.env_add:
                env = dict(spec.env)
                for item in request.env_add:
                    k, sep, v = item.partition("=")
                    if not sep or not k:
                        raise Invalid(f"--env-add {item!r}: expected KEY=VALUE")
                    env[k] = v
                spec = replace(spec, env=tuple(sorted(env.items())))
            if request.has_replicas:
                if spec.mode is ServiceMode.GLOBAL:
                    raise Invalid(f"{s.name}: replicas can only be used with replicated mode")
                spec = replace(spec, replicas=request.replicas)
            _check_replicas(spec.replicas)
            if request.force:
                labels = dict(spec.env)
                labels["DOCKYARD_FORCE_UPDATE"] = str(s.version + 1)
                spec = replace(spec, env=tuple(sorted(labels.items())))
            return update_service(s, spec)

        svc = await self._write_service(request.name, change)
        return convert.service_info(svc, self._running(svc.name), self._live(svc.name))

    @_mapped
    async def RollbackService(self, request: pb.ServiceRef, context: Any) -> pb.ServiceInfo:
        def change(s: Service) -> Service | None:
            new = rollback_service(s, self.clock())
            if new is None:
                raise Refused(f"service {s.name} has no previous spec to roll back to")
            return new

        svc = await self._write_service(request.name, change)
        return convert.service_info(svc, self._running(svc.name), self._live(svc.name))

    @_mapped
    async def RemoveServices(self, request: pb.RemoveServicesRequest, context: Any) -> pb.RemoveServicesResponse:
        services = await self.store.list_services()
        if request.stack:
            doomed = [s for s in services if convert.stack_of(s.spec) in request.names]
            if not doomed:
                raise NotFound(f"nothing found in stack: {', '.join(request.names)}")
        else:
            by_name = {s.name: s for s in services}
            missing = [n for n in request.names if n not in by_name]
            if missing:
                raise NotFound(f"service {', '.join(missing)} not found")
            doomed = [by_name[n] for n in request.names]
        # The services go now; their tasks are wanted shut down in the same transaction, so no
        # reconcile pass ever sees a task without its service, and the dispatcher stops them.
        ops: list[Op] = [self.store.delete_service_op(s) for s in doomed]
        gone_objects: list[str] = []
        if request.stack:  # and the stacks' own secrets and configs, unless another service uses one
            names = {s.name for s in doomed}
            others = [sp for svc in self.view.services.values() if svc.name not in names
                      for sp in (svc.spec, svc.previous_spec) if sp is not None]
            for kind in objects.KINDS:
                for st in await self.store.list_objects(kind):
                    if st.labels.get(convert.STACK_LABEL) in request.names and not objects.users(kind, st.name, others):
                        ops.append(Delete(self.store.keys.object(kind, st.name), st.mod_revision))
                        gone_objects.append(f"{kind} {st.name}")
        for s in doomed:
            for t in await self.store.list_tasks(s.name):
                if t.desired_state is DesiredState.RUNNING:
                    ops.append(self.store.put_task_op(t.with_(desired_state=DesiredState.SHUTDOWN,
                                                              error="service removed")))
        rev = 0
        from scheduler.store import chunks

        for batch in chunks(ops):
            rev = await self.store.commit(batch)
        await self.view.wait_revision(rev)
        return pb.RemoveServicesResponse(removed=[s.name for s in doomed], removed_objects=gone_objects)

    # --- tasks: logs and exec through the agent --------------------------------------------------

    def resolve_task(self, ref: str) -> Task:
        """`web.1` (the slot's current task), a task id (or prefix), or a container name."""
        tasks = self.view.tasks
        if ref in tasks:
            return tasks[ref]
        service, _, slot = ref.rpartition(".")
        if service and slot.isdigit():
            cands = [t for t in tasks.values() if t.service == service and t.slot == int(slot)]
            if cands:
                live = [t for t in cands if t.live] or cands
                return max(live, key=lambda t: (t.created_at, t.id))
        head, _, tid = ref.rpartition(".")
        if head and tid in tasks:
            return tasks[tid]
        by_prefix = [t for t in tasks.values() if t.id.startswith(ref)] if len(ref) >= 4 else []
        if len(by_prefix) == 1:
            return by_prefix[0]
        raise NotFound(f"no such task: {ref}")

    def _agent_of(self, t: Task) -> tuple[Node, Any]:
        if t.node is None:
            raise Refused(f"task {t.name} is not on a node ({t.state.value}: {t.error})")
        node = self._node(t.node)
        return node, self.agents.stub(node.address, node.agent_id)

    async def Logs(self, request: pb.LogsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LogLine]:
        try:
            if request.target in self.view.services:
                tasks = [t for t in self.view.tasks_of(request.target) if t.node and t.container_id]
                tasks.sort(key=lambda t: (t.slot, t.created_at))
            else:
                tasks = [self.resolve_task(request.target)]
        except ClusterError as e:
            await context.abort(e.code, str(e))
            return
        queue: asyncio.Queue[pb.LogLine | None] = asyncio.Queue(maxsize=1000)

        async def pump(t: Task) -> None:
            try:
                _, stub = self._agent_of(t)
                req = apb.LogsRequest(id=t.container_id or container_name(t), follow=request.follow,
                                      tail=request.tail if request.tail else -1, stdout=True, stderr=True)
                async for entry in stub.ContainerLogs(req):
                    await queue.put(convert.log_line(t, entry))
            except (grpc.aio.AioRpcError, ClusterError) as e:
                msg = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                if len(tasks) == 1:
                    await queue.put(pb.LogLine(task=t.name, task_id=t.id, node=t.node or "",
                                               entry=apb.LogEntry(stream="error", data=(msg or "").encode())))
            finally:
                await queue.put(None)

        pumps = [asyncio.create_task(pump(t)) for t in tasks]
        try:
            left = len(pumps)
            while left:
                item = await queue.get()
                if item is None:
                    left -= 1
                    continue
                if item.entry.stream == "error":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"logs of {item.task}: {item.entry.data.decode()}")
                    return
                yield item
        finally:
            for p in pumps:
                p.cancel()

    async def Exec(self, request_iterator: AsyncIterator[apb.StreamInput],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[apb.StreamOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("open"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`")
            return
        try:
            t = self.resolve_task(first.open.container)
            if not t.live:
                raise Refused(f"task {t.name} is not running ({t.state.value})")
            _, stub = self._agent_of(t)
        except ClusterError as e:
            await context.abort(e.code, str(e))
            return
        opened = apb.StreamInput()
        opened.CopyFrom(first)
        opened.open.container = t.container_id or container_name(t)

        async def forward() -> AsyncIterator[apb.StreamInput]:
            yield opened
            async for msg in request_iterator:
                yield msg

        call = stub.Exec(forward())
        try:
            async for out in call:
                yield out
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), f"{t.name} on {t.node}: {e.details()}")
        finally:
            call.cancel()

    # --- moving tasks: run by the leader (scheduler/migrate.py); a follower passes the call on ---

    async def _migration_stream(self, method: str, request: Any, context: grpc.aio.ServicerContext,
                                run: Callable[[], AsyncIterator[pb.MigrationProgress]]
                                ) -> AsyncIterator[pb.MigrationProgress]:
        if not self.election.is_leader or self.migrator is None:
            addr = self.election.leader_address
            if not addr or addr == self.election.address:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no scheduler leader right now; try again")
                return
            async with transport.dial(addr, self.agents.identity, transport.Role.SCHEDULER) as ch:
                call = getattr(pbg.SchedulerStub(ch), method)(request)  # type: ignore[no-untyped-call]
                try:
                    async for p in call:
                        yield p
                except grpc.aio.AioRpcError as e:
                    await context.abort(e.code(), e.details() or "")
            return
        from scheduler.migrate import MigrationError

        try:
            async for p in run():
                yield p
        except (MigrationError, ClusterError, StoreError) as e:
            code, msg = _status(e) if not isinstance(e, MigrationError) else (grpc.StatusCode.FAILED_PRECONDITION,
                                                                             str(e))
            await context.abort(code, msg)

    async def MigrateTask(self, request: pb.MigrateTaskRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MigrationProgress]:
        if request.mode not in ("", "live", "cold"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"mode {request.mode!r}: live or cold")

        def run() -> AsyncIterator[pb.MigrationProgress]:
            assert self.migrator is not None
            return self.migrator.run(self.resolve_task(request.task), request.to, request.mode)

        async for p in self._migration_stream("MigrateTask", request, context, run):
            yield p

    async def DrainNode(self, request: pb.DrainRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MigrationProgress]:
        def run() -> AsyncIterator[pb.MigrationProgress]:
            assert self.migrator is not None
            return self.migrator.drain(request.node, request.mode)

        async for p in self._migration_stream("DrainNode", request, context, run):
            yield p

    async def Rebalance(self, request: pb.RebalanceRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MigrationProgress]:
        def run() -> AsyncIterator[pb.MigrationProgress]:
            assert self.migrator is not None
            return self.migrator.rebalance(request.dry_run)

        async for p in self._migration_stream("Rebalance", request, context, run):
            yield p

    @_mapped
    async def ListMigrations(self, request: pb.Empty, context: Any) -> pb.ListMigrationsResponse:
        return pb.ListMigrationsResponse(migrations=[
            pb.MigrationInfo(id=m.id, task_id=m.task_id, service=m.service, from_node=m.source, to_node=m.target,
                             mode=m.mode, phase=m.phase, started_at=m.started_at, leader=m.leader)
            for m in sorted(self.view.migrations.values(), key=lambda m: m.started_at)])

    # --- cluster networks --------------------------------------------------------------------------

    def _network_info(self, net: netmod.Network, with_endpoints: bool = True) -> pb.NetworkInfo:
        v = self.view
        users = sorted(name for name, svc in v.services.items()
                       if any(a.name == net.name for spec in (svc.spec, svc.previous_spec) if spec is not None
                              for a in spec.networks))
        eps: list[netmod.EndpointView] = []
        vips: list[netmod.VipView] = []
        if with_endpoints:
            mine = [a for a in v.allocations.values() if a.network == net.name]
            eps = netmod.endpoints({net.name: net}, mine, v.tasks, {n.name: n.address for n in v.nodes.values()},
                                   v.services, netmod.moved_endpoints(v.migrations.values()))
            vips = netmod.vips({net.name: net}, mine, v.services)
        mesh = netmod.mesh_ports(v.services) if net.ingress else []
        if net.ingress:
            users = sorted({m.service for m in mesh})
        return convert.network_info(net, users, eps, vips, mesh)

    def _network(self, name: str) -> netmod.Network:
        net = self.view.networks.get(name)
        if net is None:
            raise NotFound(f"network {name} not found")
        return net

    @_mapped
    async def CreateNetwork(self, request: pb.CreateNetworkRequest, context: Any) -> pb.NetworkInfo:
        if request.name == netmod.INGRESS:
            raise Invalid(f"network name {netmod.INGRESS} is the routing mesh's: the scheduler makes it when a "
                          "service publishes a port in ingress mode")

        def make(existing: list[netmod.Network]) -> netmod.Network:
            return netmod.new_network(request.name, existing, subnet=request.subnet,
                                      driver=request.driver or "overlay", attachable=request.attachable,
                                      internal=request.internal, mtu=request.mtu, labels=dict(request.labels),
                                      now=self.clock())

        return self._network_info(await self._create_network(make))

    async def _create_network(self, make: Callable[[list[netmod.Network]], netmod.Network]) -> netmod.Network:
        k = self.store.keys
        for _ in range(5):
            rev, kvs = await self.store.range(k.network())
            existing = [netmod.Network.decode(kv.value, kv.mod_revision) for kv in kvs]
            stamp = await self.store.get_raw(k.net() + b"version")
            try:
                net = make(existing)
            except netmod.NetworkError as e:
                raise (Exists if "already exists" in str(e) else Invalid)(str(e)) from None
            # one version key guards every create: two at once cannot pick the same subnet or VNI
            ops: list[Op] = [Put(k.network(net.name), net.encode(), 0),
                             Put(k.net() + b"version", str(rev).encode(), stamp[1] if stamp else 0)]
            try:
                wrote = await self.store.commit(ops)
            except Conflict:
                continue
            await self.view.wait_revision(wrote)
            return self.view.networks.get(net.name, net)
        raise Refused("networks keep changing; try again")

    async def _admit_endpoints(self, specs: list[ServiceSpec]) -> None:
        """Published ports and endpoint modes checked against every other service; the ingress
        network made when one of `specs` is the first to publish through the routing mesh."""
        new = {s.name for s in specs}
        pool = [svc.spec for name, svc in self.view.services.items() if name not in new] + specs
        for spec in specs:
            try:
                netmod.check_endpoint(spec, pool, self.view.networks)
            except netmod.NetworkError as e:
                raise Invalid(str(e)) from None
        if not any(s.mesh_ports for s in specs):
            return
        net = self.view.networks.get(netmod.INGRESS)
        if net is not None and not net.ingress:
            raise Invalid(f"network {netmod.INGRESS} exists and is not the routing mesh's: remove it to publish "
                          "ports in ingress mode (or publish them with mode: host)")
        if net is None:
            try:
                await self._create_network(lambda existing: netmod.ingress_network(existing, self.clock()))
            except Exists:
                pass  # made by a deploy beside this one

    @_mapped
    async def ListNetworks(self, request: pb.Empty, context: Any) -> pb.ListNetworksResponse:
        return pb.ListNetworksResponse(networks=[self._network_info(n) for n in
                                                 sorted(self.view.networks.values(), key=lambda n: n.name)])

    @_mapped
    async def InspectNetwork(self, request: pb.NetworkRef, context: Any) -> pb.NetworkInfo:
        return self._network_info(self._network(request.name))

    @_mapped
    async def RemoveNetwork(self, request: pb.NetworkRef, context: Any) -> pb.Empty:
        k = self.store.keys
        got = await self.store.get_raw(k.network(request.name))
        if got is None:
            raise NotFound(f"network {request.name} not found")
        info = self._network_info(netmod.Network.decode(got[0], got[1]))
        if info.services:
            raise Refused(f"network {request.name} is in use by service {', '.join(info.services)}")
        _, held = await self.store.range(k.ipam(request.name))
        if held:
            raise Refused(f"network {request.name} has {len(held)} endpoint{'s' if len(held) != 1 else ''} "
                          "attached (tasks still being removed); try again when they are gone")
        _, resting = await self.store.range(k.quarantine(request.name))
        ops: list[Op] = [Delete(k.network(request.name), got[1])]
        ops += [Delete(bytes(kv.key), None) for kv in resting[:127]]
        rev = await self.store.commit(ops)
        await self.view.wait_revision(rev)
        return pb.Empty()

    async def WatchNetworks(self, request: pb.WatchNetworksRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.NetworkMap]:
        try:
            self._own_node(request.node)
        except Forbidden as e:
            await context.abort(e.code, str(e))
        changed = asyncio.Event()
        changed.set()
        self.view.net_listeners.append(changed.set)
        last = b""
        try:
            await self.view.loaded.wait()
            while True:
                await changed.wait()
                await asyncio.sleep(0.01)  # coalesce a burst (a deploy, a node lost) into one map
                changed.clear()
                msg = pb.NetworkMap(revision=self.view.revision,
                                    networks=[self._network_info(n) for n in
                                              sorted(self.view.networks.values(), key=lambda n: n.name)])
                body = pb.NetworkMap(networks=msg.networks).SerializeToString(deterministic=True)
                if body != last:
                    last = body
                    yield msg
        finally:
            self.view.net_listeners.remove(changed.set)

    # --- secrets and configs (scheduler/objects.py) ----------------------------------------------

    def _object_users(self, kind: str, name: str) -> list[str]:
        specs = [sp for svc in self.view.services.values() for sp in (svc.spec, svc.previous_spec) if sp is not None]
        return objects.users(kind, name, specs)

    def _object_info(self, st: objects.Stored, with_data: bool) -> pb.ObjectInfo:
        info = pb.ObjectInfo(kind=st.kind, name=st.name, labels=st.labels, created_at=st.created_at, size=st.size,
                             services=self._object_users(st.kind, st.name))
        if with_data and st.kind == "config":  # never a secret's: it leaves the scheduler only for its tasks
            info.data = st.open(None).data
        return info

    @_mapped
    async def CreateObject(self, request: pb.FileObject, context: Any) -> pb.ObjectInfo:
        obj = objects.FileObject(request.kind, request.name, bytes(request.data), dict(request.labels), self.clock())
        objects.check_object(obj)
        try:
            await self.store.commit([Put(self.store.keys.object(obj.kind, obj.name),
                                         objects.encode(obj, self._sealer_for(obj.kind)), 0)])
        except Conflict:
            raise Exists(f"{obj.kind} {obj.name} already exists") from None
        st = await self.store.get_object(obj.kind, obj.name)
        if st is None:
            raise NotFound(f"{obj.kind} {obj.name} was removed right after it was made")
        return self._object_info(st, with_data=False)

    @_mapped
    async def ListObjects(self, request: pb.ListObjectsRequest, context: Any) -> pb.ListObjectsResponse:
        if request.kind not in objects.KINDS:
            raise Invalid(f"unknown kind {request.kind!r}: expected secret or config")
        found = sorted(await self.store.list_objects(request.kind), key=lambda st: st.name)
        return pb.ListObjectsResponse(objects=[self._object_info(st, with_data=False) for st in found])

    async def _stored(self, kind: str, name: str) -> objects.Stored:
        objects.check_name(kind, name)
        st = await self.store.get_object(kind, name)
        if st is None:
            raise NotFound(f"{kind} not found: {name}")
        return st

    @_mapped
    async def InspectObject(self, request: pb.ObjectRef, context: Any) -> pb.ObjectInfo:
        return self._object_info(await self._stored(request.kind, request.name), with_data=True)

    @_mapped
    async def RemoveObject(self, request: pb.ObjectRef, context: Any) -> pb.Empty:
        st = await self._stored(request.kind, request.name)
        users = self._object_users(st.kind, st.name)
        if users:
            raise Refused(f"{st.kind} {st.name} is in use by the following service"
                          f"{'s' if len(users) > 1 else ''}: {', '.join(users)}")
        try:
            await self.store.commit([Delete(self.store.keys.object(st.kind, st.name), st.mod_revision)])
        except Conflict:
            raise Refused(f"{st.kind} {st.name} was just taken into use or changed; try again") from None
        return pb.Empty()

    @_mapped
    async def TaskFiles(self, request: pb.TaskFilesRequest, context: Any) -> pb.TaskFilesResponse:
        """Only for a task placed on the asking node or being migrated to it (over TLS: the node of the
        caller's certificate), and only the files of the spec that task runs."""
        self._own_node(request.node)

        def placed_there(t: Task | None) -> bool:
            # its node, or the target of its migration (the restore there needs the files first)
            return t is not None and (t.node == request.node or any(
                m.task_id == t.id and m.target == request.node for m in self.view.migrations.values()))

        t = self.view.tasks.get(request.task_id)
        deadline = time.monotonic() + 3.0  # the leader's dispatch may be a moment ahead of this replica's view
        while not placed_there(t) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            t = self.view.tasks.get(request.task_id)
        if t is None or not placed_there(t) or t.desired_state is not DesiredState.RUNNING:
            raise Forbidden(f"task {request.task_id} is not placed on node {request.node or '(none)'}: "
                            "its secrets and configs go only to its own node")
        svc = self._service(t.service)
        spec = svc.previous_spec if svc.previous_spec is not None and svc.previous_spec.digest == t.spec_version \
            else svc.spec
        out = []
        for kind, refs in (("secret", spec.secrets), ("config", spec.configs)):
            for name in dict.fromkeys(r.source for r in refs):
                obj = (await self._stored(kind, name)).open(self.sealer)
                out.append(pb.TaskFileData(kind=kind, name=name, data=obj.data))
        log.info("node %s fetched the %d secrets and configs of task %s", request.node, len(out), t.name)
        return pb.TaskFilesResponse(files=out)

    # --- agents ----------------------------------------------------------------------------------

    @_mapped
    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        if not request.name or not request.address:
            raise Invalid("register needs a node name and an address")
        node = convert.node_from_register(request)
        cn = _agent_caller()
        if cn and node.agent_id != cn:
            raise Forbidden(f"agent {cn} may register only as itself, not as {node.agent_id or 'no id'}")
        old = await self.store.get_node(node.name)
        alive = node.name in await self.store.alive_nodes()
        node.certified = bool(cn)
        if old is not None:
            if cn and old.certified and old.agent_id != cn:
                # Over TLS a name belongs to the certificate that registered it first, alive or not.
                raise Forbidden(f"node name {node.name} belongs to agent {old.agent_id}, not {cn}")
            if alive and old.agent_id and old.agent_id != node.agent_id:
                raise Exists(f"node name {node.name} is taken by a live agent at {old.address}; "
                             f"give this one another --name")
            # what operators set stays: availability, and labels added with `node label`; over TLS
            # the labels are frozen at admission (they steer workloads: only an admin changes them).
            # A name an --insecure agent had (the same hosts, once run plaintext) is admitted anew.
            node.availability = old.availability
            node.labels = dict(old.labels) if cn and old.certified else {**old.labels, **node.labels}
            node.mod_revision = old.mod_revision
        lease = await self.store.grant_lease(self.ttl)
        ops: list[Op] = [self.store.put_node_op(node), Put(self.store.keys.alive(node.name), b"", None, lease=lease)]
        try:
            rev = await self.store.commit(ops)
        except Conflict as e:
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(lease)
            raise Refused(f"node {node.name} changed while registering; try again") from e
        await self.view.wait_revision(rev, timeout=2)
        log.info("node %s registered from %s (lease %x)", node.name, node.address, lease)
        return pb.RegisterResponse(lease_id=lease, heartbeat_ms=int(self.heartbeat * 1000), ttl_s=self.ttl)

    @_mapped
    async def RenewCertificate(self, request: pb.RenewRequest, context: Any) -> pb.IssueResponse:
        import datetime as dt

        from common import pki
        from scheduler import tls

        who = transport.caller()
        if who is None:
            raise Refused("this scheduler runs without --tls: there are no certificates to renew")
        try:
            return await tls.renew(self.store, request.csr, who, context.peer(),
                                   dt.timedelta(seconds=self.cert_lifetime) if self.cert_lifetime else pki.CERT_LIFETIME)
        except pki.PKIError as e:
            raise Invalid(str(e)) from None

    @_mapped
    async def RotateCA(self, request: pb.Empty, context: Any) -> pb.RotateCAResponse:
        from scheduler import tls

        if transport.caller() is None:
            raise Refused("this scheduler runs without --tls: there is no cluster CA")
        cca = await tls.rotate_ca(self.store)
        return pb.RotateCAResponse(digest=cca.ca.digest(), nodes=len(self.view.nodes))

    @_mapped
    async def FinishCARotation(self, request: pb.Empty, context: Any) -> pb.RotateCAResponse:
        """Refused while a ready node serves a certificate the new root did not sign (or cannot be
        asked): dropping the old root would cut it off."""
        from common import pki
        from scheduler import tls

        if transport.caller() is None or self.cca is None:
            raise Refused("this scheduler runs without --tls: there is no cluster CA")
        cca = await tls.ensure_ca(self.store)
        behind = []
        nodes = [n for n in self.view.nodes.values() if n.status is NodeStatus.READY and n.address]
        for n in nodes:
            try:
                pem = await asyncio.to_thread(transport.served_certificate, n.address, self.agents.identity)
            except (OSError, ValueError) as e:
                behind.append(f"{n.name} (cannot be asked: {e})")
                continue
            if not pki.issued_by_any(pem, cca.ca.cert_pem):
                behind.append(n.name)
        if behind:
            raise Refused(f"not yet re-issued from the new root: {', '.join(behind)}; they renew at their next "
                          "heartbeat, try again in a few seconds")
        try:
            cca = await tls.finish_rotation(self.store)
        except pki.PKIError as e:
            raise Refused(str(e)) from None
        return pb.RotateCAResponse(digest=cca.ca.digest(), nodes=len(nodes))

    @_mapped
    async def JoinToken(self, request: pb.JoinTokenRequest, context: Any) -> pb.JoinTokenResponse:
        from scheduler import tls

        if request.role not in tls.TOKEN_ROLE:
            raise Invalid(f"join token role {request.role!r}: expected worker or manager")
        if transport.caller() is None:
            raise Refused("this scheduler runs without --tls: there are no join tokens")
        if request.rotate:
            return pb.JoinTokenResponse(token=await tls.rotate_token(self.store, request.role))
        return pb.JoinTokenResponse(token=(await tls.ensure_ca(self.store)).tokens[request.role])

    def _own_node(self, name: str) -> None:
        """An agent certificate speaks only for the node it registered (its CN is the node's agent id)."""
        cn = _agent_caller()
        if not cn:
            return
        node = self.view.nodes.get(name)
        if node is None or node.agent_id != cn:
            raise Forbidden(f"agent {cn} may not act for node {name or '(none)'}")

    @_mapped
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        self._own_node(request.name)
        ok = await self.store.keep_alive(request.lease_id)
        n = self.view.nodes.get(request.name)
        if ok and n is not None and n.pressure != request.pressure:
            await self._set_pressure(request.name, request.pressure)
        renew = False
        if self.cca is not None:  # under TLS: a certificate from before `cluster ca --rotate` is re-issued
            from scheduler import tls

            pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
            renew = tls.needs_renewal(self.cca, pem)
        return pb.HeartbeatResponse(ok=ok, renew_certificate=renew)

    async def _set_pressure(self, name: str, pressure: str) -> None:
        """Record what the agent's heartbeat says about its room for new work; placement reads it.
        A lost race is left to the next heartbeat, which says it again."""
        n = await self.store.get_node(name)
        if n is None or n.pressure == pressure:
            return
        n.pressure = pressure
        with contextlib.suppress(Conflict):
            await self.store.commit([self.store.put_node_op(n)])
            log.warning("node %s: %s", name, pressure or "has room for new work again")

    @_mapped
    async def ReportTasks(self, request: pb.ReportTasksRequest, context: Any) -> pb.Empty:
        self._own_node(request.node)
        now = self.clock()
        seen = set()
        for r in request.tasks:
            report = convert.report_from_pb(r)
            seen.add(report.task_id)
            await write_observed(self.store, self.view, report, request.node, now)
        if request.full:
            # A task this node should be running whose container it no longer has (a host that
            # rebooted, a container removed by hand): failed, so the restart policy replaces it.
            # The listing was taken before the call, which may have waited seconds on a loaded
            # host: a task that came to this node since (a migration finished onto it, a start)
            # is not in it yet, and is not gone. A task that changed within the report's longest
            # age is left to the next full report.
            migrating = self.view.migrating()
            for t in self.view.tasks_on(request.node):
                if now - t.state_at < FULL_REPORT_AGE:
                    continue
                if t.id not in seen and t.id not in migrating and t.state in (TaskState.STARTING, TaskState.RUNNING):
                    gone = ContainerReport(task_id=t.id, service=t.service, container_id=t.container_id,
                                           state="removed")
                    await write_observed(self.store, self.view, gone, request.node, now)
        return pb.Empty()


def _changed_fields(old: Service, spec: Any) -> list[str]:
    da, db = convert.spec_dict(old.spec), convert.spec_dict(spec)
    return sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))


def _availability_ok(text: str) -> bool:
    return text in (Availability.ACTIVE.value, Availability.DRAIN.value)
