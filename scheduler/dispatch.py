"""The leader's hands: make each ready node's agent hold exactly the containers its tasks ask for.

Level-driven, not action-driven: for a node it lists the agent's task containers (label
dockyard.task) and compares them with the tasks assigned there in the view, so a lost call, an
agent restart or a new leader all converge the same way.
  - a task wanted running and `assigned` with no container: CreateContainer + StartContainer,
    named `<service>.<slot>.<task id>` (a retry finds the name taken and only starts it);
  - a container whose task is wanted shut down (or moved: the fence when a node comes back), or
    is unknown: StopContainer; a container whose task is gone from the store: RemoveContainer;
  - a create the agent refuses (unknown image, ...): the task becomes `rejected` with the reason.
Calls go over TCP to the node's address, concurrently, each with a deadline; a node that does not
answer is retried on the next pass (every `period` seconds, and at once on any change of its tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

import grpc

from common import transport
from common.devices import DeviceMapping
from protos import agent_pb2 as apb
from protos import agent_pb2_grpc as apbg
from scheduler.model import DesiredState, Node, NodeStatus, ServiceSpec, Task, TaskState
from scheduler.network import INGRESS, attached, mac_for
from scheduler.observe import ContainerReport, observed
from scheduler.store import Conflict, Store, StoreError
from scheduler.view import View

log = logging.getLogger("dockyard.scheduler.dispatch")

TASK_LABEL = "dockyard.task"
SERVICE_LABEL = "dockyard.service"
SLOT_LABEL = "dockyard.slot"
STACK_LABEL = "dockyard.stack"
STOP_TIMEOUT = 3  # seconds from SIGTERM to SIGKILL when a task is stopped
CALL_TIMEOUT = 5.0


def container_name(t: Task) -> str:
    return f"{t.name}.{t.id}"


def overlays_of(t: Task, spec: ServiceSpec, view: View) -> list[apb.OverlayAttachment] | None:
    """The task's addresses on its networks, or None while one is not allocated yet."""
    out = []
    for name in attached(spec):
        net = view.networks.get(name)
        ip = next((a.ip for a in view.allocations.values() if a.network == name and a.task_id == t.id), None)
        if net is None or ip is None:
            return None
        out.append(apb.OverlayAttachment(network=net.name, vni=net.vni, subnet=net.subnet, ip=ip, mac=mac_for(ip),
                                         mtu=net.mtu, internal=net.internal))
    if any(o.internal for o in out) and all(o.internal or o.network == INGRESS for o in out):
        for o in out:  # the mesh's replies go back over the ingress network: it needs no route out either
            o.internal = True
    return out


def stop_timeout(spec: ServiceSpec | None) -> int:
    """Seconds from SIGTERM to SIGKILL for a task of `spec` (its stop_grace_period, rounded up)."""
    if spec is None or spec.stop_grace_period is None:
        return STOP_TIMEOUT
    return math.ceil(spec.stop_grace_period)


