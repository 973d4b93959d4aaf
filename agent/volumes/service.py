"""The gRPC servicer of protos/volumes.proto (dockyard.volumes.Volumes): thin, protobuf only here.

Registered next to the Agent service by ``add_to_server`` (agent/daemon.py); errors map to status
codes through the agent's one table (agent/server.py `_status`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agent.model import AgentError
from protos import volumes_pb2 as pb
from protos import volumes_pb2_grpc as pbg

from .store import Volume, VolumeStore, matches

T = TypeVar("T")


def _mapped(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        from agent import status  # (the agent's one table; not at load: status imports the images package)

        try:
            return await fn(self, request, context)
        except (AgentError, ValueError, OSError) as e:
            await context.abort(status.code(e), str(e))
        raise AssertionError("unreachable")

    return wrapper


class VolumesServicer(pbg.VolumesServicer):
    def __init__(self, store: VolumeStore, problems: Callable[[list[str], list[str], list[str]], list[str]]) -> None:
        self.store = store
        self.problems = problems   # ContainerMounts.migration_problems

    def _pb(self, v: Volume, size: int = -1) -> pb.Volume:
        return pb.Volume(name=v.name, driver=v.driver, mountpoint=str(self.store.path(v.name)), labels=v.labels,
                         options=v.options, created=v.created, anonymous=v.anonymous,
                         used_by=self.store.users(v.name), size=size)

    @_mapped
    async def Create(self, request: pb.CreateRequest, context: Any) -> pb.Volume:
        v = await asyncio.to_thread(self.store.create, request.name, request.driver or "local",
                                    dict(request.labels), dict(request.options))
        return self._pb(v)

    @_mapped
    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        f = {k: [v] for k, v in request.filters.items()}
        return pb.ListResponse(volumes=[self._pb(v) for v in await asyncio.to_thread(self.store.list)
                                        if matches(v, bool(self.store.users(v.name)), f)])

    @_mapped
    async def Inspect(self, request: pb.VolumeRef, context: Any) -> pb.Volume:
        v = self.store.get(request.name)
        return self._pb(v, await asyncio.to_thread(self.store.size, v.name))

    @_mapped
    async def Remove(self, request: pb.RemoveRequest, context: Any) -> pb.RemoveResponse:
        removed, errors = [], []
        for name in request.names:
            try:
                await asyncio.to_thread(self.store.remove, name, request.force)
                removed.append(name)
            except AgentError as e:
                errors.append(str(e))
        return pb.RemoveResponse(removed=removed, errors=errors)

    @_mapped
    async def Prune(self, request: pb.PruneRequest, context: Any) -> pb.PruneResponse:
        removed, space = await asyncio.to_thread(self.store.prune, request.all, dict(request.labels))
        return pb.PruneResponse(removed=removed, space_reclaimed=space)


    @_mapped
    async def CheckMigration(self, request: pb.MigrationCheck, context: Any) -> pb.MigrationCheckResult:
        return pb.MigrationCheckResult(problems=self.problems(list(request.bind_sources), list(request.volumes),
                                                                  list(request.bind_propagation)))


def add_to_server(server: grpc.aio.Server, manager: Any) -> None:
    """Serve dockyard.volumes.Volumes on ``server`` (called by agent/daemon.py)."""
    servicer = VolumesServicer(manager.volumes, manager.mounts.migration_problems)
    pbg.add_VolumesServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
