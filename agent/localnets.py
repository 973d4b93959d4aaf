"""User-defined networks of one agent: docker's `bridge` driver on a single host.

Each network is a Linux bridge of its own (runtime/network/bridge.py's BridgeNetwork, the same
code as the agent's default bridge: IPAM file, veth pairs, published ports), so containers on
different networks cannot reach each other at layer 2. Containers on one user network find
each other by name, alias and short id at 127.0.0.11 (agent/resolver.py, fed from here), as on
docker's user networks; the default bridge has no names, as docker's has none.

    <root>/localnets/<id>.json      the record (name, subnet, labels, options), written whole
    <root>/localnets/state/         the bridges' IPAM files and locks

A subnet is the one asked for, or the first free /24 of the pool (settings.LOCAL_NETWORK_POOL)
that no address on this host overlaps; the gateway is the subnet's first address.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.model import Conflict, Container, InvalidArgument, NotFound
from agent.runtime.network.bridge import BridgeNetwork
from agent.runtime.network.model import NetworkError
from agent.runtime.spec import write_atomic
from common import settings

BUILTIN = ("bridge", "host", "none", "default")
# docker takes almost any name ("test 01"); the bridge and the record are named by the id
NAME = re.compile(r"^[^/\x00-\x1f]{1,128}$")
# Options docker's bridge driver takes that mean what dockyard's bridge does anyway, echoed back.
KNOWN_OPTIONS = {"com.docker.network.bridge.enable_icc": "true",
                 "com.docker.network.bridge.enable_ip_masquerade": None,
                 "com.docker.network.driver.mtu": "1500"}


@dataclass
class LocalNetwork:
    name: str
    id: str
    subnet: str
    gateway: str
    created: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    ipam_given: bool = False       # the subnet came from the user's IPAM config (inspect echoes it)
    attachable: bool = False       # as asked (a local bridge always takes standalone containers)
    internal: bool = False         # no way out: no default route, no NAT, nothing forwarded in or out
    ip_range: str = ""             # containers' addresses come from this part of the subnet
    aux: dict[str, str] = field(default_factory=dict)   # docker's AuxiliaryAddresses: never given

    @property
    def bridge(self) -> str:
        return "dyn" + self.id[:12]


class LocalNetworks:
    def __init__(self, root: Path, containers: Callable[[], Iterable[Container]] = lambda: (),
                 ip_masq: bool = False, pool: str = settings.LOCAL_NETWORK_POOL) -> None:
        self.containers = containers
        self.loop: Any = None             # the agent's event loop: the resolvers serve on it
        self._resolvers: Any = None       # agent.resolver.Resolvers of the user networks' containers
        self.dir = root / "localnets"
        self.state = self.dir / "state"
        self.ip_masq = ip_masq
        self.pool = ipaddress.IPv4Network(pool)
        self._lock = threading.Lock()
        self.nets: dict[str, LocalNetwork] = {}
        self._bridges: dict[str, BridgeNetwork] = {}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                n = LocalNetwork(**json.loads(p.read_text()))
                self.nets[n.id] = n

    def ensure_all(self) -> None:
        """At the agent's start: every network's bridge and chains (a reboot loses them)."""
        for n in self.nets.values():
            self.bridge_of(n).ensure(False, self.ip_masq)

    def bridge_of(self, n: LocalNetwork) -> BridgeNetwork:
        b = self._bridges.get(n.id)
        if b is None:
            b = self._bridges[n.id] = BridgeNetwork(self.state, n.bridge, n.subnet, n.gateway, n.ip_range,
                                                    tuple(n.aux.values()), n.internal)
        return b

    def get(self, ref: str) -> LocalNetwork:
        """By name, full id or a unique id prefix."""
        for n in self.nets.values():
            if n.name == ref or n.id == ref:
                return n
        found = [n for n in self.nets.values() if ref and n.id.startswith(ref)]
        if len(found) == 1:
            return found[0]
        raise NotFound(f"network {ref} not found")

    def is_local(self, mode: str) -> bool:
        return mode not in BUILTIN and mode != "" and any(n.name == mode for n in self.nets.values())

    def users(self, n: LocalNetwork) -> list[Container]:
        from agent.netattach import networks_of

        return [c for c in self.containers() if n.name in networks_of(c)]

    def local_of(self, c: Container) -> tuple[str, ...]:
        """The user networks of this agent the container is on, its first one first."""
        from agent.netattach import networks_of

        return tuple(name for name in networks_of(c) if self.is_local(name))

    # --- names at 127.0.0.11 -----------------------------------------------------------------------

    def _records(self, also: Container | None = None) -> list[Any]:
        from agent.netattach import attached, attachment
        from agent.resolver import Record

        out = []
        for c in self.containers():
            if not (c is also or c.state.status in ("running", "paused")):
                continue
            for net, ep in attached(c).items():
                if ep.get("ip") and self.is_local(net):
                    a = attachment(c, net)
                    aliases = a.aliases if a is not None else c.config.network_aliases
                    out.append(Record(net, str(ep["ip"]), c.name, c.id[:12], tuple(aliases), True, c.name))
        return out

    def open_resolver(self, c: Container, pid: int) -> None:
        """From the thread that wires the container's namespace: its 127.0.0.11, which knows
        every running container of its network by name, short id and alias."""
        from agent.resolver import Resolvers

        if self.loop is None:
            raise NetworkError("the agent's resolvers have no event loop (LocalNetworks.loop)")
        if self._resolvers is None:
            self._resolvers = Resolvers()
            self._resolvers.loop = self.loop
        self._resolvers.set_records(self._records(also=c))
        self._resolvers.open(c.id, self.local_of(c), pid, links_of(c))

    def refresh(self, c: Container) -> bool:
        """A running container joined or left a network: every zone and its resolver's networks
        (one opened if it had none: its first network is the bridge). True if it now has one."""
        nets = self.local_of(c)
        if self._resolvers is None or c.id not in self._resolvers.by_container:
            if not nets:
                if self._resolvers is not None:
                    self._resolvers.set_records(self._records())
                return False
            self.open_resolver(c, c.state.pid)
            return True
        self._resolvers.set_networks(c.id, nets, links_of(c))
        self._resolvers.set_records(self._records())
        return True

    def on_change(self, c: Container) -> None:
        """ContainerManager.on_change: every zone learns of a start or an exit at once."""
        if self._resolvers is not None and self.local_of(c):
            self._resolvers.on_change(c)
            self._resolvers.set_records(self._records())

    def close_resolvers(self) -> None:
        if self._resolvers is not None:
            self._resolvers.close_all()

    def find(self, ref: str) -> LocalNetwork | None:
        with contextlib.suppress(NotFound):
            return self.get(ref)
        return None

    def create(self, name: str, subnet: str = "", gateway: str = "", labels: dict[str, str] | None = None,
               options: dict[str, str] | None = None, attachable: bool = False, internal: bool = False,
               ip_range: str = "", aux: dict[str, str] | None = None) -> LocalNetwork:
        if not NAME.match(name):
            raise InvalidArgument(f"invalid network name {name!r}: 1 to 128 characters, no '/' or control characters")
        if name in BUILTIN:
            raise Conflict(f"network with name {name} already exists (it is built in)")
        if (gateway or ip_range or aux) and not subnet:
            raise InvalidArgument(f"network {name}: a gateway, an ip range or auxiliary addresses need --subnet")
        for k, v in (options or {}).items():
            if k not in KNOWN_OPTIONS or (KNOWN_OPTIONS[k] is not None and v != KNOWN_OPTIONS[k]):
                raise InvalidArgument(f"network option {k}={v} is not supported by dockyard's bridge driver")
        with self._lock:
            if any(n.name == name for n in self.nets.values()):
                raise Conflict(f"network with name {name} already exists")
            nid = secrets.token_hex(32)
            bridge = "dyn" + nid[:12]
            candidates = [subnet] if subnet else self._free_subnets()
            last: Exception | None = None
            for cand in candidates:
                try:
                    net = ipaddress.IPv4Network(cand, strict=True)
                except ValueError as e:
                    raise InvalidArgument(f"invalid subnet {cand!r}: {e}") from None
                gw = gateway or str(net.network_address + 1)
                self._check_addresses(net, gw, ip_range, aux or {})
                if any(ipaddress.IPv4Network(o.subnet).overlaps(net) for o in self.nets.values()):
                    last = InvalidArgument(f"subnet {net} overlaps another network of this agent")
                    if subnet:
                        raise last
                    continue
                n = LocalNetwork(name=name, id=nid, subnet=str(net), gateway=gw, created=time.time(),
                                 labels=dict(labels or {}), options=dict(options or {}), ipam_given=bool(subnet),
                                 attachable=attachable, internal=internal, ip_range=ip_range, aux=dict(aux or {}))
                b = BridgeNetwork(self.state, bridge, str(net), gw, ip_range, tuple((aux or {}).values()), internal)
                try:
                    b.ensure(False, self.ip_masq)
                except NetworkError as e:
                    last = e
                    with contextlib.suppress(NetworkError):
                        b.destroy()
                    if subnet:
                        raise InvalidArgument(f"network {name}: {e}") from None
                    continue
                self._bridges[nid] = b
                write_atomic(self.dir / f"{nid}.json", json.dumps(asdict(n)))
                self.nets[nid] = n
                return n
        raise InvalidArgument(f"network {name}: no free subnet in the pool {self.pool} ({last})")

    @staticmethod
    def _check_addresses(net: ipaddress.IPv4Network, gateway: str, ip_range: str, aux: dict[str, str]) -> None:
        """docker's IPAM pool: a gateway and auxiliary addresses that are host addresses of the
        subnet (an auxiliary one is not the gateway), an ip range inside it."""
        hosts = (net.network_address, net.broadcast_address)
        for what, value in (("gateway", gateway), *((f"auxiliary address {k}", v) for k, v in aux.items())):
            try:
                addr = ipaddress.IPv4Address(value)
            except ValueError:
                raise InvalidArgument(f"invalid {what} {value!r}: not an IPv4 address") from None
            if addr not in net or addr in hosts:
                raise InvalidArgument(f"{what} {value} is not a host address of the subnet {net}")
            if what != "gateway" and value == gateway:
                raise InvalidArgument(f"{what} {value} is the gateway's address")
        if ip_range:
            try:
                pool = ipaddress.IPv4Network(ip_range, strict=True)
            except ValueError as e:
                raise InvalidArgument(f"invalid ip range {ip_range!r}: {e}") from None
            if not pool.subnet_of(net):
                raise InvalidArgument(f"ip range {ip_range} is not inside the subnet {net}")

    def _free_subnets(self) -> list[str]:
        """The pool's /24s from a random start: agents side by side rarely try the same one first."""
        subs = [str(s) for s in self.pool.subnets(new_prefix=max(24, self.pool.prefixlen))]
        start = random.randrange(len(subs))
        return subs[start:] + subs[:start]

    def remove(self, n: LocalNetwork) -> None:
        with self._lock:
            self.bridge_of(n).destroy()
            self._bridges.pop(n.id, None)
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{n.id}.json").unlink()
            self.nets.pop(n.id, None)

    def destroy_all(self) -> None:
        """Every network's bridge, chains and state (tests, --cleanup)."""
        for n in list(self.nets.values()):
            with contextlib.suppress(NetworkError, OSError):
                self.remove(n)


def links_of(c: Container) -> tuple[tuple[str, str], ...]:
    """--link NAME[:ALIAS] -> (alias, name) and (name, name): names of this container's resolver."""
    out = []
    for link in c.config.links:
        name, _, alias = link.partition(":")
        out += [(alias.lstrip("/") or name, name.lstrip("/")), (name.lstrip("/"), name.lstrip("/"))]
    return tuple(dict.fromkeys(out))


def network_id(name: str, agent: str) -> str:
    """A built-in network's id: stable for one agent."""
    return hashlib.sha256(f"dockyard-network:{agent}:{name}".encode()).hexdigest()