def container_config(t: Task, spec: ServiceSpec, stack: str,
                     overlays: list[apb.OverlayAttachment] | None = None) -> apb.ContainerConfig:
    labels = dict(spec.container_labels)
    labels.update({SERVICE_LABEL: t.service, TASK_LABEL: t.id, SLOT_LABEL: str(t.slot), STACK_LABEL: stack})
    cfg = apb.ContainerConfig(
        name=container_name(t), image=spec.image, env=[f"{k}={v}" for k, v in spec.env],
        labels=labels, hostname=spec.hostname or t.name, user=spec.user, workdir=spec.workdir,
        tty=spec.tty, open_stdin=spec.stdin_open, init=spec.init, stop_signal=spec.stop_signal,
        resources=apb.Resources(memory=spec.resources.limits.memory_bytes,
                                nano_cpus=spec.resources.limits.nano_cpus, pids_limit=spec.pids_limit),
        restart_policy=apb.RestartPolicy(name="no"),  # restarts are the scheduler's (restart_policy)
        stop_timeout=stop_timeout(spec),
        overlays=overlays or [],
    )
    for text in spec.devices:  # (checked when the stack was read)
        d = DeviceMapping.parse(text)
        cfg.devices.append(apb.DeviceMapping(path_on_host=d.path_on_host, path_in_container=d.path_in_container,
                                             permissions=d.permissions))
    cfg.privileged = spec.privileged
    if spec.command is not None:
        cfg.cmd.extend(spec.command)
    if spec.entrypoint is not None:
        cfg.entrypoint.extend(spec.entrypoint)
        cfg.entrypoint_set = True
    for p in spec.ports:
        # A published port in host mode binds the host; an unpublished one gets a free host port from
        # the agent (docker's `-p 80`), so replicas of one service can share a host. One in ingress
        # mode binds no host port: every node's mesh DNATs it to the task's ingress address.
        if p.meshed:
            continue
        cfg.ports.append(apb.PortMapping(host_port=p.published or 0, container_port=p.target, protocol=p.protocol))
    for m in spec.mounts:
        cfg.mounts.append(apb.Mount(type=m.type, source=m.source, target=m.target, readonly=m.read_only,
                                    nocopy=m.nocopy, propagation=m.propagation, external=m.external,
                                    create_source=m.create_host_path,
                                    anonymous=m.type == "volume" and not m.source,
                                    tmpfs_options=list(m.tmpfs_options), volume_driver=m.volume_driver,
                                    volume_options=dict(m.volume_options), volume_labels=dict(m.volume_labels)))
    cfg.read_only = spec.read_only
    for kind, refs in (("secret", spec.secrets), ("config", spec.configs)):
        # where each goes; the agent fetches the data itself (Scheduler.TaskFiles), for this task only
        cfg.task_files.extend(apb.TaskFile(kind=kind, name=r.source, target=r.target, uid=r.uid, gid=r.gid,
                                           mode=r.mode) for r in refs)
    cfg.cap_add.extend(spec.cap_add)
    cfg.cap_drop.extend(spec.cap_drop)
    cfg.security_opt.extend(spec.security_opt)
    cfg.ulimits.extend(apb.Ulimit(name=n, soft=s, hard=h) for n, s, h in spec.ulimits)
    cfg.dns.extend(spec.dns)
    cfg.dns_search.extend(spec.dns_search)
    cfg.dns_options.extend(spec.dns_options)
    cfg.extra_hosts.extend(spec.extra_hosts)
    cfg.sysctls.update(dict(spec.sysctls))
    cfg.shm_size = spec.shm_size
    cfg.group_add.extend(spec.group_add)
    if spec.log_driver or spec.log_options:
        cfg.log_config.CopyFrom(apb.LogConfig(type=spec.log_driver, config=dict(spec.log_options)))
    if spec.healthcheck is not None:
        # run by the node's agent like any container's (agent/health.py); disabled: not even the image's
        h = spec.healthcheck
        test = list(h.test) if h.test and h.test[0] in ("CMD", "CMD-SHELL", "NONE") else ["CMD", *h.test]
        cfg.healthcheck.CopyFrom(apb.HealthCheck(
            test=test if h.enabled else ["NONE"], interval=h.interval, timeout=h.timeout, retries=h.retries,
            start_period=h.start_period))
    return cfg


