"""Moving a container to another agent, driven by the source agent.

    post-copy (live, when both ends can): CRIU-dump it without its memory pages, which CRIU keeps
          and serves here (downtime starts) -> stream the small archive -> the target restores it
          with lazy pages (downtime ends) -> the target pulls every page -> remove it here
    live: CRIU-dump it (downtime starts) -> stream the checkpoint archive -> the target restores it
          (downtime ends) -> remove it here
    cold: stop it (downtime starts) -> stream its writable layer and config -> the target creates
          and starts it (downtime ends) -> remove it here

The image goes first if the target lacks it (as a docker-archive through the target's Images.Load).
The archive is streamed in chunks with its sha256 in the header, which the target checks before it
makes anything. If anything fails before the target runs the container, the source brings its own
copy back (restore from the checkpoint, or start again): there is always exactly one copy.
Post-copy has one more window: the target runs while its pages still come from here. If the page
transfer fails then, the target kills its copy (its memory is incomplete) and CRIU unfreezes ours,
which runs on; the source copy is removed only once the target has every page (agent/checkpoint/lazy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from agent.containermounts import volume_names
from agent.containers import ContainerManager
from agent.images.errors import ImageError
from agent.model import AgentError, Conflict, NotFound, Unavailable
from agent.runtime.procs import trace
from common import faults, transport
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg

log = logging.getLogger("dockyard.agent.migration")

CHUNK = 1 << 20
Progress = Callable[[pb.MigrateProgress], None]


@dataclass(frozen=True)
class Target:
    """Where a container moves: the target agent's address and, over TLS, its node id (the name its
    certificate must carry) and the leader's grant, sent with every call (common/grants.py)."""

    address: str
    node_id: str = ""
    grant: bytes = b""
    crl: bytes = b""  # over TLS: removed nodes' certificates, refused by our CRIU page server

    @property
    def metadata(self) -> tuple[tuple[str, bytes], ...]:
        from common import grants

        return ((grants.METADATA, self.grant),) if self.grant else ()

    def dial(self, identity: transport.Identity) -> grpc.aio.Channel:
        if identity.tls is not None and not (self.node_id and self.grant):
            raise Unavailable("over TLS a migration needs the target's node id and a grant from the scheduler "
                              "(is the scheduler older than this agent?)")
        return transport.dial(self.address, identity, transport.Role.AGENT, self.node_id)


class MigrationFailed(AgentError):
    pass


