"""The agent's one table from its error kinds (agent/errors.py) to gRPC status codes, for every
servicer of the process (server.py, images/service.py). A subsystem's errors subclass a kind, so
they need no row of their own unless their code differs from their kind's. Most specific first: a
registry's "not found" is NOT_FOUND before it is a RegistryError. What no row names is INTERNAL: a
bug, not the client's doing."""

from __future__ import annotations

import grpc

from agent.diskspace import DiskFull
from agent.errors import AgentError, Conflict, Forbidden, InvalidArgument, NotFound, Unavailable
from agent.images import registry
from agent.images.errors import ImageError

TABLE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (registry.Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (registry.RegistryUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (registry.RegistryError, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DiskFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (AgentError, grpc.StatusCode.UNKNOWN),
]


def code(e: BaseException) -> grpc.StatusCode:
    for cls, status in TABLE:
        if isinstance(e, cls):
            return status
    return grpc.StatusCode.INTERNAL
