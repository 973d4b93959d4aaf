"""`dockyard agent --join ADDR[,ADDR...]`: the agent's side of the cluster.

Registers the node (name, address, labels, capacity, capabilities, metrics address) with a
scheduler replica, heartbeats its lease every second, and reports its task containers (the ones
labelled dockyard.task): at once on every change (ContainerManager.on_change) and in full every
few seconds. When a replica stops answering it moves on to the next one. Whatever happens to the
schedulers or etcd, the containers keep running: this loop only reports and retries.

Task containers' health (the service's healthcheck, typed in their config) is checked by the
container manager, as for every container (agent/health.py); this module reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import grpc

from agent import diskspace
from agent.checkpoint import host_features
from agent.model import Container, InvalidArgument, Unavailable
from common import transport
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg

log = logging.getLogger("dockyard.agent.cluster")

TASK_LABEL = "dockyard.task"
SERVICE_LABEL = "dockyard.service"
FULL_REPORT = 3.0
CALL_DEADLINE = 5.0  # the longest deadline of a call to a scheduler replica


def agent_id(root: Path) -> str:
    """A stable id for this agent's state directory: a restarted agent is the same node."""
    path = root / "node-id"
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if text:
            return text
    new = secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


def report_of(c: Container) -> pb.TaskReport:
    """The task's state as the scheduler reads it; health as the agent's checks found it
    (agent/health.py: "" while starting or without a check)."""
    s = c.state
    return pb.TaskReport(
        task_id=c.config.labels.get(TASK_LABEL, ""), service=c.config.labels.get(SERVICE_LABEL, ""),
        container_id=c.id, container_state=s.status, exit_code=s.exit_code, error=s.error,
        started_at=s.started_at, finished_at=s.finished_at,
        healthy=s.health if s.health in ("healthy", "unhealthy") else "")


