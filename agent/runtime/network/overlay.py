"""Cluster networks on one host: a bridge per overlay network with a VXLAN port, and static
FDB + neighbour entries for every remote endpoint (pyroute2 for every change).

Per network (VNI N), named from this agent's bridge and N so agents side by side do not collide:
    bridge  do<hash>   MTU = the network's (underlay - 50); the containers' eth1.. are its ports
    vxlan   dx<hash>   id N, dstport 4789, local = this host's underlay address, learning off (on
                       the device and on its bridge port), proxy ARP on: ARP for a remote address is
                       answered here from the neighbour table, so no broadcast ever crosses hosts
    per remote endpoint: fdb  MAC dst VTEP self permanent          (replace: idempotent)
                         neigh IP lladdr MAC nud permanent         (replace)
No default (00:00:00:00:00:00) FDB entry, no miss handling, no learning: what the kernel knows is
exactly what etcd says, and `program` makes it so in both directions (extra entries deleted), which
is what heals the stale-entry bugs of learning overlays (moby#52661, libnetwork PR#1792).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.network.ipam import mac_for
from agent.runtime.network.model import NetworkError

log = logging.getLogger("dockyard.agent.overlay")

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
ENODEV = 19
EEXIST = 17
ENOENT = 2


@dataclass(frozen=True, slots=True)
class OverlayNet:
    """What a host needs of a cluster network to make its bridge."""
    name: str
    vni: int
    subnet: str
    mtu: int


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote endpoint: reached through the VTEP of the host it runs on."""
    ip: str
    mac: str
    vtep: str


@dataclass(slots=True)
class Diff:
    """What a program() pass changed: zero everywhere means the kernel already matched."""
    fdb_added: int = 0
    fdb_removed: int = 0
    neigh_added: int = 0
    neigh_removed: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return self.fdb_added + self.fdb_removed + self.neigh_added + self.neigh_removed


def _code(e: BaseException) -> int | None:
    c = getattr(e, "code", None)
    return c if isinstance(c, int) else None


@contextmanager
def _ipr() -> Iterator[Any]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        yield ipr


