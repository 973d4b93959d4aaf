"""/networks: the three built-in networks (the agent's bridge, host, none) and the agent's
user-defined bridge networks (agent/localnets.py), with the containers on each.

A container's first network is its eth0; connect adds a user network (eth1, eth2 ...), to a
created or a running container (agent/netattach.py), and disconnect takes any off, the first
one too. docker-compose re-connects a created container to its first network with its aliases:
that updates them."""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from agent import netattach
from agent.localnets import LocalNetwork, network_id
from agent.model import Container, NotFound
from agent.netattach import attached, networks_of

from . import convert
from .http import Body, HTTPError, Json, Request, Response
from .system import check_filters, parse_filters

if TYPE_CHECKING:
    from .api import DockerAPI

BUILTIN = ("bridge", "host", "none")
RUNNING = ("running", "paused", "restarting")



def register(r: Any, api: DockerAPI) -> None:
    net = api.m.network
    local = api.m.localnets

    def containers_on(name: str) -> dict[str, Any]:
        out = {}
        for c in list(api.m.containers.values()):
            if c.state.status in ("running", "paused") and name in attached(c):
                ep = attached(c)[name]
                out[c.id] = {"Name": c.name, "EndpointID": c.id if ep else "", "MacAddress": ep.get("mac", ""),
                             "IPv4Address": f"{c.ip_address}/{ep.get('prefixlen', '')}" if ep else "",
                             "IPv6Address": ""}
        return out

    def builtin_doc(name: str) -> dict[str, Any]:
        driver = {"bridge": "bridge", "host": "host", "none": "null"}[name]
        ipam: dict[str, Any] = {"Driver": "default", "Options": None, "Config": []}
        options: dict[str, str] = {}
        if name == "bridge":
            ipam["Config"] = [{"Subnet": str(net.subnet), "Gateway": str(net.gateway)}]
            options = {"com.docker.network.bridge.name": net.name}
        return {"Name": name, "Id": network_id(name, api.name), "Created": "0001-01-01T00:00:00Z",
                "Scope": "local", "Driver": driver, "EnableIPv6": False, "IPAM": ipam, "Internal": False,
                "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
                "Containers": containers_on(name), "Options": options, "Labels": {}}

    def local_doc(n: LocalNetwork) -> dict[str, Any]:
        created = datetime.datetime.fromtimestamp(n.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"Name": n.name, "Id": n.id, "Created": created, "Scope": "local", "Driver": "bridge",
                "EnableIPv6": False,
                "IPAM": {"Driver": "default", "Options": None,
                         "Config": [{"Subnet": n.subnet, "Gateway": n.gateway,
                                     **({"IPRange": n.ip_range} if n.ip_range else {}),
                                     **({"AuxiliaryAddresses": dict(n.aux)} if n.aux else {})}]},
                "Internal": n.internal, "Attachable": n.attachable, "Ingress": False, "ConfigFrom": {"Network": ""},
                "ConfigOnly": False, "Containers": containers_on(n.name), "Options": dict(n.options),
                "Labels": dict(n.labels)}

    def find(ref: str) -> tuple[str, LocalNetwork | None]:
        for name in BUILTIN:
            if ref == name or network_id(name, api.name) == ref:
                return name, None
        n = local.find(ref)
        if n is not None:
            return n.name, n
        for name in BUILTIN:
            if network_id(name, api.name).startswith(ref):
                return name, None
        raise HTTPError(404, f"network {ref} not found")

    def docs() -> list[dict[str, Any]]:
        return [builtin_doc(n) for n in BUILTIN] + [local_doc(n) for n in list(local.nets.values())]

    async def listing(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"name", "id", "driver", "type", "scope", "label", "dangling"})
        out = []
        for d in docs():
            builtin = d["Name"] in BUILTIN
            if "name" in filters and not any(f in d["Name"] for f in filters["name"]):
                continue
            if "id" in filters and not any(d["Id"].startswith(f) for f in filters["id"]):
                continue
            if "driver" in filters and d["Driver"] not in filters["driver"]:
                continue
            if "type" in filters and ("builtin" if builtin else "custom") not in filters["type"]:
                continue
            if "scope" in filters and "local" not in filters["scope"]:
                continue
            if not all(k in d["Labels"] and (not eq or d["Labels"][k] == v)
                       for k, eq, v in (f.partition("=") for f in filters.get("label", []))):
                continue
            if "dangling" in filters:
                want = filters["dangling"][0].lower() in ("true", "1")
                if builtin or want != (not any(d["Name"] in networks_of(c) for c in api.m.containers.values())):
                    continue
            out.append(d)
        return Json(200, out)

    async def inspect(req: Request) -> Response:
        name, n = find(req.params["id"])
        return Json(200, builtin_doc(name) if n is None else local_doc(n))

    async def create(req: Request) -> Response:
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise HTTPError(400, "the network create body must be a JSON object")
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "network create: Name is required")
        # Attachable: on a local bridge standalone containers may always join (compose 3 asks for it)
        known = {"Name", "CheckDuplicate", "Driver", "IPAM", "Options", "Labels", "Scope", "EnableIPv4", "Attachable",
                 "Internal"}
        for k, v in body.items():
            if k not in known and v not in (None, False, "", {}, []):
                raise HTTPError(400, f"network create: {k} is not supported by dockyard (got {v!r})")
        driver = body.get("Driver") or "bridge"
        if driver != "bridge":
            hint = " (cluster networks: dockyard network create -d overlay, through the scheduler)" \
                if driver == "overlay" else ""
            raise HTTPError(400 if driver in ("host", "null", "overlay") else 404,
                            f"network create {name}: driver {driver!r} is not supported on a dockyard agent, only "
                            f"bridge{hint}" if driver in ("host", "null", "overlay")
                            else f'could not find plugin {driver} in v1 plugin registry: plugin not found')
        if (body.get("Scope") or "local") != "local":
            raise HTTPError(400, f"network create {name}: scope {body['Scope']!r}: only local")
        if body.get("EnableIPv4") is False:
            raise HTTPError(400, f"network create {name}: EnableIPv4 false is not supported")
        ipam = body.get("IPAM") or {}
        if not isinstance(ipam, dict):
            raise HTTPError(400, "network create: IPAM must be an object")
        if (ipam.get("Driver") or "default") != "default":
            raise HTTPError(400, f"network create {name}: IPAM driver {ipam['Driver']!r}: only default")
        if ipam.get("Options"):
            raise HTTPError(400, f"network create {name}: IPAM.Options are not supported by dockyard")
        pools = ipam.get("Config") or []
        if len(pools) > 1:
            raise HTTPError(400, f"network create {name}: one IPAM pool at most (dockyard's bridges are IPv4 only)")
        subnet = gateway = ip_range = ""
        aux: dict[str, str] = {}
        for pool in pools:
            for k, v in pool.items():
                if k not in ("Subnet", "Gateway", "IPRange", "AuxiliaryAddresses") and v:
                    raise HTTPError(400, f"network create {name}: IPAM.Config.{k} is not supported by dockyard "
                                         f"(got {v!r})")
            subnet, gateway = str(pool.get("Subnet") or ""), str(pool.get("Gateway") or "")
            ip_range = str(pool.get("IPRange") or "")
            aux = pool.get("AuxiliaryAddresses") or {}
            if not isinstance(aux, dict) or not all(isinstance(x, str) for x in aux.values()):
                raise HTTPError(400, f"network create {name}: IPAM.Config.AuxiliaryAddresses must be an object of "
                                     "strings")
            if ":" in subnet:
                raise HTTPError(400, f"network create {name}: IPv6 subnets are not supported by dockyard")
        labels, options = body.get("Labels") or {}, body.get("Options") or {}
        for what, d in (("Labels", labels), ("Options", options)):
            if not isinstance(d, dict) or not all(isinstance(x, str) for x in d.values()):
                raise HTTPError(400, f"network create: {what} must be an object of strings")
        if name in BUILTIN:
            raise HTTPError(409, f"network with name {name} already exists")
        n = await asyncio.to_thread(local.create, name, subnet, gateway, dict(labels), dict(options),
                                    bool(body.get("Attachable")), bool(body.get("Internal")), ip_range, dict(aux))
        return Json(201, {"Id": n.id, "Warning": ""})

    async def remove(req: Request) -> Response:
        name, n = find(req.params["id"])
        if n is None:
            raise HTTPError(403, f"{name} is a pre-defined network and cannot be removed")
        users = local.users(n)
        if users:
            raise HTTPError(403, f"error while removing network: network {n.name} id {n.id} has active "
                                 f"endpoints ({', '.join(c.name for c in users)})")
        await asyncio.to_thread(local.remove, n)
        return Body(204, b"")

    def _container(ref: Any) -> Container:
        if not isinstance(ref, str) or not ref:
            raise HTTPError(400, "Container is required")
        try:
            c: Container = api.m.get(ref)
        except NotFound:
            raise HTTPError(404, f"No such container: {ref}") from None
        return c

    async def connect(req: Request) -> Response:
        name, n = find(req.params["id"])
        body = await req.json() or {}
        c = _container(body.get("Container"))
        ep = body.get("EndpointConfig") or {}
        for k, v in ep.items():
            if k not in ("Aliases", "Links", "NetworkID", "EndpointID", "IPAMConfig") and v not in (None, "", [], {}, 0):
                raise HTTPError(400, f"network connect: EndpointConfig.{k} is not supported by dockyard (got {v!r})")
        aliases = [str(a) for a in ep.get("Aliases") or []]
        if aliases and n is None:
            raise HTTPError(400, "network-scoped aliases are only supported for user-defined networks")
        ip = convert.ipam_address(ep["IPAMConfig"], "EndpointConfig") if ep.get("IPAMConfig") else ""
        links = [str(x) for x in ep.get("Links") or []]
        first = c.config.network_mode in ("none",) and not c.config.networks
        if c.state.status not in RUNNING and (c.config.network_mode == name or first):
            # (docker-compose: its first network again, with the aliases; or a container made with none)
            api.m.set_network(c, name, [a for a in aliases if a != c.id[:12]], links or list(c.config.links), ip)
            return Body(200, b"")
        await netattach.connect(api.m, c, name, aliases, ip, links)
        return Body(200, b"")

    async def disconnect(req: Request) -> Response:
        name, _n = find(req.params["id"])
        body = await req.json() or {}
        c = _container(body.get("Container"))
        if c.state.status == "restarting":
            raise HTTPError(409, f"container {c.name} is restarting: disconnect it once it runs or is stopped")
        await netattach.disconnect(api.m, c, name)
        return Body(200, b"")

    async def prune(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"label", "until"})
        removed = []
        for n in list(local.nets.values()):
            if local.users(n):
                continue
            if not all(k in n.labels and (not eq or n.labels[k] == v)
                       for k, eq, v in (f.partition("=") for f in filters.get("label", []))):
                continue
            await asyncio.to_thread(local.remove, n)
            removed.append(n.name)
        return Json(200, {"NetworksDeleted": removed or None})

    r.add("GET", "/networks", listing)
    r.add("POST", "/networks/create", create)
    r.add("POST", "/networks/prune", prune)
    r.add("GET", "/networks/{id}", inspect)
    r.add("DELETE", "/networks/{id}", remove)
    r.add("POST", "/networks/{id}/connect", connect)
    r.add("POST", "/networks/{id}/disconnect", disconnect)
