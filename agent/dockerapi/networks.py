"""Networks and volumes as far as a dockyard agent has them: the three built-in networks (its
bridge, host, none) listed and inspected with the containers on them; creating networks and
volumes is refused with what is missing (dockyard has no user-defined networks or named volumes
on one agent yet), never pretended."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from .http import HTTPError, Json, Request, Response
from .system import check_filters, parse_filters

if TYPE_CHECKING:
    from .api import DockerAPI

BUILTIN = ("bridge", "host", "none")


def network_id(name: str, agent: str) -> str:
    return hashlib.sha256(f"dockyard-network:{agent}:{name}".encode()).hexdigest()


def register(r: Any, api: DockerAPI) -> None:
    net = api.m.network

    def doc(name: str) -> dict[str, Any]:
        driver = {"bridge": "bridge", "host": "host", "none": "null"}[name]
        ipam: dict[str, Any] = {"Driver": "default", "Options": None, "Config": []}
        options: dict[str, str] = {}
        if name == "bridge":
            ipam["Config"] = [{"Subnet": str(net.subnet), "Gateway": str(net.gateway)}]
            options = {"com.docker.network.bridge.name": net.name}
        containers = {}
        for c in api.m.containers.values():
            if c.config.network_mode == name and c.state.status in ("running", "paused"):
                ep = c.endpoint or {}
                containers[c.id] = {"Name": c.name, "EndpointID": c.id if ep else "", "MacAddress": ep.get("mac", ""),
                                    "IPv4Address": f"{c.ip_address}/{ep.get('prefixlen', '')}" if ep else "",
                                    "IPv6Address": ""}
        return {"Name": name, "Id": network_id(name, api.name), "Created": "0001-01-01T00:00:00Z",
                "Scope": "local", "Driver": driver, "EnableIPv6": False, "IPAM": ipam, "Internal": False,
                "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
                "Containers": containers, "Options": options, "Labels": {}}

    def find(ref: str) -> str:
        for name in BUILTIN:
            if ref == name or (len(ref) >= 1 and network_id(name, api.name).startswith(ref)):
                return name
        raise HTTPError(404, f"network {ref} not found")

    async def listing(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"name", "id", "driver", "type", "scope", "label"})
        out = []
        for name in BUILTIN:
            d = doc(name)
            if "name" in filters and not any(f in name for f in filters["name"]):
                continue
            if "id" in filters and not any(d["Id"].startswith(f) for f in filters["id"]):
                continue
            if "driver" in filters and d["Driver"] not in filters["driver"]:
                continue
            if "type" in filters and "builtin" not in filters["type"]:
                continue
            if "scope" in filters and "local" not in filters["scope"]:
                continue
            if filters.get("label"):
                continue
            out.append(d)
        return Json(200, out)

    async def inspect(req: Request) -> Response:
        return Json(200, doc(find(req.params["id"])))

    async def create(req: Request) -> Response:
        body = await req.json() or {}
        raise HTTPError(501, f"network create {body.get('Name', '')!r}: user-defined networks are not supported "
                             "by a dockyard agent yet (bridge, host and none are built in)")

    async def change(req: Request) -> Response:
        name = find(req.params["id"])
        raise HTTPError(403 if name in BUILTIN else 501,
                        f"{name} is a built-in network: containers join it at create (NetworkMode), and "
                        "dockyard cannot connect or disconnect a container afterwards")

    async def prune(req: Request) -> Response:
        return Json(200, {"NetworksDeleted": None})

    r.add("GET", "/networks", listing)
    r.add("POST", "/networks/create", create)
    r.add("POST", "/networks/prune", prune)
    r.add("GET", "/networks/{id}", inspect)
    r.add("DELETE", "/networks/{id}", change)
    r.add("POST", "/networks/{id}/connect", change)
    r.add("POST", "/networks/{id}/disconnect", change)
