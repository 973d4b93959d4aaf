"""Routes of the Engine API: an optional /vX.YY prefix, (method, pattern) -> handler, and the one
place where the agent's and the image store's errors become Docker's status codes."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from agent.images import errors as image_errors
from agent.model import AgentError, Conflict, InvalidArgument, NotFound, Unavailable

from .http import HTTPError, Request, Response

API_VERSION = "1.45"
MIN_API_VERSION = "1.24"

_VERSIONED = re.compile(r"^/v(\d+\.\d+)(/.*)$")

Handler = Callable[[Request], Awaitable[Response]]


def _vtuple(v: str) -> tuple[int, int]:
    major, _, minor = v.partition(".")
    return int(major), int(minor)


def status_of(e: Exception) -> int:
    """Docker's status code for one of our errors."""
    from agent.images import registry

    table: list[tuple[type[Exception], int]] = [
        (registry.Unauthorized, 401), (registry.RegistryUnavailable, 503),
        (NotFound, 404), (Conflict, 409), (InvalidArgument, 400),
        (registry.RegistryError, 500), (image_errors.ImageError, 400),
        (Unavailable, 503), (AgentError, 500), (ValueError, 400),
    ]
    for cls, code in table:
        if isinstance(e, cls):
            return code
    return 500


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """pattern: a path with {name} for one segment and {name:path} for the rest (image names have '/')."""
        rx = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
        rx = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", rx)
        for m in method.split("|"):
            self.routes.append((m, re.compile(f"^{rx}/?$"), handler))

    async def __call__(self, req: Request) -> Response:
        m = _VERSIONED.match(req.path)
        if m:
            req.version, req.path = m.group(1), m.group(2)
            if _vtuple(req.version) > _vtuple(API_VERSION):
                raise HTTPError(400, f"client version {req.version} is too new. "
                                     f"Maximum supported API version is {API_VERSION}")
            if _vtuple(req.version) < _vtuple(MIN_API_VERSION):
                raise HTTPError(400, f"client version {req.version} is too old. "
                                     f"Minimum supported API version is {MIN_API_VERSION}, please upgrade "
                                     "your client to a newer version")
        else:
            req.version = API_VERSION
        allowed = False
        for method, rx, handler in self.routes:
            mm = rx.match(req.path)
            if mm is None:
                continue
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                allowed = True
                continue
            req.params = mm.groupdict()
            try:
                return await handler(req)
            except HTTPError:
                raise
            except (AgentError, ValueError) as e:
                raise HTTPError(status_of(e), str(e)) from e
        if allowed:
            raise HTTPError(405, f"method {req.method} is not allowed on {req.path}")
        raise HTTPError(404, f"page not found: {req.method} {req.path}")
