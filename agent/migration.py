"""Moving a container to another agent, driven by the source agent.

    live: CRIU-dump it (downtime starts) -> stream the checkpoint archive -> the target restores it
          (downtime ends) -> remove it here
    cold: stop it (downtime starts) -> stream its writable layer and config -> the target creates
          and starts it (downtime ends) -> remove it here

The image goes first if the target lacks it (as a docker-archive through the target's Images.Load).
The archive is streamed in chunks with its sha256 in the header, which the target checks before it
makes anything. If anything fails before the target runs the container, the source brings its own
copy back (restore from the checkpoint, or start again): there is always exactly one copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agent.containers import ContainerManager
from agent.model import AgentError, Conflict, Unavailable
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg

CHUNK = 1 << 20
Progress = Callable[[pb.MigrateProgress], None]


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
                        emit: Progress) -> None:
    stub = pbg.AgentStub(channel)  # type: ignore[no-untyped-call]
    try:
        await stub.InspectImage(pb.ImageRef(ref=image_id), timeout=30)
        return
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    from protos import images_pb2 as ipb
    from protos import images_pb2_grpc as ipbg

    try:
        tagged = m.images.get(ref).id == image_id
    except Exception:
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
        await istub.Load(chunks(), timeout=600)


async def _send_archive(channel: grpc.aio.Channel, f: Any, name: str, cold: bool, emit: Progress,
                        digest: str) -> str:
    f.seek(0, os.SEEK_END)
    total = f.tell()
    f.seek(0)
    sent = 0

    async def chunks() -> AsyncIterator[pb.RestoreChunk]:
        nonlocal sent
        yield pb.RestoreChunk(header=pb.RestoreHeader(name=name, cold=cold, sha256=digest))
        while data := f.read(CHUNK):
            sent += len(data)
            emit(pb.MigrateProgress(phase="transfer", bytes=sent, total=total))
            yield pb.RestoreChunk(data=data)

    stub = pbg.AgentStub(channel)  # type: ignore[no-untyped-call]
    summary = await stub.RestoreContainer(chunks(), timeout=600)
    return str(summary.id)


async def migrate(m: ContainerManager, ref: str, target: str, live: bool, emit: Progress) -> pb.MigrateProgress:
    c = m.get(ref)
    if c.state.status not in ("running", "paused") and live:
        raise Conflict(f"container {c.name} is not running: nothing to migrate live (use cold)")
    t0 = time.monotonic()
    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    try:
        try:
            await pbg.AgentStub(channel).Info(pb.Empty(), timeout=5)  # type: ignore[no-untyped-call]
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"target agent {target} does not answer: {e.details()}") from e
        await _ensure_image(m, channel, c.image_id, c.image_ref, emit)
        was_running = c.state.status in ("running", "paused")
        with tempfile.TemporaryFile(dir=m.root) as tmp:
            down = time.monotonic()
            out = HashingWriter(tmp)
            if live:
                emit(pb.MigrateProgress(phase="checkpoint", message=f"dumping {c.name} with CRIU"))
                await m.checkpoint(c.id, export=out, level=1)
            else:
                if was_running:
                    emit(pb.MigrateProgress(phase="stop", message=f"stopping {c.name}"))
                    await m.stop(c.id)
                await asyncio.to_thread(m.export_cold, c.id, out, 1)
            try:
                new_id = await _send_archive(channel, tmp, c.name, not live, emit, out.hexdigest())
            except (grpc.aio.AioRpcError, OSError) as e:
                detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                emit(pb.MigrateProgress(phase="rollback", message=f"target failed ({detail}): bringing {c.name} back here"))
                if live:
                    await m.restore(c.id)
                elif was_running:
                    c.state.stopped_by_user = False
                    await m.start(c.id)
                raise MigrationFailed(f"migration of {c.name} to {target} failed, rolled back: {detail}") from e
            downtime = time.monotonic() - down
        emit(pb.MigrateProgress(phase="cleanup", message=f"removing {c.name} here"))
        await m.remove(c.id, force=True)
        return pb.MigrateProgress(phase="done", new_id=new_id, downtime_seconds=downtime,
                                  total_seconds=time.monotonic() - t0)
    finally:
        await channel.close()