def _being_cancelled() -> bool:
    """True when this task itself is being cancelled (not merely a grpc call it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ClusterMember:
    def __init__(self, *, schedulers: list[str], name: str, address: str, labels: dict[str, str], root: Path,
                 manager: Any, socket: str, metrics_addr: str, cgroup_version: int, criu: Any,
                 lazy_pages: Any = lambda: False, identity: transport.Identity = transport.AGENT) -> None:
        self.schedulers = schedulers
        self.name = name
        self.address = address
        self.labels = labels
        self.root = root
        self.manager = manager
        self.socket = socket
        self.metrics_addr = metrics_addr
        self.cgroup_version = cgroup_version
        self.criu = criu  # callable -> bool (known once `criu check` ran)
        self.lazy_pages = lazy_pages  # callable -> bool (likewise)
        self.identity = identity  # with a certificate: mutual TLS to the schedulers
        self.host = host_features.probe()
        self.agent_id = agent_id(root)
        self.current = 0
        self.lease = 0
        self.heartbeat = 1.0
        self._channel: grpc.aio.Channel | None = None
        self._stub: pbg.SchedulerStub | None = None
        self._changed: dict[str, Container] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.refused = ""
        self._closing: set[asyncio.Task[None]] = set()
        self._registered_criu = (False, False)
        self.renew_now = asyncio.Event()  # the scheduler asked for a new certificate (CA rotated)

    # --- connection to a scheduler replica -----------------------------------------------------

    def stub(self) -> pbg.SchedulerStub:
        if self._stub is None:
            addr = self.schedulers[self.current % len(self.schedulers)]
            self._channel = transport.dial(addr, self.identity, transport.Role.SCHEDULER)
            self._stub = pbg.SchedulerStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    def reconnect(self, identity: transport.Identity) -> None:
        """Dial the same replica again as ``identity`` (a renewed certificate); the old channel is
        closed once calls in flight on it are done."""
        self.identity = identity
        self._retire()

    async def next_replica(self) -> None:
        if len(self.schedulers) > 1:
            self.current += 1
            log.info("moving on to scheduler %s", self.schedulers[self.current % len(self.schedulers)])
        self._retire()

    def _retire(self) -> None:
        ch, self._channel, self._stub = self._channel, None, None
        if ch is not None:
            # Not closed now: the reporter may have a call in flight on it, and closing a grpc.aio
            # channel cancels its calls with asyncio.CancelledError, which once ended the reporter
            # task silently (a healed host then heartbeated but never reported again). Closed
            # once every call on it has run out its deadline.
            t = asyncio.get_running_loop().create_task(self._close_later(ch))
            self._closing.add(t)
            t.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_later(ch: grpc.aio.Channel) -> None:
        await asyncio.sleep(CALL_DEADLINE + 1)
        with contextlib.suppress(Exception):
            await ch.close()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.manager.on_change.append(self._on_change)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._membership(), name="join"),
                       loop.create_task(self._reporter(), name="report")]

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.manager.on_change.remove(self._on_change)
        for t in [*self._tasks, *self._closing]:
            t.cancel()
        for t in [*self._tasks, *self._closing]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def task_files(self, task_id: str) -> dict[tuple[str, str], bytes]:
        """The data of a task's secrets and configs, from a scheduler replica (which gives them only
        to the node the task is placed on). Kept in memory and on the container's tmpfs only."""
        if not task_id:
            raise InvalidArgument("a container with secrets or configs must be a cluster task (label dockyard.task)")
        try:
            resp = await self.stub().TaskFiles(pb.TaskFilesRequest(node=self.name, task_id=task_id),
                                               timeout=CALL_DEADLINE)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await self.next_replica()
                raise Unavailable(f"the task's secrets and configs: scheduler unreachable ({e.details()})") from e
            raise InvalidArgument(f"the task's secrets and configs: {e.details()}") from e
        return {(f.kind, f.name): bytes(f.data) for f in resp.files}

    def _on_change(self, c: Container) -> None:
        if TASK_LABEL in c.config.labels:
            self._changed[c.id] = c
            self._wake.set()

    # --- register + heartbeat --------------------------------------------------------------------

    def _register_request(self) -> pb.RegisterRequest:
        import platform

        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return pb.RegisterRequest(
            name=self.name, agent_id=self.agent_id, address=self.address, hostname=platform.node(),
            labels=self.labels, nano_cpus=(os.cpu_count() or 1) * 1_000_000_000, memory_bytes=mem,
            capabilities=pb.Capabilities(criu=bool(self.criu()), cgroup_version=self.cgroup_version,
                                         lazy_pages=bool(self.lazy_pages()), kernel=self.host.kernel,
                                         arch=self.host.arch, cpu_features=self.host.cpu_features),
            metrics_addr=self.metrics_addr, engine_version="0.1.0")

    async def _membership(self) -> None:
        while True:
            try:
                req = self._register_request()
                resp = await self.stub().Register(req, timeout=CALL_DEADLINE)
                self._registered_criu = (req.capabilities.criu, req.capabilities.lazy_pages)
                self.lease, self.refused = resp.lease_id, ""
                self.heartbeat = max(0.2, resp.heartbeat_ms / 1000 or 1.0)
                log.info("joined the cluster as %s through %s", self.name,
                         self.schedulers[self.current % len(self.schedulers)])
                self._wake.set()  # a full report right away
                await self._heartbeats()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    if self.refused != e.details():
                        log.error("the scheduler refused this node: %s", e.details())
                    self.refused = e.details() or ""
                    await asyncio.sleep(2)
                    continue
                log.warning("scheduler %s: %s", self.schedulers[self.current % len(self.schedulers)],
                            e.details())
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    await self.next_replica()
                await asyncio.sleep(0.3)
            except Exception as e:
                log.exception("join: %s", e)
                await asyncio.sleep(1)

    async def _heartbeats(self) -> None:
        """Until the lease is lost (then register again); moves to another replica when this one fails."""
        failures = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                why = diskspace.pressure(self.root, self.manager.min_free_disk)
                r = await self.stub().Heartbeat(pb.HeartbeatRequest(name=self.name, lease_id=self.lease,
                                                                    pressure=why),
                                                timeout=max(0.5, self.heartbeat))
                failures = 0
                if r.renew_certificate and not self.renew_now.is_set():
                    log.warning("the cluster CA was rotated: renewing this node's certificate now")
                    self.renew_now.set()  # the agent's renewal (agent/daemon.py) wakes up
                if not r.ok:
                    log.warning("lease %x expired: registering again", self.lease)
                    return
                if (bool(self.criu()), bool(self.lazy_pages())) != self._registered_criu:
                    # `criu check` finished after we registered: the scheduler picks live
                    # migration by this capability, so tell it.
                    log.info("criu capability now %s (lazy pages %s): registering again", bool(self.criu()),
                             bool(self.lazy_pages()))
                    return
            except grpc.aio.AioRpcError as e:
                failures += 1
                if e.code() == grpc.StatusCode.UNAVAILABLE and "etcd" in (e.details() or ""):
                    continue  # the replica answers, etcd does not: nothing better elsewhere
                if failures >= 2:
                    await self.next_replica()
                    return

    # --- reports -------------------------------------------------------------------------------

    async def _reporter(self) -> None:
        last_full = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FULL_REPORT)
            self._wake.clear()
            if not self.lease:
                continue
            full = time.monotonic() - last_full >= FULL_REPORT or not last_full
            if full:
                cs = [c for c in self.manager.listing(True) if TASK_LABEL in c.config.labels]
                self._changed.clear()
            else:
                cs, self._changed = list(self._changed.values()), {}
            req = pb.ReportTasksRequest(node=self.name, full=full,
                                        tasks=[report_of(c) for c in cs])
            try:
                await self.stub().ReportTasks(req, timeout=CALL_DEADLINE)
                if full:
                    last_full = time.monotonic()
                continue
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                why = "the call was cancelled (its channel closed)"
            except grpc.aio.AioRpcError as e:
                why = e.details() or str(e.code())
            except Exception as e:  # grpc.aio.UsageError and the like: never end the reporter
                why = f"{type(e).__name__}: {e}"
            log.debug("report: %s", why)
            for c in cs:
                self._changed.setdefault(c.id, c)
            self._wake.set()  # again soon, with whatever was not delivered
            await asyncio.sleep(0.3)
