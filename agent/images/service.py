"""The gRPC servicer of protos/images.proto (dockyard.images.Images): thin, protobuf only here.

It converts messages to the package's own types (BuildOptions, Auth, Progress) and back, runs the
blocking store and registry work in threads, and maps errors to status codes in one table
(`_code`). Registered next to the Agent service by ``add_to_server`` (agent/daemon.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from agent import status
from protos import images_pb2 as pb
from protos import images_pb2_grpc as pbg

from . import registry
from .build import Builder, BuildOptions, ContextCache
from .errors import ImageError
from .imagestore import ImageStore
from .pipes import consume, produce

T = TypeVar("T")
CHUNK = 256 * 1024


_code = status.code  # the agent's one table (agent/status.py)


def _expected(e: BaseException) -> bool:
    from agent.model import AgentError

    return isinstance(e, (ImageError, ValueError, OSError, AgentError))


def _auth(a: pb.AuthConfig) -> registry.Auth:
    return registry.Auth(a.username, a.password, a.identity_token, a.registry_token)


def _progress(p: registry.Progress) -> pb.Progress:
    return pb.Progress(id=p.id, status=p.status, current=p.current, total=p.total, image_id=p.image_id,
                       digest=p.digest, reference=p.reference)


class ImagesServicer(pbg.ImagesServicer):
    def __init__(self, manager: Any, store: ImageStore) -> None:
        self.m = manager
        self.store = store
        self.contexts = ContextCache(store.tmp / "contexts")

    def _in_use(self, image_id: str) -> list[str]:
        if self.m is None:
            return []
        users: list[str] = self.m.users_of_image(image_id)
        return users

    async def _threaded_stream(self, fn: Callable[[Callable[[registry.Progress], None]], T],
                               context: Any) -> AsyncIterator[pb.Progress]:
        """Run ``fn(emit)`` in a thread and yield what it emits as it goes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[registry.Progress | None] = asyncio.Queue()

        def emit(p: registry.Progress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, p)

        def run() -> T:
            try:
                return fn(emit)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield _progress(item)
            await task
        except BaseException as e:
            if not task.done():
                with contextlib.suppress(BaseException):
                    await task
            if _expected(e):
                await context.abort(_code(e), str(e))
            raise

    # --- build ----------------------------------------------------------------------------------------

    async def Build(self, request_iterator: AsyncIterator[pb.BuildInput],
                    grpc_context: Any) -> AsyncIterator[pb.BuildEvent]:
        work = self.store.tmp / f"build-{os.getpid()}-{secrets.token_hex(6)}"
        work.mkdir()
        try:
            options: pb.BuildOptions | None = None
            digest = hashlib.sha256()  # hashed as it arrives: the unpacked context is kept by it
            with open(work / "context.tar", "wb") as ctx:
                async for msg in request_iterator:
                    if msg.HasField("options"):
                        options = msg.options
                    else:
                        ctx.write(msg.context)
                        digest.update(msg.context)
            if options is None:
                raise ImageError("build: the stream did not start with the build options")
            context = await asyncio.to_thread(self.contexts.acquire, work / "context.tar", digest.hexdigest(), work)
            (work / "context.tar").unlink()
            opts = BuildOptions(
                dockerfile=options.dockerfile, dockerfile_name=options.dockerfile_name or "Dockerfile",
                tags=list(options.tags), build_args=dict(options.build_args), no_cache=options.no_cache,
                target=options.target, network=options.network or "bridge", labels=dict(options.labels),
            )
            auths = {k: _auth(v) for k, v in options.auths.items()}

            async def puller(ref: str) -> str:
                from . import reference as refs

                r = refs.parse(ref)
                auth = auths.get(registry.config_key(r.domain)) or auths.get(r.domain) or registry.Auth()
                return await asyncio.to_thread(registry.pull, self.store, ref, auth)

            builder = Builder(self.store, self.m, puller, self.contexts)
            try:
                async for ev in builder.build(context, opts):
                    yield pb.BuildEvent(stream=ev.text, step=ev.step, total=ev.total, cached=ev.cached,
                                        image_id=ev.image_id)
            finally:
                await asyncio.to_thread(self.contexts.release, context)
        except BaseException as e:
            if _expected(e):
                await grpc_context.abort(_code(e), str(e))
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    # --- archives -------------------------------------------------------------------------------------

    async def Save(self, request: pb.SaveRequest, context: Any) -> AsyncIterator[pb.Chunk]:
        if request.format not in ("", "docker", "oci", "docker-archive", "oci-archive"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"save: unknown format {request.format!r} (docker or oci)")
        fmt = "oci" if request.format.startswith("oci") else "docker"
        # Streamed as it is written: no temporary file of the whole archive. A local client's own
        # file (agent/local_api.py) is written directly, and nothing is sent.
        out_file = getattr(context, "file", None)
        try:
            if out_file is not None:
                await asyncio.to_thread(self.store.save, list(request.refs), out_file, fmt)
                await asyncio.to_thread(out_file.flush)
                return
            async for data in produce(lambda out: self.store.save(list(request.refs), out, fmt), CHUNK):
                yield pb.Chunk(data=data)
        except Exception as e:
            if _expected(e):
                await context.abort(_code(e), str(e))
            raise

    async def Load(self, request_iterator: AsyncIterator[pb.Chunk], context: Any) -> pb.LoadResponse:
        # Read as it arrives: each layer is unpacked as it streams past (archive.load).
        source = getattr(request_iterator, "file", None)  # the local API's client's own file
        try:
            if source is not None:
                images = await asyncio.to_thread(self.store.load, source)
            else:
                images = await consume((chunk.data async for chunk in request_iterator), self.store.load)
        except Exception as e:
            if _expected(e):
                await context.abort(_code(e), str(e))
            raise
        return pb.LoadResponse(images=[pb.LoadedImage(id=i.id, repo_tags=i.repo_tags) for i in images])

    # --- listings -------------------------------------------------------------------------------------

    async def History(self, request: pb.HistoryRequest, context: Any) -> pb.HistoryResponse:
        try:
            rows = await asyncio.to_thread(self.store.history, request.ref)
        except Exception as e:
            if _expected(e):
                await context.abort(_code(e), str(e))
            raise
        return pb.HistoryResponse(entries=[
            pb.HistoryEntry(id=r["id"], created=r["created"], created_by=r["created_by"], size=r["size"],
                            comment=r["comment"], empty_layer=r["empty_layer"]) for r in rows])

    async def Prune(self, request: pb.PruneRequest, context: Any) -> pb.PruneResponse:
        try:
            untagged: list[str] = []
            deleted: list[str] = []
            reclaimed = 0
            if not request.only_build_cache:
                untagged, deleted, reclaimed = await asyncio.to_thread(self.store.prune, request.all, self._in_use)
            if request.build_cache or request.only_build_cache:
                reclaimed += await asyncio.to_thread(self.contexts.prune)
        except Exception as e:
            if _expected(e):
                await context.abort(_code(e), str(e))
            raise
        return pb.PruneResponse(untagged=untagged, deleted=deleted, reclaimed=reclaimed)

    async def SystemDf(self, request: pb.SystemDfRequest, context: Any) -> pb.SystemDfResponse:
        du = await asyncio.to_thread(self.store.disk_usage)
        volume_rows = await asyncio.to_thread(self._volumes_row)
        kept, kept_active, kept_size, kept_reclaimable = await asyncio.to_thread(self.contexts.usage)
        shown = {i.id for i in await asyncio.to_thread(self.store.list)}
        containers = list(getattr(self.m, "containers", {}).values()) if self.m is not None else []
        used_images = {c.image_id for c in containers}
        items = du["images"]["items"]
        top = [i for i in items if i["id"] in shown]
        cache = [i for i in items if i["id"] not in shown]
        running = [c for c in containers if c.state.status in ("running", "paused", "restarting")]
        rows = [
            pb.DfRow(type="Images", total=len(top), active=sum(1 for i in top if i["id"] in used_images),
                     size=du["images"]["size"], reclaimable=du["images"]["reclaimable"]),
            pb.DfRow(type="Containers", total=len(containers), active=len(running), size=du["containers"]["size"],
                     reclaimable=sum(it["size"] for it in du["containers"]["items"]
                                     if it["key"] not in {c.snapshot for c in running})),
            *volume_rows,
            # build steps' images, and the contexts kept unpacked for the next build (build.py)
            pb.DfRow(type="Build Cache", total=len(cache) + kept, active=kept_active,
                     size=sum(i["unique_size"] for i in cache) + kept_size,
                     reclaimable=sum(i["unique_size"] for i in cache) + kept_reclaimable),
        ]
        created = {i.id: i.created for i in await asyncio.to_thread(self.store.list, True)}
        images = [pb.DfImage(id=i["id"], repo_tags=i["repo_tags"], created=created.get(i["id"], 0.0), size=i["size"],
                             shared_size=i["shared_size"], unique_size=i["unique_size"],
                             containers=sum(1 for c in containers if c.image_id == i["id"])) for i in top]
        return pb.SystemDfResponse(rows=rows, images=images)

    def _volumes_row(self) -> list[pb.DfRow]:
        """docker's "Local Volumes": in use = mounted by any container; reclaimable = the others."""
        volumes = getattr(self.m, "volumes", None)
        if volumes is None:
            return []
        sizes = {v.name: (volumes.size(v.name), bool(volumes.users(v.name))) for v in volumes.list()}
        return [pb.DfRow(type="Local Volumes", total=len(sizes), active=sum(1 for _, used in sizes.values() if used),
                         size=sum(n for n, _ in sizes.values()),
                         reclaimable=sum(n for n, used in sizes.values() if not used))]

    # --- registry -------------------------------------------------------------------------------------

    async def Pull(self, request: pb.PullRequest, context: Any) -> AsyncIterator[pb.Progress]:
        auth = _auth(request.auth)
        async for p in self._threaded_stream(lambda emit: registry.pull(self.store, request.ref, auth, emit), context):
            yield p

    async def Push(self, request: pb.PushRequest, context: Any) -> AsyncIterator[pb.Progress]:
        auth = _auth(request.auth)
        async for p in self._threaded_stream(lambda emit: registry.push(self.store, request.ref, auth, emit), context):
            yield p

    async def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        try:
            status = await asyncio.to_thread(registry.login, request.registry, _auth(request.auth))
        except Exception as e:
            if _expected(e):
                await context.abort(_code(e), str(e))
            raise
        return pb.LoginResponse(status=status)


def add_to_server(server: grpc.aio.Server, manager: Any, store: ImageStore) -> ImagesServicer:
    """Serve dockyard.images.Images on ``server`` (called by agent/daemon.py)."""
    servicer = ImagesServicer(manager, store)
    pbg.add_ImagesServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return servicer
