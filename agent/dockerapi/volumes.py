"""/volumes: the agent's volume store (agent/volumes/store.py) in Docker's words, the same store
`dockyard volume` drives over gRPC."""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from agent.model import Conflict, NotFound
from agent.volumes.store import Volume, matches

from .http import Body, HTTPError, Json, Request, Response
from .system import check_filters, parse_filters

if TYPE_CHECKING:
    from .api import DockerAPI


def volume_json(store: Any, v: Volume) -> dict[str, Any]:
    """The same document for create, list and inspect (clients compare them)."""
    created = datetime.datetime.fromtimestamp(v.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"Name": v.name, "Driver": v.driver or "local", "Mountpoint": str(store.path(v.name)),
            "CreatedAt": created, "Labels": dict(v.labels) or None, "Scope": "local",
            "Options": dict(v.options) or None}


def _not_found(name: str) -> HTTPError:
    return HTTPError(404, f"get {name}: no such volume")


def register(r: Any, api: DockerAPI) -> None:
    store = api.m.volumes

    async def listing(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"name", "driver", "label", "dangling"})
        vols = await asyncio.to_thread(store.list)
        return Json(200, {"Volumes": [volume_json(store, v) for v in vols
                                      if matches(v, bool(store.users(v.name)), filters)], "Warnings": None})

    async def create(req: Request) -> Response:
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise HTTPError(400, "the volume create body must be a JSON object")
        for k, v in body.items():
            if k not in ("Name", "Driver", "DriverOpts", "Labels") and v:
                raise HTTPError(400, f"volume create: {k} is not supported by dockyard (got {v!r})")
        driver = body.get("Driver") or "local"
        if driver != "local":
            raise HTTPError(404, f'error looking up volume plugin {driver}: plugin "{driver}" not found')
        for key in ("DriverOpts", "Labels"):
            val = body.get(key) or {}
            if not isinstance(val, dict) or not all(isinstance(x, str) for x in val.values()):
                raise HTTPError(400, f"volume create: {key} must be an object of strings")
        name = body.get("Name") or ""
        if not isinstance(name, str):
            raise HTTPError(400, "volume create: Name must be a string")
        v = await asyncio.to_thread(store.create, name, "local", dict(body.get("Labels") or {}),
                                    dict(body.get("DriverOpts") or {}))
        return Json(201, volume_json(store, v))

    async def inspect(req: Request) -> Response:
        name = req.params["name"]
        try:
            v = store.get(name)
        except NotFound:
            raise _not_found(name) from None
        return Json(200, volume_json(store, v))

    async def remove(req: Request) -> Response:
        name = req.params["name"]
        if not store.exists(name):
            if req.flag("force"):
                return Body(204, b"")
            raise _not_found(name)
        try:
            await asyncio.to_thread(store.remove, name, req.flag("force"))
        except Conflict as e:
            raise HTTPError(409, str(e)) from None
        return Body(204, b"")

    async def update(req: Request) -> Response:
        raise HTTPError(400, "volume update: only cluster volumes can be updated (dockyard's are local)")

    async def prune(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"label", "all"})
        every = any(f.lower() in ("true", "1") for f in filters.get("all", []))
        labels = {}
        for f in filters.get("label", []):
            k, _, v = f.partition("=")
            labels[k] = v
        removed, space = await asyncio.to_thread(store.prune, every, labels)
        return Json(200, {"VolumesDeleted": removed or None, "SpaceReclaimed": space})

    r.add("GET", "/volumes", listing)
    r.add("POST", "/volumes/create", create)
    r.add("POST", "/volumes/prune", prune)
    r.add("GET", "/volumes/{name}", inspect)
    r.add("DELETE", "/volumes/{name}", remove)
    r.add("PUT", "/volumes/{name}", update)