def _code(e: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = e.code()
    return code


class Agents:
    """One channel per agent address, shared by the dispatcher and the log/exec proxies."""

    def __init__(self, identity: transport.Identity = transport.SCHEDULER) -> None:
        self.identity = identity
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def stub(self, address: str, node_id: str = "") -> apbg.AgentStub:
        """``node_id`` (the node's agent id, its certificate's CN) is the name a TLS agent must show."""
        ch = self._channels.get((address, node_id))
        if ch is None:
            ch = self._channels[(address, node_id)] = transport.dial(address, self.identity, transport.Role.AGENT,
                                                                     node_id)
        return apbg.AgentStub(ch)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close()
        self._channels.clear()


class Dispatcher:
    def __init__(self, view: View, store: Store, agents: Agents, *, period: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.store = store
        self.agents = agents
        self.period = period
        self.clock = clock
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._inflight: set[str] = set()  # task ids being created, container ids being stopped
        self._background: set[asyncio.Task[None]] = set()
        view.listeners.append(self.kick)

    def kick(self, nodes: set[str]) -> None:
        self._dirty |= nodes
        self._wake.set()

    async def run(self, active: Callable[[], bool]) -> None:
        last_full = 0.0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.period / 4)
                self._wake.clear()
                if not active() or not self.view.loaded.is_set():
                    continue
                now = time.monotonic()
                if now - last_full >= self.period:
                    last_full = now
                    self._dirty |= set(self.view.nodes)
                dirty, self._dirty = self._dirty, set()
                for name in dirty:
                    node = self.view.nodes.get(name)
                    if node is None or node.status is not NodeStatus.READY or not node.address:
                        continue
                    running = self._running.get(name)
                    if running is not None and not running.done():
                        self._dirty.add(name)  # again when the pass in flight is done
                        continue
                    self._running[name] = asyncio.create_task(self._sync(node, active))
        finally:
            for t in [*self._running.values(), *self._background]:
                t.cancel()

    async def _sync(self, node: Node, active: Callable[[], bool]) -> None:
        stub = self.agents.stub(node.address, node.agent_id)
        try:
            resp = await stub.ListContainers(apb.ListContainersRequest(all=True, filters={"label": TASK_LABEL}),
                                             timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            log.debug("node %s at %s: %s", node.name, node.address, e.details())
            return
        if not active():
            return
        # A task being migrated is the migration's alone, on both nodes, until its record is gone.
        migrating = self.view.migrating()
        held = {c.labels[TASK_LABEL]: c for c in resp.containers if c.labels[TASK_LABEL] not in migrating}
        for t in self.view.tasks_on(node.name):
            if t.desired_state is not DesiredState.RUNNING or t.state.terminal or t.id in self._inflight \
                    or t.id in migrating:
                continue
            c = held.get(t.id)
            if c is None and t.state is TaskState.ASSIGNED:
                if self._stopping_first(t):
                    continue  # the view's change when the old one stops brings the next pass
                self._spawn(t.id, self._create(node, stub, t))
            elif c is not None and c.state == "created":
                self._spawn(t.id, self._start(node, stub, t, c.id))
        for tid, c in held.items():
            owner = self.view.tasks.get(tid)
            if c.id in self._inflight:
                continue
            wanted = owner is not None and owner.node == node.name and owner.desired_state is DesiredState.RUNNING
            if not wanted and c.state in ("running", "paused", "restarting", "created"):
                why = "unknown task" if owner is None else (
                    "fenced: it runs elsewhere now" if owner.node != node.name else owner.error or "shutdown")
                log.info("node %s: stopping %s (%s)", node.name, c.name, why)
                grace = stop_timeout(self._spec_of(owner) if owner is not None else None)
                self._spawn(c.id, self._stop(stub, c.id, remove=owner is None, grace=grace))
            elif owner is None:
                self._spawn(c.id, self._remove(stub, c.id))

    def _stopping_first(self, t: Task) -> bool:
        """A stop-first update's new task starts once the task it replaces has stopped (as Swarm's:
        so at most `parallelism` slots are down at once, and a published host port is free again).
        The old task counts while its node is up to report it; a task on a lost node is not waited for."""
        for o in self.view.tasks_of(t.service):
            if o.slot == t.slot and o.id != t.id and o.desired_state is DesiredState.SHUTDOWN \
                    and o.error == "updated" and o.state.active and o.node is not None:
                n = self.view.nodes.get(o.node)
                if n is not None and n.status is NodeStatus.READY:
                    return True
        return False

    def _spawn(self, key: str, coro: object) -> None:
        self._inflight.add(key)

        async def run() -> None:
            try:
                await coro  # type: ignore[misc]
            except Exception as e:
                log.warning("dispatch %s: %s", key, e)
            finally:
                self._inflight.discard(key)

        t = asyncio.create_task(run())
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _create(self, node: Node, stub: apbg.AgentStub, t: Task) -> None:
        svc = self.view.services.get(t.service)
        if svc is None:
            return
        spec = svc.spec
        if svc.previous_spec is not None and svc.previous_spec.digest == t.spec_version:
            spec = svc.previous_spec
        stack = dict(spec.labels).get("com.docker.stack.namespace", "")
        overlays = overlays_of(t, spec, self.view)
        if overlays is None:
            return  # its addresses are being allocated: the view's change brings the next pass
        cfg = container_config(t, spec, stack, overlays)
        try:
            c = await stub.CreateContainer(apb.CreateContainerRequest(config=cfg), timeout=CALL_TIMEOUT * 4)
        except grpc.aio.AioRpcError as e:
            if _code(e) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return  # the node is away: the next pass (or its replacement) handles it
            if _code(e) == grpc.StatusCode.FAILED_PRECONDITION and "already in use" in (e.details() or ""):
                return  # created by an earlier pass: the next pass starts it
            await self._reject(t, e.details() or str(e))
            return
        await self._start(node, stub, t, c.id)

    async def _start(self, node: Node, stub: apbg.AgentStub, t: Task, cid: str) -> None:
        try:
            await stub.StartContainer(apb.ContainerRef(id=cid), timeout=CALL_TIMEOUT * 4)
        except grpc.aio.AioRpcError as e:
            if _code(e) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return
            await self._reject(t, e.details() or str(e))

    def _spec_of(self, t: Task) -> ServiceSpec | None:
        svc = self.view.services.get(t.service)
        if svc is None:
            return None
        if svc.previous_spec is not None and svc.previous_spec.digest == t.spec_version:
            return svc.previous_spec
        return svc.spec

    async def _stop(self, stub: apbg.AgentStub, cid: str, remove: bool, grace: int = STOP_TIMEOUT) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.StopContainer(apb.StopContainerRequest(id=cid, timeout=grace),
                                     timeout=grace + CALL_TIMEOUT)
            if remove:
                await stub.RemoveContainer(apb.RemoveContainerRequest(id=cid, force=True), timeout=CALL_TIMEOUT)

    async def _remove(self, stub: apbg.AgentStub, cid: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.RemoveContainer(apb.RemoveContainerRequest(id=cid, force=True), timeout=CALL_TIMEOUT)

    async def _reject(self, t: Task, why: str) -> None:
        log.info("task %s (%s) rejected: %s", t.name, t.id, why)
        report = ContainerReport(task_id=t.id, service=t.service, container_id="", state="dead", exit_code=0,
                                 error=why)
        await write_observed(self.store, self.view, report, t.node or "", self.clock())


async def write_observed(store: Store, view: View, report: ContainerReport, node: str, now: float,
                         retries: int = 3) -> bool:
    """Write what a container says about its task (guarded; re-read and retried on a conflict).
    A report from a node the task is not assigned to is ignored: that copy is being fenced."""
    task = view.tasks.get(report.task_id)
    if report.task_id in view.migrating():
        return False  # mid-migration a checkpointed container reads as exited: the migration decides
    for _ in range(retries):
        if task is None or task.node != node:
            return False
        new = observed(task, report, now)
        if new is None:
            return False
        try:
            await store.commit([store.put_task_op(new)])
            return True
        except Conflict:
            task = await store.get_task(report.service or task.service, report.task_id)
        except StoreError:
            raise
    return False