class Overlays:
    """The overlay bridges of one agent (keyed by its container bridge's name, for the link names)."""

    def __init__(self, owner: str, local_ip: str = "", port: int = VXLAN_PORT) -> None:
        self.owner = owner
        self.local_ip = local_ip  # "" until the agent knows its underlay address
        self.port = port
        self._known: set[int] = set()  # every VNI ensure() was asked for
        # ensure() runs from the network sync and from container starts at once (threads): two
        # makers of one bridge or VXLAN device would both see none and one fail with EEXIST
        self._ensuring = threading.Lock()

    # --- names

    def _hash(self, vni: int) -> str:
        return hashlib.sha256(f"{self.owner}/{vni}".encode()).hexdigest()[:12]

    def bridge_name(self, vni: int) -> str:
        return "do" + self._hash(vni)

    def vxlan_name(self, vni: int) -> str:
        return "dx" + self._hash(vni)

    def veth_name(self, vni: int, container_id: str) -> str:
        return "dv" + hashlib.sha256(f"{self.owner}/{vni}/{container_id}".encode()).hexdigest()[:13]

    # --- bridges

    def ensure(self, net: OverlayNet) -> int:
        """Bridge and VXLAN port of `net` (made or checked); the bridge's ifindex."""
        with self._ensuring:
            return self._ensure(net)

    def _ensure(self, net: OverlayNet) -> int:
        self._known.add(net.vni)
        if not self.local_ip:
            raise NetworkError(f"network {net.name}: this agent has no underlay address (give --advertise "
                               "or --listen HOST:PORT)")
        with _ipr() as ipr:
            under = self._underlay(ipr)
            under_mtu = int(ipr.link("get", index=under)[0].get_attr("IFLA_MTU"))
            if net.mtu + VXLAN_OVERHEAD > under_mtu:
                raise NetworkError(f"network {net.name}: MTU {net.mtu} needs an underlay MTU of at least "
                                   f"{net.mtu + VXLAN_OVERHEAD}; the link of {self.local_ip} has {under_mtu}")
            br, vx = self.bridge_name(net.vni), self.vxlan_name(net.vni)
            bidx = self._lookup(ipr, br)
            if bidx is None:
                ipr.link("add", ifname=br, kind="bridge", mtu=net.mtu)
                bidx = self._lookup(ipr, br)
                assert bidx is not None
            vidx = self._lookup(ipr, vx)
            if vidx is not None and not self._vxlan_matches(ipr, vidx, net.vni, under):
                ipr.link("del", index=vidx)  # made for another underlay (the host's address moved)
                vidx = None
            if vidx is None:
                try:
                    ipr.link("add", ifname=vx, kind="vxlan", vxlan_id=net.vni, vxlan_port=self.port,
                             vxlan_local=self.local_ip, vxlan_link=under, vxlan_learning=0, vxlan_proxy=1,
                             mtu=net.mtu)
                except Exception as e:
                    if _code(e) == EEXIST:
                        raise NetworkError(f"network {net.name}: VXLAN id {net.vni} on UDP {self.port} is "
                                           "already taken on this host by another device") from None
                    raise NetworkError(f"network {net.name}: vxlan {vx}: {e}") from e
                vidx = self._lookup(ipr, vx)
                assert vidx is not None
            ipr.link("set", index=vidx, master=bidx, mtu=net.mtu, state="up")
            ipr.brport("set", index=vidx, learning=0)
            ipr.link("set", index=bidx, mtu=net.mtu, state="up")
            return int(bidx)

    def _underlay(self, ipr: Any) -> int:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == self.local_ip:
                return int(a["index"])
        raise NetworkError(f"no interface of this host has the underlay address {self.local_ip}")

    @staticmethod
    def _lookup(ipr: Any, name: str) -> int | None:
        found = ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def _vxlan_matches(self, ipr: Any, index: int, vni: int, under: int) -> bool:
        link = ipr.link("get", index=index)[0]
        if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
            return False
        data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        return bool(data.get_attr("IFLA_VXLAN_ID") == vni and data.get_attr("IFLA_VXLAN_PORT") == self.port
                    and data.get_attr("IFLA_VXLAN_LOCAL") == self.local_ip
                    and data.get_attr("IFLA_VXLAN_LINK") == under and data.get_attr("IFLA_VXLAN_LEARNING") == 0)

    def remove(self, vni: int) -> None:
        """Bridge and VXLAN port gone (their FDB and neighbour entries go with them); idempotent."""
        with _ipr() as ipr:
            for name in (self.vxlan_name(vni), self.bridge_name(vni)):
                try:
                    ipr.link("del", ifname=name)
                except Exception as e:
                    if _code(e) != ENODEV:
                        raise NetworkError(f"delete {name}: {e}") from e

    def installed(self) -> set[int]:
        """VNIs of every overlay this agent made on the host (found by their names), known or not."""
        out = set()
        with _ipr() as ipr:
            for link in ipr.get_links():
                name = str(link.get_attr("IFLA_IFNAME"))
                if not name.startswith("dx") or link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
                    continue
                vni = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA").get_attr("IFLA_VXLAN_ID")
                if isinstance(vni, int) and name == self.vxlan_name(vni):
                    out.add(vni)
            for link in ipr.get_links():  # a bridge whose VXLAN port is gone (a crash half-way)
                name = str(link.get_attr("IFLA_IFNAME"))
                if name.startswith("do") and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge":
                    out |= {v for v in self._known if self.bridge_name(v) == name}
        return out

    def present(self, vnis: Iterable[int]) -> dict[int, bool]:
        with _ipr() as ipr:
            return {v: self._lookup(ipr, self.bridge_name(v)) is not None for v in vnis}

    def ports(self, vni: int) -> list[str]:
        """Names of the bridge's ports other than its VXLAN device (the local containers' veths)."""
        with _ipr() as ipr:
            bidx = self._lookup(ipr, self.bridge_name(vni))
            if bidx is None:
                return []
            vx = self.vxlan_name(vni)
            return sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()
                          if link.get_attr("IFLA_MASTER") == bidx and link.get_attr("IFLA_IFNAME") != vx)

    # --- endpoints

    def program(self, vni: int, peers: Iterable[Peer]) -> Diff:
        """Make the VXLAN port's FDB and neighbour tables exactly `peers` (replace the missing and
        the wrong, delete the extra)."""
        want = {p.mac: p for p in peers}
        want_ip = {p.ip: p.mac for p in want.values()}
        diff = Diff()
        with _ipr() as ipr:
            vidx = self._lookup(ipr, self.vxlan_name(vni))
            if vidx is None:
                raise NetworkError(f"VNI {vni}: no VXLAN device {self.vxlan_name(vni)} (ensure it first)")
            have_fdb: dict[str, str] = {}
            for f in ipr.fdb("dump", ifindex=vidx):
                if f["ifindex"] == vidx and f["flags"] & NTF_SELF and f.get_attr("NDA_DST"):
                    have_fdb[str(f.get_attr("NDA_LLADDR"))] = str(f.get_attr("NDA_DST"))
            have_neigh: dict[str, tuple[str, int]] = {}
            for n in ipr.neigh("dump", ifindex=vidx, family=2):
                if n["ifindex"] == vidx:
                    have_neigh[str(n.get_attr("NDA_DST"))] = (str(n.get_attr("NDA_LLADDR")), int(n["state"]))
            for mac, dst in have_fdb.items():
                if mac not in want:
                    self._quiet(ipr.fdb, "del", ifindex=vidx, lladdr=mac, dst=dst, flags=NTF_SELF)
                    diff.fdb_removed += 1
                    diff.details.append(f"fdb -{mac} dst {dst}")
            for ip, (mac, _) in have_neigh.items():
                if ip not in want_ip:
                    self._quiet(ipr.neigh, "del", ifindex=vidx, dst=ip, lladdr=mac)
                    diff.neigh_removed += 1
                    diff.details.append(f"neigh -{ip}")
            for mac, p in want.items():
                if have_fdb.get(mac) != p.vtep:
                    ipr.fdb("replace", ifindex=vidx, lladdr=mac, dst=p.vtep, state=NUD_PERMANENT | NUD_NOARP,
                            flags=NTF_SELF)
                    diff.fdb_added += 1
                    diff.details.append(f"fdb +{mac} dst {p.vtep}")
                got = have_neigh.get(p.ip)
                if got is None or got[0] != mac or not got[1] & NUD_PERMANENT:
                    ipr.neigh("replace", ifindex=vidx, dst=p.ip, lladdr=mac, state=NUD_PERMANENT)
                    diff.neigh_added += 1
                    diff.details.append(f"neigh +{p.ip} {mac}")
        return diff

    @staticmethod
    def _quiet(fn: Any, *args: Any, **kw: Any) -> None:
        try:
            fn(*args, **kw)
        except Exception as e:
            if _code(e) not in (ENOENT, ENODEV):
                raise NetworkError(f"{args[0]} {kw}: {e}") from e

    # --- the host's own address on a network (the routing mesh's source address)

    def set_address(self, vni: int, ip: str, prefixlen: int) -> bool:
        """The bridge of `vni` holds exactly this IPv4 address (others removed) and the MAC derived
        from it, which is the one every peer's FDB and neighbour entries name (a bridge's own MAC
        follows its ports otherwise, and a frame to another MAC is not the host's); and may carry
        127.0.0.1-sourced packets DNATed onto it (route_localnet). True when it changed."""
        changed = False
        mac = mac_for(ipaddress.IPv4Address(ip))
        with _ipr() as ipr:
            bidx = self._lookup(ipr, self.bridge_name(vni))
            if bidx is None:
                raise NetworkError(f"VNI {vni}: no bridge {self.bridge_name(vni)} (ensure it first)")
            if str(ipr.link("get", index=bidx)[0].get_attr("IFLA_ADDRESS")) != mac:
                ipr.link("set", index=bidx, address=mac)
                changed = True
            have = {(str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"])) for a in ipr.get_addr(index=bidx, family=2)}
            for addr, plen in have - {(ip, prefixlen)}:
                self._quiet(ipr.addr, "del", index=bidx, address=addr, prefixlen=plen)
                changed = True
            if (ip, prefixlen) not in have:
                ipr.addr("replace", index=bidx, address=ip, prefixlen=prefixlen)
                changed = True
        path = f"/proc/sys/net/ipv4/conf/{self.bridge_name(vni)}/route_localnet"
        try:
            with open(path, "r+") as f:
                if f.read().strip() != "1":
                    f.seek(0)
                    f.write("1")
        except OSError as e:
            raise NetworkError(f"sysctl {path}: {e}") from e
        return changed

    # --- a container's interface on the network

    def attach(self, net: OverlayNet, container_id: str, pid: int, ifname: str, mac: str) -> str:
        """A veth: host end on the network's bridge, peer `ifname` (MAC, MTU) in pid's netns."""
        bidx = self.ensure(net)
        host = self.veth_name(net.vni, container_id)
        spec = {"ifname": host, "kind": "veth", "master": bidx, "mtu": net.mtu, "state": "up",
                "peer": {"ifname": ifname, "address": mac, "mtu": net.mtu, "net_ns_pid": pid}}
        with _ipr() as ipr:
            try:
                ipr.link("add", **spec)
            except Exception as e:
                if _code(e) != EEXIST or self._lookup(ipr, host) is None:
                    raise NetworkError(f"network {net.name}: veth {host} into pid {pid}: {e}") from e
                ipr.link("del", ifname=host)  # a leftover of a crashed agent
                ipr.link("add", **spec)
        return host

    def set_port(self, vni: int, container_id: str, up: bool) -> None:
        """A container's port on the network's bridge up or down (gone: nothing to do). Down, the
        bridge forgets the MAC it learned there and floods its frames to the VXLAN port, whose FDB
        entry points at the host the container moved to; up again if it stays here after all."""
        with _ipr() as ipr:
            idx = self._lookup(ipr, self.veth_name(vni, container_id))
            if idx is not None:
                ipr.link("set", index=idx, state="up" if up else "down")

    def detach(self, vni: int, container_id: str) -> None:
        with _ipr() as ipr:
            try:
                ipr.link("del", ifname=self.veth_name(vni, container_id))
            except Exception as e:
                if _code(e) != ENODEV:
                    raise NetworkError(f"delete veth of {container_id}: {e}") from e


def underlay_host(address: str) -> str:
    """This host's underlay address from its agent address ("10.0.0.11:7070" -> "10.0.0.11"); ""
    when it listens on every address or none (then cluster networks are refused with that reason)."""
    host = address.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]") if ":" in address else ""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return ""
    return "" if ip.is_unspecified else str(ip)
