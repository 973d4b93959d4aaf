"""The gRPC servicer of the node API (protos/agent.proto): thin, converting at the edge.

Errors: every AgentError or ImageError subclass maps to one gRPC status code in `_STATUS`, so a
CLI shows the message as is and exits non-zero.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agent import attachsession, convert, diskspace, metrics, status
from agent.authz import PeerGrants
from agent.checkpoint import host_features
from agent.containers import UPDATABLE_LIMITS, ContainerManager
from agent.engine import EngineSettings
from agent.execsession import ExecSession
from agent.images.errors import ImageError
from agent.images.pipes import consume
from agent.model import AgentError, Conflict, InvalidArgument
from agent.runtime.procs import trace
from common import transport
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg

T = TypeVar("T")
VERSION = "0.1.0"
CHUNK = 256 * 1024


_status = status.code  # the agent's one table (agent/status.py)


def _mapped(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            with metrics.observe(fn.__name__):
                return await fn(self, request, context)
        except (AgentError, ValueError, OSError) as e:
            await context.abort(_status(e), str(e))
        raise AssertionError("unreachable")

    return wrapper


def _mapped_stream(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
        try:
            with metrics.observe(fn.__name__):
                async for item in fn(self, request, context):
                    yield item
        except (AgentError, ValueError, OSError) as e:
            await context.abort(_status(e), str(e))

    return wrapper


class AgentServicer(pbg.AgentServicer):
    def __init__(self, name: str, root: str, manager: ContainerManager, images: Any, cgroup_version: int,
                 criu: bool, labels: dict[str, str]) -> None:
        self.name = name
        self.root = root
        self.m = manager
        self.images = images
        self.cgroup_version = cgroup_version
        self.criu = criu
        self.lazy_pages = False  # known, like criu, once `criu check` ran
        self.labels = labels
        self.host = host_features.probe()
        self.engine = EngineSettings()   # set by the daemon: what `info` shows of its settings
        self.config_file = ""
        from agent.dockerapi.events import Events

        self.events = Events(manager)  # the Docker API's event source, for `dockyard system events`
        self.identity = transport.AGENT  # with TLS, this node's certificate (agent/daemon.py sets it)
        self.peers = PeerGrants()  # what a peer agent's migration grant lets it do here

    # --- containers ---------------------------------------------------------------------------

    @_mapped
    async def Info(self, request: pb.Empty, context: Any) -> pb.AgentInfo:
        cs = list(self.m.containers.values())
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return pb.AgentInfo(
            name=self.name, version=VERSION, kernel=platform.release(), cgroup_version=self.cgroup_version,
            memory_bytes=mem, cpus=os.cpu_count() or 1, criu=self.criu, root=self.root,
            containers=len(cs), containers_running=sum(c.state.status == "running" for c in cs),
            containers_paused=sum(c.state.status == "paused" for c in cs),
            containers_stopped=sum(c.state.status not in ("running", "paused") for c in cs),
            images=len(self.images.list()), labels=self.labels, lazy_pages=self.lazy_pages,
            arch=self.host.arch, cpu_features=self.host.cpu_features,
            config_file=self.config_file, registry_mirrors=self.engine.registries.mirrors,
            insecure_registries=self.engine.registries.insecure, log_driver=self.engine.log.type,
            log_opts=self.engine.log.config, dns=self.engine.dns, dns_search=self.engine.dns_search,
            dns_options=self.engine.dns_options,
            default_ulimits=[f"{u.name}={u.soft}:{u.hard}" for u in self.engine.ulimits],
        )

    @_mapped
    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.ContainerSummary:
        cfg = convert.config_from_pb(request.config)
        files = await self.m.fetch_task_files(cfg) if cfg.task_files else None
        c = await asyncio.to_thread(self.m.create, cfg, files)
        return convert.summary(c)

    @_mapped
    async def StartContainer(self, request: pb.ContainerRef, context: Any) -> pb.ContainerSummary:
        return convert.summary(await self.m.start(request.id))

    @_mapped
    async def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> pb.ListContainersResponse:
        cs = self.m.listing(request.all)
        f = dict(request.filters)
        if "name" in f:
            cs = [c for c in cs if f["name"] in c.name]
        if "status" in f:
            cs = [c for c in cs if c.state.status == f["status"]]
        if "label" in f:
            k, _, v = f["label"].partition("=")
            cs = [c for c in cs if k in c.config.labels and (not v or c.config.labels[k] == v)]
        return pb.ListContainersResponse(containers=[convert.summary(c) for c in cs])

    @_mapped
    async def InspectContainer(self, request: pb.ContainerRef, context: Any) -> pb.JsonDocument:
        c = self.m.get(request.id)
        log = "" if c.config.log_config.type == "none" else str(self.m.files(c).log)
        extra = {"LogPath": log, "Driver": "overlay", "Mounts": self.m.mounts.info(c)}
        return pb.JsonDocument(json=json.dumps(convert.inspect(c, extra)))

    @_mapped
    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.ContainerSummary:
        timeout = None if request.timeout < 0 else request.timeout
        return convert.summary(await self.m.stop(request.id, timeout))

    @_mapped
    async def RestartContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.ContainerSummary:
        timeout = None if request.timeout < 0 else request.timeout
        return convert.summary(await self.m.restart(request.id, timeout))

    @_mapped
    async def KillContainer(self, request: pb.KillContainerRequest, context: Any) -> pb.ContainerSummary:
        return convert.summary(await self.m.kill(request.id, request.signal or "KILL"))

    @_mapped
    async def PauseContainer(self, request: pb.ContainerRef, context: Any) -> pb.ContainerSummary:
        return convert.summary(await self.m.pause(request.id))

    @_mapped
    async def UnpauseContainer(self, request: pb.ContainerRef, context: Any) -> pb.ContainerSummary:
        return convert.summary(await self.m.unpause(request.id))

    @_mapped
    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any) -> pb.Empty:
        if self.peers.peer_grant() is not None:
            self.peers.check_container(self.m.get(request.id).name)
        await self.m.remove(request.id, request.force, request.volumes)
        return pb.Empty()

    @_mapped
    async def WaitContainer(self, request: pb.ContainerRef, context: Any) -> pb.WaitResponse:
        c = await self.m.wait(request.id)
        return pb.WaitResponse(exit_code=c.state.exit_code, oom_killed=c.state.oom_killed, error=c.state.error)

    @_mapped
    async def RenameContainer(self, request: pb.RenameContainerRequest, context: Any) -> pb.Empty:
        self.m.rename(request.id, request.new_name)
        return pb.Empty()

    # --- user-defined bridge networks of this agent (agent/localnets.py, agent/netattach.py)

    def _local_network_info(self, n: Any) -> pb.LocalNetworkInfo:
        return pb.LocalNetworkInfo(name=n.name, id=n.id, subnet=n.subnet, gateway=n.gateway, labels=n.labels,
                                   containers=sorted(c.name for c in self.m.localnets.users(n)),
                                   internal=n.internal, ip_range=n.ip_range, aux_addresses=n.aux)

    @_mapped
    async def CreateLocalNetwork(self, request: pb.LocalNetworkSpec, context: Any) -> pb.LocalNetworkInfo:
        n = await asyncio.to_thread(self.m.localnets.create, request.name, request.subnet, request.gateway,
                                    dict(request.labels), {}, False, request.internal, request.ip_range,
                                    dict(request.aux_addresses))
        return self._local_network_info(n)

    @_mapped
    async def ListLocalNetworks(self, request: pb.Empty, context: Any) -> pb.LocalNetworkList:
        nets = sorted(self.m.localnets.nets.values(), key=lambda n: n.name)
        return pb.LocalNetworkList(networks=[self._local_network_info(n) for n in nets])

    @_mapped
    async def RemoveLocalNetwork(self, request: pb.LocalNetworkRef, context: Any) -> pb.Empty:
        n = self.m.localnets.get(request.name)
        users = self.m.localnets.users(n)
        if users:
            raise Conflict(f"error while removing network: network {n.name} id {n.id} has active endpoints "
                           f"({', '.join(c.name for c in users)})")
        await asyncio.to_thread(self.m.localnets.remove, n)
        return pb.Empty()

    @_mapped
    async def ConnectNetwork(self, request: pb.NetworkConnectRequest, context: Any) -> pb.Empty:
        from agent import netattach

        await netattach.connect(self.m, self.m.get(request.container), request.network, list(request.aliases),
                                request.ip)
        return pb.Empty()

    @_mapped
    async def DisconnectNetwork(self, request: pb.NetworkConnectRequest, context: Any) -> pb.Empty:
        from agent import netattach

        await netattach.disconnect(self.m, self.m.get(request.container), request.network)
        return pb.Empty()

    @_mapped
    async def UpdateContainer(self, request: pb.UpdateContainerRequest, context: Any) -> pb.ContainerSummary:
        limits = {f: getattr(request, f) for f in sorted(UPDATABLE_LIMITS) if request.HasField(f)}
        policy = convert.restart_policy_from_pb(request.restart_policy) if request.HasField("restart_policy") else None
        return convert.summary(await self.m.update(request.id, limits, policy))

    @_mapped_stream
    async def ContainerLogs(self, request: pb.LogsRequest, context: Any) -> AsyncIterator[pb.LogEntry]:
        want = {s for s, on in (("stdout", request.stdout), ("stderr", request.stderr)) if on} or {"stdout", "stderr"}
        tail = request.tail if request.tail >= 0 else -1
        async for stream, data, t in self.m.logs(request.id, request.follow, tail, request.since, request.until,
                                                request.details):
            if stream in want:
                yield pb.LogEntry(stream=stream, data=data, time=t)

    @_mapped
    async def Top(self, request: pb.TopRequest, context: Any) -> pb.TopResponse:
        titles, rows = await asyncio.to_thread(self.m.top, request.id)
        return pb.TopResponse(titles=titles, processes=[pb.ProcessRow(fields=r) for r in rows])

    @_mapped_stream
    async def Events(self, request: pb.EventsRequest, context: Any) -> AsyncIterator[pb.Event]:
        since = request.since or None
        until = request.until or None
        if until is not None and since is None and until <= time.time():
            return  # only past events were asked for, and there is no `since` to start them from
        async for ev in self.events.subscribe(since, until, lambda ev: True):
            actor = ev["Actor"]
            yield pb.Event(type=ev["Type"], action=ev["Action"], actor_id=actor["ID"],
                           attributes={str(k): str(v) for k, v in actor["Attributes"].items()},
                           time_nano=ev["timeNano"])

    @_mapped_stream
    async def Stats(self, request: pb.StatsRequest, context: Any) -> AsyncIterator[pb.StatsResponse]:
        prev: dict[str, tuple[int, float]] = {}

        async def sample() -> pb.StatsResponse:
            cs = [self.m.get(i) for i in request.ids] if request.ids else self.m.listing(False)
            out = []
            for c in cs:
                if c.state.status not in ("running", "paused"):
                    out.append(pb.ContainerStats(id=c.id, name=c.name))
                    continue
                try:
                    # The same reading as the /metrics collector's, so both show the same numbers.
                    s = await asyncio.to_thread(metrics.read_container, self.m, c)
                except Exception as e:
                    logging.getLogger("dockyard.agent").warning("stats of %s: %s", c.name, e)
                    continue
                st, now = s.stats, time.monotonic()
                cpu_pct = 0.0
                if c.id in prev and now > prev[c.id][1]:
                    cpu_pct = (st.cpu_usage_ns - prev[c.id][0]) / ((now - prev[c.id][1]) * 1e9) * 100.0
                prev[c.id] = (st.cpu_usage_ns, now)
                out.append(pb.ContainerStats(
                    id=c.id, name=c.name, cpu_percent=cpu_pct, cpu_usage_ns=st.cpu_usage_ns,
                    memory_usage=st.working_set, memory_limit=st.memory_limit, net_rx_bytes=s.rx_bytes,
                    net_tx_bytes=s.tx_bytes, block_read_bytes=st.blkio_read_bytes,
                    block_write_bytes=st.blkio_write_bytes, pids=st.pids_current))
            return pb.StatsResponse(stats=out)

        # Like docker stats --no-stream, sample twice a moment apart so CPU % means something.
        first = await sample()
        if not request.stream:
            await asyncio.sleep(0.5)
            yield await sample()
            return
        yield first
        while True:
            await asyncio.sleep(1.0)
            yield await sample()

    # --- attach ------------------------------------------------------------------------------

    async def Attach(self, request_iterator: AsyncIterator[pb.StreamInput],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("open"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`")
            return
        try:
            events = attachsession.attach(self.m, convert.attach_options(first.open),
                                          convert.session_inputs(request_iterator))
            async for ev in events:
                yield convert.stream_output(ev)
        except (AgentError, ImageError) as e:
            await context.abort(_status(e), str(e))

    # --- exec ---------------------------------------------------------------------------------

    async def Exec(self, request_iterator: AsyncIterator[pb.StreamInput],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("open"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`")
            return
        o = first.open
        if not o.exec.cmd:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "exec needs a command")
            return
        size = convert.session_size(o)
        session = ExecSession(self.m, o.container, convert.exec_process(o), (size.rows, size.cols) if size else None)
        try:
            session.start()
        except AgentError as e:
            await context.abort(_status(e), str(e))
            return

        async def pump_in() -> None:
            async for msg in request_iterator:
                kind = msg.WhichOneof("kind")
                if kind == "stdin":
                    await session.write(msg.stdin)
                elif kind == "close_stdin":
                    session.close_stdin()
                elif kind == "resize":
                    session.resize(msg.resize.rows, msg.resize.cols)

        pump = asyncio.ensure_future(pump_in())
        try:
            async for stream, data in session.output():
                yield pb.StreamOutput(stdout=data) if stream == "stdout" else pb.StreamOutput(stderr=data)
            yield pb.StreamOutput(exit=pb.ExitStatus(exit_code=session.exit_code or 0, error=session.error))
        finally:
            pump.cancel()
            session.close()

    # --- checkpoint and restore ---------------------------------------------------------------

    async def CheckpointContainer(self, request: pb.CheckpointRequest,
                                  context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CheckpointChunk]:
        try:
            if not request.export:
                stats = await self.m.checkpoints.checkpoint(request.id, request.leave_running)
                yield pb.CheckpointChunk(stats_json=json.dumps(stats))
                return
            with tempfile.TemporaryFile(dir=self.root) as tmp:
                stats = await self.m.checkpoints.checkpoint(request.id, request.leave_running, export=tmp)
                yield pb.CheckpointChunk(stats_json=json.dumps(stats))
                tmp.seek(0)
                while data := tmp.read(CHUNK):
                    yield pb.CheckpointChunk(data=data)
        except AgentError as e:
            await context.abort(_status(e), str(e))

    @_mapped
    async def RestoreContainer(self, request_iterator: AsyncIterator[pb.RestoreChunk], context: Any) -> pb.ContainerSummary:
        header: pb.RestoreHeader | None = None
        trace("agent: restore stream")
        # before a byte of the archive lands: the source then rolls back and keeps its copy
        diskspace.refuse_if_full(self.m.root, self.m.min_free_disk, "restore a migrated container")
        with tempfile.TemporaryFile(dir=self.root) as tmp:
            got_data = False
            digest = hashlib.sha256()
            async for chunk in request_iterator:
                if chunk.HasField("header"):
                    header = chunk.header
                else:
                    tmp.write(chunk.data)
                    digest.update(chunk.data)
                    got_data = True
            if header is None:
                raise InvalidArgument("restore: the stream did not start with a header")
            self.peers.check_restore(header.name, header.id, time.time())
            if not got_data:
                return convert.summary(await self.m.checkpoints.restore(header.id))
            if header.sha256:
                got = digest.hexdigest()
                if got != header.sha256:
                    raise InvalidArgument(f"restore: the archive's sha256 is {got}, the sender said {header.sha256}")
            tmp.seek(0)
            return convert.summary(await self.m.checkpoints.restore_archive(tmp, header.name, header.cold, header.page_server))

    async def MigrateContainer(self, request: pb.MigrateRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.MigrateProgress]:
        from agent import migration

        queue: asyncio.Queue[pb.MigrateProgress | BaseException] = asyncio.Queue()
        last_transfer = [0.0]

        def emit(p: pb.MigrateProgress) -> None:
            if p.phase == "transfer":  # at most ten a second
                now = time.monotonic()
                if now - last_transfer[0] < 0.1 and p.bytes < p.total:
                    return
                last_transfer[0] = now
            queue.put_nowait(p)

        async def run() -> None:
            try:
                queue.put_nowait(await migration.migrate(
                    self.m, request.id, migration.Target(request.target, request.target_node, request.grant, request.crl),
                    request.live, emit, lazy_pages=self.lazy_pages, identity=self.identity))
            except BaseException as e:
                queue.put_nowait(e)

        task = asyncio.ensure_future(run())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    code = _status(item) if isinstance(item, Exception) else grpc.StatusCode.CANCELLED
                    await context.abort(code, str(item))
                    return
                yield item
                if item.phase == "done":
                    return
        finally:
            if not task.done():
                await task  # never leave a migration half-way because the client went away

    # --- images -------------------------------------------------------------------------------

    @_mapped
    async def ImportImage(self, request_iterator: AsyncIterator[pb.DataChunk], context: Any) -> pb.ImageSummary:
        # Unpacked as it arrives (no temporary file of the whole tar); the header comes first.
        it = request_iterator.__aiter__()
        first = await anext(it, None)
        if first is None or not first.HasField("import_header"):
            raise InvalidArgument("import: the stream did not start with a header")
        header = first.import_header

        async def data() -> AsyncIterator[bytes]:
            async for chunk in it:
                if chunk.HasField("import_header"):
                    raise InvalidArgument("import: a second header in the stream")
                yield chunk.data

        def run(f: Any) -> Any:
            return self.images.import_tar(f, header.reference or None, list(header.changes), header.message)

        source = getattr(request_iterator, "file", None)  # the local API's client's own file
        image = await (asyncio.to_thread(run, source) if source is not None else consume(data(), run))
        return self._image_summary(image)

    async def ExportContainer(self, request: pb.ContainerRef, context: Any) -> AsyncIterator[pb.DataChunk]:
        try:
            c = self.m.get(request.id)
        except AgentError as e:
            await context.abort(_status(e), str(e))
            return
        with tempfile.TemporaryFile(dir=self.root) as tmp:
            await asyncio.to_thread(self.images.export_container, c.snapshot, tmp)
            tmp.seek(0)
            while True:
                data = tmp.read(CHUNK)
                if not data:
                    break
                yield pb.DataChunk(data=data)

    def _image_summary(self, image: Any) -> pb.ImageSummary:
        used = sum(1 for c in self.m.containers.values() if c.image_id == image.id)
        return pb.ImageSummary(id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                               created=image.created, size=image.size, containers=used,
                               labels=image.config.labels or {})

    @_mapped
    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        imgs = await asyncio.to_thread(self.images.list)
        return pb.ListImagesResponse(images=[self._image_summary(i) for i in imgs])

    @_mapped
    async def InspectImage(self, request: pb.ImageRef, context: Any) -> pb.JsonDocument:
        i = self.images.get(request.ref)
        doc = {
            "Id": i.id, "RepoTags": i.repo_tags, "RepoDigests": i.repo_digests,
            "Created": convert._iso(i.created), "Size": i.size, "Architecture": i.architecture, "Os": i.os,
            "Config": i.config.to_oci() if hasattr(i.config, "to_oci") else {},
            "RootFS": {"Type": "layers", "Layers": i.diff_ids}, "History": i.history,
        }
        return pb.JsonDocument(json=json.dumps(doc))

    @_mapped
    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        untagged, deleted = await asyncio.to_thread(
            self.images.remove, request.ref, request.force, self.m.users_of_image)
        return pb.RemoveImageResponse(untagged=untagged, deleted=deleted)

    @_mapped
    async def TagImage(self, request: pb.TagImageRequest, context: Any) -> pb.Empty:
        await asyncio.to_thread(self.images.tag, request.source, request.target)
        return pb.Empty()