class HashingWriter:
    """Hashes what it writes, so the archive's digest costs no second pass over it."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.h = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return int(self.out.write(data))

    def flush(self) -> None:
        self.out.flush()

    def hexdigest(self) -> str:
        return self.h.hexdigest()


async def _ensure_image(m: ContainerManager, channel: grpc.aio.Channel, image_id: str, ref: str,
                        emit: Progress, md: Any) -> None:
    stub = pbg.AgentStub(channel)  # type: ignore[no-untyped-call]
    try:
        await stub.InspectImage(pb.ImageRef(ref=image_id), timeout=30, metadata=md)
        return
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    from protos import images_pb2 as ipb
    from protos import images_pb2_grpc as ipbg

    try:
        tagged = m.images.get(ref).id == image_id
    except ImageError:   # not here by that name (or not a name at all): sent by its id
        tagged = False
    with tempfile.TemporaryFile(dir=m.root) as tmp:
        await asyncio.to_thread(m.images.save, [ref if tagged else image_id], tmp)
        total = tmp.tell()
        tmp.seek(0)
        emit(pb.MigrateProgress(phase="image", total=total, message=f"sending image {ref} ({total} bytes)"))

        async def chunks() -> AsyncIterator[Any]:
            while data := tmp.read(CHUNK):
                yield ipb.Chunk(data=data)

        istub = ipbg.ImagesStub(channel)  # type: ignore[no-untyped-call]
        await istub.Load(chunks(), timeout=600, metadata=md)


async def _send_archive(channel: grpc.aio.Channel, f: Any, name: str, cold: bool, emit: Progress,
                        digest: str, md: Any, page_server: str = "") -> str:
    f.seek(0, os.SEEK_END)
    total = f.tell()
    f.seek(0)
    sent = 0

    async def chunks() -> AsyncIterator[pb.RestoreChunk]:
        nonlocal sent
        yield pb.RestoreChunk(header=pb.RestoreHeader(name=name, cold=cold, sha256=digest, page_server=page_server))
        while data := f.read(CHUNK):
            sent += len(data)
            emit(pb.MigrateProgress(phase="transfer", bytes=sent, total=total))
            yield pb.RestoreChunk(data=data)

    stub = pbg.AgentStub(channel)  # type: ignore[no-untyped-call]
    summary = await stub.RestoreContainer(chunks(), timeout=600, metadata=md)
    return str(summary.id)


def _frozen(name: str, emit: Progress) -> Callable[[], None]:
    """The "frozen" phase: the tree is in CRIU's images and its network locked here, so nothing of
    it answers on this host any more. The scheduler points its cluster addresses at the target
    then (scheduler/migrate.py), while the archive goes and the target restores."""
    def dumped() -> None:
        emit(pb.MigrateProgress(phase="frozen", message=f"{name} is frozen here"))

    return dumped


async def migrate(m: ContainerManager, ref: str, to: Target, live: bool, emit: Progress,
                  lazy_pages: bool = False, identity: transport.Identity = transport.AGENT) -> pb.MigrateProgress:
    """lazy_pages: post-copy is possible on this host (the target says for itself). ``identity``:
    this node's, whose certificate the target checks against the grant's source."""
    c = m.get(ref)
    if c.state.status not in ("running", "paused") and live:
        raise Conflict(f"container {c.name} is not running: nothing to migrate live (use cold)")
    t0 = time.monotonic()
    target, md = to.address, to.metadata
    channel = to.dial(identity)
    try:
        try:
            info = await pbg.AgentStub(channel).Info(pb.Empty(), timeout=5, metadata=md)  # type: ignore[no-untyped-call]
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"target agent {target} does not answer: {e.details()}") from e
        await _check_mounts(m, c.id, channel, target, md)
        await _ensure_image(m, channel, c.image_id, c.image_ref, emit, md)
        if live and lazy_pages and info.lazy_pages and c.state.status == "running" and _pages_servable(identity, target):
            return await _migrate_post_copy(m, c.id, channel, target, emit, t0, md, to.crl)
        was_running = c.state.status in ("running", "paused")
        with tempfile.TemporaryFile(dir=m.root) as tmp:
            down = time.monotonic()
            out = HashingWriter(tmp)
            if live:
                emit(pb.MigrateProgress(phase="checkpoint", message=f"dumping {c.name} with CRIU"))
                await m.checkpoints.checkpoint(c.id, export=out, level=1, dumped=_frozen(c.name, emit))
            else:
                if was_running:
                    emit(pb.MigrateProgress(phase="stop", message=f"stopping {c.name}"))
                    await m.stop(c.id)
                await asyncio.to_thread(m.checkpoints.export_cold, c.id, out, 1)
            try:
                new_id = await _send_archive(channel, tmp, c.name, not live, emit, out.hexdigest(), md)
            except (grpc.aio.AioRpcError, OSError) as e:
                detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                emit(pb.MigrateProgress(phase="rollback", message=f"target failed ({detail}): bringing {c.name} back here"))
                if live:
                    await m.checkpoints.restore(c.id)
                elif was_running:
                    c.state.stopped_by_user = False
                    await m.start(c.id)
                raise MigrationFailed(f"migration of {c.name} to {target} failed, rolled back: {detail}") from e
            downtime = time.monotonic() - down
        emit(pb.MigrateProgress(phase="cleanup", message=f"removing {c.name} here"))
        await m.remove(c.id, force=True)
        await _remove_moved_volumes(m, c)
        return pb.MigrateProgress(phase="done", new_id=new_id, downtime_seconds=downtime,
                                  total_seconds=time.monotonic() - t0)
    finally:
        await channel.close()


def _pages_servable(identity: transport.Identity, target: str) -> bool:
    """Over TLS the target checks our page server's certificate against the address it dials, so
    post-copy needs this node's certificate to name the address the target sees us by (an older
    certificate without it: the checkpoint goes as an archive over mutual-TLS gRPC instead)."""
    if identity.tls is None:
        return True
    from agent.checkpoint.lazy import local_address_towards
    from common import pki

    host, _, port = target.rpartition(":")
    address = local_address_towards(host.strip("[]"), int(port))
    if address in pki.ip_sans(identity.tls.cert_pem):
        return True
    log.warning("post-copy off for this move: this node's certificate does not name %s (join again to get it)",
                address)
    return False


async def _check_mounts(m: ContainerManager, cid: str, channel: grpc.aio.Channel, target: str, md: Any) -> None:
    """Before anything stops: the container's volumes move with it (none may be shared with another
    container here, none may exist on the target), and its bind sources must exist there."""
    from protos import volumes_pb2 as vpb
    from protos import volumes_pb2_grpc as vpbg

    c = m.get(cid)
    if not c.config.mounts:
        return
    problems = m.mounts.shared(c)
    binds = [x for x in c.config.mounts if x.type == "bind"]
    try:
        r = await vpbg.VolumesStub(channel).CheckMigration(  # type: ignore[no-untyped-call]
            vpb.MigrationCheck(bind_sources=[x.source for x in binds], volumes=volume_names(c),
                               bind_propagation=[x.propagation for x in binds]), timeout=30, metadata=md)
    except grpc.aio.AioRpcError as e:
        raise Unavailable(f"target agent {target} cannot say whether {c.name}'s mounts fit: {e.details()}") from e
    problems += [f"{p} ({target})" for p in r.problems]
    if problems:
        raise Conflict(f"cannot move {c.name} to {target}: " + "; ".join(problems))


async def _remove_moved_volumes(m: ContainerManager, c: Any) -> None:
    """Its volumes went with it: their copies here go once the target runs it."""

    names = volume_names(c)
    if names:
        await asyncio.to_thread(m.mounts.remove, names)


async def _migrate_post_copy(m: ContainerManager, cid: str, channel: grpc.aio.Channel, target: str,
                             emit: Progress, t0: float, md: Any, crl: bytes = b"") -> pb.MigrateProgress:
    from agent.checkpoint.criu import CriuError
    from agent.checkpoint.lazy import free_port, local_address_towards

    c = m.get(cid)
    host, _, port = target.rpartition(":")
    address = local_address_towards(host.strip("[]"), int(port))
    with tempfile.TemporaryFile(dir=m.root) as tmp:
        down = time.monotonic()
        out = HashingWriter(tmp)
        emit(pb.MigrateProgress(phase="checkpoint", message=f"dumping {c.name} with CRIU (post-copy)"))
        # Level 1: the archive holds the small images and the writable layer, not the memory.
        dump = await m.checkpoints.checkpoint_lazy(c.id, address, free_port(address), export=out, level=1,
                                                   dumped=_frozen(c.name, emit), crl=crl)
        trace("migrate: archive written")
        await _withdraw(m, c, back=False)
        await faults.FAULTS.pause_after_dump(m.root)  # tests kill the agent here (common/faults.py)
        try:
            new_id = await _send_archive(channel, tmp, c.name, False, emit, out.hexdigest(), md, dump.page_server)
        except (grpc.aio.AioRpcError, OSError) as e:
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            emit(pb.MigrateProgress(phase="rollback", message=f"target failed ({detail}): {c.name} runs on here"))
            await dump.abort()
            if await m.checkpoints.lazy_dump_ended(c.id, ok=False):
                await _withdraw(m, c, back=True)
            raise MigrationFailed(f"migration of {c.name} to {target} failed, rolled back: {detail}") from e
        downtime = time.monotonic() - down
        trace("migrate: the target runs it")
    emit(pb.MigrateProgress(phase="pages", message=f"{c.name} runs on the target; its memory follows from here"))
    try:
        await dump.wait(timeout=600)
    except CriuError as e:
        if not await m.checkpoints.lazy_dump_ended(c.id, ok=False):
            # CRIU failed after it had ended the tree here (or someone removed it): the target's
            # copy is the one left.
            log.warning("%s: criu dump failed after the move (%s); the target's copy is kept", c.name, e)
            await _remove_source_copy(m, c.id)
            await _remove_moved_volumes(m, c)
            return pb.MigrateProgress(phase="done", new_id=new_id, downtime_seconds=downtime,
                                      total_seconds=time.monotonic() - t0)
        # The target's copy lost its page source: its watchdog killed it, and CRIU unfroze ours.
        await _withdraw(m, c, back=True)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await pbg.AgentStub(channel).RemoveContainer(  # type: ignore[no-untyped-call]
                pb.RemoveContainerRequest(id=new_id, force=True), timeout=30, metadata=md)
        raise MigrationFailed(f"migration of {c.name} to {target} failed while its memory was pulled, "
                              f"rolled back: {e}") from e
    await m.checkpoints.lazy_dump_ended(c.id, ok=True)
    emit(pb.MigrateProgress(phase="cleanup", message=f"removing {c.name} here"))
    await _remove_source_copy(m, c.id)
    await _remove_moved_volumes(m, c)
    return pb.MigrateProgress(phase="done", new_id=new_id, downtime_seconds=downtime,
                              total_seconds=time.monotonic() - t0)


async def _withdraw(m: ContainerManager, c: Any, back: bool) -> None:
    """Post-copy keeps the frozen tree here while the target runs it: its cluster ports go down,
    so this host's containers reach it on the target (the source withdraws); back up on a rollback.
    Best effort: the container's removal takes the ports anyway."""
    if not c.endpoint or not c.endpoint.get("overlays"):
        return
    from agent.runtime.network import Endpoint

    try:
        await asyncio.to_thread(m.network.withdraw, Endpoint.from_dict(c.endpoint), back)
    except Exception as e:
        log.warning("%s: cluster ports %s: %s", c.name, "up" if back else "down", e)


async def _remove_source_copy(m: ContainerManager, cid: str) -> None:
    """Gone already is fine: a scheduler that saw the target run it may have removed it meanwhile."""
    with contextlib.suppress(NotFound):
        await m.remove(cid, force=True)
