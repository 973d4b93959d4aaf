"""Plain data of the container network: port mappings, endpoints, and the one exception hierarchy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class NetworkError(Exception):
    """Anything the container network cannot do; the message names the bad part."""


class PortInUse(NetworkError):
    """A host port is already published by one of our containers or bound by something on the host."""


@dataclass(frozen=True)
class PortMapping:
    """One published port: host_ip "" means every address of the host, host_port 0 means pick one."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class OverlayEndpoint:
    """The container's interface on a cluster network: `ifname` in its netns, `host_ifname` on the
    network's bridge (agent/runtime/network/overlay.py)."""

    network: str
    vni: int
    subnet: str
    mtu: int
    ip: str
    prefixlen: int
    mac: str
    ifname: str
    host_ifname: str

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "vni": self.vni, "subnet": self.subnet, "mtu": self.mtu, "ip": self.ip,
                "prefixlen": self.prefixlen, "mac": self.mac, "ifname": self.ifname, "host_ifname": self.host_ifname}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OverlayEndpoint:
        return cls(str(d["network"]), int(d["vni"]), str(d["subnet"]), int(d["mtu"]), str(d["ip"]),
                   int(d["prefixlen"]), str(d["mac"]), str(d["ifname"]), str(d["host_ifname"]))


@dataclass(frozen=True)
class Endpoint:
    """A container's place on a bridge: its address, its MAC, the host end of its veth, its ports."""

    container_id: str
    ip: str
    prefixlen: int
    gateway: str
    mac: str
    host_ifname: str
    bridge: str
    ports: tuple[PortMapping, ...]
    overlays: tuple[OverlayEndpoint, ...] = ()
    # only on internal cluster networks: eth0 gets no default route (nothing leaves the cluster)
    isolated: bool = False
    ifname: str = "eth0"   # in the container: eth1, eth2 ... for its further user networks

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for handing the endpoint to the container init in another process."""
        extra: dict[str, Any] = {"overlays": [o.to_dict() for o in self.overlays]} if self.overlays else {}
        if self.isolated:
            extra["isolated"] = True
        if self.ifname != "eth0":
            extra["ifname"] = self.ifname
        return {**extra,
            "container_id": self.container_id,
            "ip": self.ip,
            "prefixlen": self.prefixlen,
            "gateway": self.gateway,
            "mac": self.mac,
            "host_ifname": self.host_ifname,
            "bridge": self.bridge,
            "ports": [[p.host_ip, p.host_port, p.container_port, p.protocol] for p in self.ports],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Endpoint:
        return cls(
            container_id=str(d["container_id"]),
            ip=str(d["ip"]),
            prefixlen=int(d["prefixlen"]),
            gateway=str(d["gateway"]),
            mac=str(d["mac"]),
            host_ifname=str(d["host_ifname"]),
            bridge=str(d["bridge"]),
            ports=tuple(PortMapping(str(h), int(hp), int(cp), str(pr)) for h, hp, cp, pr in d["ports"]),
            overlays=tuple(OverlayEndpoint.from_dict(o) for o in d.get("overlays", ())),
            isolated=bool(d.get("isolated", False)),
            ifname=str(d.get("ifname", "eth0")),
        )
