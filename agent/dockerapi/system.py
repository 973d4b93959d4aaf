"""System endpoints: /_ping, /version, /info, /events, /system/df; what only a swarm manager or a
plugin host answers is refused as Docker refuses it on a node that is neither."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .http import Body, HTTPError, Json, Request, Response, Stream
from .router import API_VERSION, Router

if TYPE_CHECKING:
    from .api import DockerAPI

SWARM_MESSAGE = ("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect "
                 "this node to swarm and try again.")


def parse_time(value: str, what: str) -> float | None:
    """docker's timestamps in queries: unix seconds (with a fraction) or RFC 3339."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    import datetime

    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise HTTPError(400, f"invalid {what} {value!r}: want unix seconds or an RFC 3339 time") from None


def parse_filters(req: Request) -> dict[str, list[str]]:
    """?filters= in both forms: {"label": ["a=b"]} (docker-py) and {"label": {"a=b": true}} (the Go CLI)."""
    raw = req.arg("filters")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise HTTPError(400, f"invalid filters {raw!r}: not JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"invalid filters {raw!r}: want an object")
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[k] = [x for x, on in v.items() if on]
        elif isinstance(v, list):
            out[k] = [str(x) for x in v]
        elif isinstance(v, str):
            out[k] = [v]
        else:
            raise HTTPError(400, f"invalid filter {k!r}: {v!r}")
    return out


def check_filters(filters: dict[str, list[str]], allowed: set[str]) -> None:
    for k in filters:
        if k not in allowed:
            raise HTTPError(400, f"invalid filter '{k}'")


def register(r: Router, api: DockerAPI) -> None:
    async def ping(req: Request) -> Response:
        headers = [("Api-Version", API_VERSION), ("Builder-Version", "1"), ("Docker-Experimental", "false"),
                   ("Ostype", "linux"), ("Swarm", "inactive"), ("Cache-Control", "no-cache, no-store, must-revalidate"),
                   ("Pragma", "no-cache")]
        return Body(200, b"OK", "text/plain; charset=utf-8", headers)

    async def version(req: Request) -> Response:
        return Json(200, api.version())

    async def info(req: Request) -> Response:
        return Json(200, await asyncio.to_thread(api.info))

    async def events(req: Request) -> Response:
        since = parse_time(req.arg("since"), "since")
        until = parse_time(req.arg("until"), "until")
        filters = parse_filters(req)
        check_filters(filters, {"container", "event", "image", "label", "type", "network", "volume", "daemon",
                                "scope"})
        ids = {c.id: c.name for c in api.m.containers.values()}

        def match(ev: dict[str, Any]) -> bool:
            actor = ev["Actor"]
            attrs = actor["Attributes"]
            if "type" in filters and ev["Type"] not in filters["type"]:
                return False
            if "event" in filters and ev["Action"] not in filters["event"]:
                return False
            if "container" in filters:
                if ev["Type"] != "container":
                    return False
                name = attrs.get("name", ids.get(actor["ID"], ""))
                if not any(actor["ID"].startswith(f) or name == f.lstrip("/") for f in filters["container"]):
                    return False
            if "image" in filters and not any(attrs.get("image") == f or actor["ID"] == f
                                              for f in filters["image"]):
                return False
            for lab in filters.get("label", []):
                k, eq, v = lab.partition("=")
                if k not in attrs or (eq and attrs[k] != v):
                    return False
            return "scope" not in filters or "local" in filters["scope"]

        async def chunks() -> AsyncIterator[bytes]:
            if until is not None and since is None and until <= time.time():
                return
            async for ev in api.events.subscribe(since, until, match):
                yield json.dumps(ev).encode() + b"\n"

        return Stream(200, chunks())

    async def df(req: Request) -> Response:
        from . import images

        return Json(200, await images.disk_usage(api, req.version))

    async def not_swarm(req: Request) -> Response:
        raise HTTPError(503, SWARM_MESSAGE)

    async def plugins(req: Request) -> Response:
        if req.method == "GET" and req.path in ("/plugins",):
            return Json(200, [])
        raise HTTPError(501, "plugins are not supported by dockyard")

    async def buildkit(req: Request) -> Response:
        raise HTTPError(501, "BuildKit (/session, /grpc) is not served by dockyard: build with the legacy builder "
                             "(DOCKER_BUILDKIT=0)")

    async def distribution(req: Request) -> Response:
        raise HTTPError(501, "distribution inspect is not served by dockyard")

    r.add("GET", "/_ping", ping)
    r.add("POST|GET", "/session", buildkit)
    r.add("POST|GET", "/grpc", buildkit)
    r.add("GET", "/distribution/{name:path}/json", distribution)
    r.add("GET", "/version", version)
    r.add("GET", "/info", info)
    r.add("GET", "/events", events)
    r.add("GET", "/system/df", df)
    for prefix in ("/swarm", "/services", "/nodes", "/tasks", "/secrets", "/configs"):
        r.add("GET|POST|DELETE|PUT", prefix, not_swarm)
        r.add("GET|POST|DELETE|PUT", prefix + "/{rest:path}", not_swarm)
    r.add("GET|POST|DELETE", "/plugins", plugins)
    r.add("GET|POST|DELETE", "/plugins/{rest:path}", plugins)
