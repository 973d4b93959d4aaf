"""One host's container network: a Linux bridge, veth pairs into container netns, published ports.

Flow: ensure() once per agent start -> allocate() when a container is created (IPAM + ports)
-> attach() when its init exists (veth, ports) -> the init calls configure_inside() -> detach()
when it stops -> release() when it is removed. destroy() undoes everything (tests, --cleanup).

Host -> container and container <-> container on the bridge need no ip_forward: the bridge is
directly attached, so the host routes to it as to any local link, and bridged frames are switched,
not routed. ip_forward stays as the host has it; see README.md for what would need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.runtime.network import iptables
from agent.runtime.network.ipam import Ipam, mac_for
from agent.runtime.network.model import Endpoint, NetworkError, OverlayEndpoint, PortMapping
from agent.runtime.network.overlay import OverlayNet, Overlays
from agent.runtime.network.ports import resolve_ports
from common import settings

ENODEV = 19
EEXIST = 17
ESRCH = 3

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _ipr() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _netlink_code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


def host_ifname(bridge: str, container_id: str) -> str:
    """15 characters at most (IFNAMSIZ); the bridge is in the hash so that two agents side by side
    may reuse container ids without their veths colliding."""
    return "dy" + hashlib.sha256(f"{bridge}/{container_id}".encode()).hexdigest()[:13]


class BridgeNetwork:
    def __init__(self, state_dir: Path, name: str = settings.BRIDGE, subnet: str = settings.SUBNET,
                 gateway: str = "", ip_range: str = "", reserved: Sequence[str] = (), internal: bool = False) -> None:
        """gateway: the bridge's address (the subnet's first by default); ip_range: where containers'
        addresses come from; reserved: addresses never given; internal: no way out of the bridge
        (no default route in its containers, no NAT, forwarding to and from it dropped)."""
        if not _IFNAME.match(name):
            raise NetworkError(f"bridge name {name!r}: 1-15 letters, digits, '_', '.' or '-'")
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as e:
            raise NetworkError(f"subnet {subnet!r}: {e}") from None
        if net.prefixlen > 30:
            raise NetworkError(f"subnet {subnet}: too small, at most /30")
        self.state_dir = Path(state_dir)
        self.name = name
        self.subnet = net
        try:
            self.gateway = ipaddress.IPv4Address(gateway) if gateway else net.network_address + 1
            pool = ipaddress.IPv4Network(ip_range, strict=True) if ip_range else None
        except ValueError as e:
            raise NetworkError(f"network {name}: {e}") from None
        if self.gateway not in net or self.gateway in (net.network_address, net.broadcast_address):
            raise NetworkError(f"gateway {self.gateway} is not a host address of {net}")
        if pool is not None and not pool.subnet_of(net):
            raise NetworkError(f"ip range {pool} is not inside the subnet {net}")
        self.internal = internal
        self._ipam = Ipam(self.state_dir, name, net, pool, frozenset({str(self.gateway), *reserved}))
        self._rng = random.Random()
        self.overlays: Overlays | None = None  # cluster networks, once the agent joined a scheduler

    # ---- the bridge and its chains

    def ensure(self, ip_forward: bool = False, ip_masq: bool = False) -> None:
        """The bridge, its address and chains. ip_forward turns on the host's net.ipv4.ip_forward
        (never off: another service may need it); ip_masq masquerades the subnet towards every
        other interface (docker's --ip-forward and --ip-masq; the agent's defaults are on)."""
        with self._ipam.locked():
            self._ipam.load()  # refuses a state file made for another subnet
            with _ipr() as ipr:
                found = ipr.link_lookup(ifname=self.name)
                if found:
                    index = found[0]
                    kind = ipr.get_links(index)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                    if kind != "bridge":
                        raise NetworkError(
                            f"{self.name} exists and is a {kind or 'plain'} link, not a bridge"
                        )
                else:
                    self._check_subnet_free(ipr)
                    ipr.link("add", ifname=self.name, kind="bridge", address=mac_for(self.gateway))
                    index = ipr.link_lookup(ifname=self.name)[0]
                have = {
                    (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)
                }
                if (str(self.gateway), self.subnet.prefixlen) not in have:
                    ipr.addr("add", index=index, address=str(self.gateway), prefixlen=self.subnet.prefixlen)
                ipr.link("set", index=index, state="up")
            self._sysctl(f"net/ipv4/conf/{self.name}/route_localnet", "1")
            if ip_forward:
                self._sysctl("net/ipv4/ip_forward", "1")
            iptables.ensure_base(self.name, str(self.subnet), ip_masq and not self.internal, self.internal)

    def _check_subnet_free(self, ipr: Any) -> None:
        for a in ipr.get_addr(family=2):
            addr = ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            if addr.network.overlaps(self.subnet):
                label = a.get_attr("IFA_LABEL") or f"link {a['index']}"
                raise NetworkError(f"subnet {self.subnet} overlaps {addr} on {label}")

    @staticmethod
    def _sysctl(key: str, value: str) -> None:
        path = Path("/proc/sys") / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as e:
            raise NetworkError(f"sysctl {key.replace('/', '.')}={value}: {e}") from e

    def destroy(self) -> None:
        for ep in self.endpoints():
            self.detach(ep)
        with self._ipam.locked():
            iptables.remove_base(self.name)
            with _ipr() as ipr:
                try:
                    ipr.link("del", ifname=self.name)
                except Exception as e:
                    if _netlink_code(e) != ENODEV:
                        raise NetworkError(f"delete bridge {self.name}: {e}") from e
            try:
                self._ipam.path.unlink()
            except FileNotFoundError:
                pass
        try:
            self._ipam.lock_path.unlink()
        except FileNotFoundError:
            pass

    # ---- addresses and ports

    def allocate(self, container_id: str, ports: Sequence[PortMapping], ip: str = "", ifname: str = "eth0"
                 ) -> Endpoint:
        """An address (the next free one, or `ip` if asked for and free) and the published ports;
        `ifname` is the interface's name in the container (eth1 ... for a further network)."""
        if not _CONTAINER_ID.match(container_id):
            raise NetworkError(f"container id {container_id!r}: letters, digits, '_', '.', '-' (at most 128)")
        if ports and self.internal:
            raise NetworkError(f"network {self.name} is internal: no port can be published from it")
        with self._ipam.locked():
            data = self._ipam.load()
            if container_id in data["endpoints"]:
                raise NetworkError(f"container {container_id} already has an address on {self.name}")
            ours: dict[PortMapping, str] = {}
            for cid, e in data["endpoints"].items():
                for p in e["ports"]:
                    ours[PortMapping(p[0], p[1], p[2], p[3])] = cid
            taken = list(ours)
            if ports:
                # other dockyard networks of this host (another agent's bridge) DNAT ports too
                for m in iptables.published_elsewhere():
                    if m not in ours:
                        ours.setdefault(m, "of another dockyard network")
                        taken.append(m)
            resolved = resolve_ports(ports, taken, self._rng, ours)
            addr = self._ipam.next_free(data) if not ip else self._ipam.take(data, ip)
            ep = Endpoint(
                container_id=container_id,
                ip=str(addr),
                prefixlen=self.subnet.prefixlen,
                gateway=str(self.gateway),
                mac=mac_for(addr),
                host_ifname=host_ifname(self.name, container_id),
                bridge=self.name,
                ports=tuple(resolved),
                isolated=self.internal,
                ifname=ifname,
            )
            stored = ep.to_dict()
            data["endpoints"][container_id] = {k: stored[k] for k in ("ip", "mac", "host_ifname", "ports")}
            self._ipam.save(data)
            return ep

    def release(self, container_id: str) -> None:
        with self._ipam.locked():
            data = self._ipam.load()
            if data["endpoints"].pop(container_id, None) is not None:
                self._ipam.save(data)

    def endpoints(self) -> list[Endpoint]:
        with self._ipam.locked():
            data = self._ipam.load()
        return [
            Endpoint.from_dict(
                {
                    **e,
                    "container_id": cid,
                    "prefixlen": self.subnet.prefixlen,
                    "gateway": str(self.gateway),
                    "bridge": self.name,
                }
            )
            for cid, e in sorted(data["endpoints"].items())
        ]

    # ---- links

    def attach(self, endpoint: Endpoint, pid: int) -> None:
        try:
            same = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
        except OSError as e:
            raise NetworkError(f"attach {endpoint.container_id}: pid {pid}: {e.strerror}") from None
        if same:
            # the peer would land in the host's namespace as "eth0": call attach after the unshare
            raise NetworkError(
                f"attach {endpoint.container_id}: pid {pid} is in the host's network namespace"
            )
        with _ipr() as ipr:
            try:  # one RTM_GETLINK by name, not a dump of every link on the host
                bridge_index = ipr.link("get", ifname=endpoint.bridge)[0]["index"]
            except Exception as e:
                if _netlink_code(e) != ENODEV:
                    raise NetworkError(f"bridge {endpoint.bridge}: {e}") from e
                raise NetworkError(f"bridge {endpoint.bridge} does not exist (call ensure() first)") from None
            spec = {
                "ifname": endpoint.host_ifname,
                "kind": "veth",
                "master": bridge_index,
                "state": "up",
                "peer": {"ifname": "eth0", "address": endpoint.mac, "net_ns_pid": pid},
            }
            try:
                ipr.link("add", **spec)
            except Exception as e:
                if _netlink_code(e) != EEXIST:
                    raise NetworkError(f"veth {endpoint.host_ifname} into pid {pid}: {e}") from e
                if not ipr.link_lookup(ifname=endpoint.host_ifname):
                    raise NetworkError(
                        f"attach {endpoint.container_id}: pid {pid} already has an eth0"
                    ) from e
                # a leftover of a crashed agent: its container is gone, the name is ours
                ipr.link("del", ifname=endpoint.host_ifname)
                try:
                    ipr.link("add", **spec)
                except Exception as e2:
                    raise NetworkError(f"veth {endpoint.host_ifname} into pid {pid}: {e2}") from e2
        try:
            for ov in endpoint.overlays:
                if self.overlays is None:
                    raise NetworkError(f"container {endpoint.container_id}: network {ov.network} is a cluster "
                                       "network, and this agent has not joined a cluster (--join)")
                self.overlays.attach(OverlayNet(ov.network, ov.vni, ov.subnet, ov.mtu), endpoint.container_id, pid,
                                     ov.ifname, ov.mac)
            iptables.publish(endpoint)
        except NetworkError:
            self.detach(endpoint)
            raise

    def plug(self, endpoint: Endpoint, pid: int) -> None:
        """A further interface (endpoint.ifname: eth1 ...) into the netns of a container whose init
        already runs: the veth, then its address and state from the agent through netlink (the init
        configured eth0 itself before it exec'd). A default route only if the container has none
        (its first network keeps it); no ports: docker publishes on the first network only."""
        if endpoint.ports:
            raise NetworkError(f"{endpoint.ifname} of {endpoint.container_id}: ports are published on the first "
                               "network only")
        from agent.runtime.network.inside import configure_more, in_netns

        with _ipr() as ipr:
            try:
                bridge_index = ipr.link("get", ifname=endpoint.bridge)[0]["index"]
            except Exception as e:
                raise NetworkError(f"bridge {endpoint.bridge}: {e}") from e
            with contextlib.suppress(Exception):   # a leftover of a crashed agent: the name is ours
                ipr.link("del", ifname=endpoint.host_ifname)
            try:
                ipr.link("add", ifname=endpoint.host_ifname, kind="veth", master=bridge_index, state="up",
                         peer={"ifname": endpoint.ifname, "address": endpoint.mac, "net_ns_pid": pid})
            except Exception as e:
                raise NetworkError(f"veth {endpoint.host_ifname} into pid {pid} as {endpoint.ifname}: {e}") from e
        try:
            in_netns(pid, lambda: configure_more(endpoint))
        except (OSError, NetworkError) as e:
            self.detach(endpoint)
            raise NetworkError(f"{endpoint.ifname} of {endpoint.container_id} in pid {pid}: {e}") from e

    def overlay_endpoints(self, container_id: str, overlays: Sequence[tuple[str, int, str, int, str, str]]
                          ) -> tuple[OverlayEndpoint, ...]:
        """(network, vni, subnet, mtu, ip, mac) -> the container's eth1, eth2, ... on them."""
        out = []
        for i, (network, vni, subnet, mtu, ip, mac) in enumerate(overlays, 1):
            try:
                net = ipaddress.IPv4Network(subnet, strict=True)
                if ipaddress.IPv4Address(ip) not in net:
                    raise ValueError(f"{ip} is not in {subnet}")
            except ValueError as e:
                raise NetworkError(f"network {network}: {e}") from None
            if net.overlaps(self.subnet):
                raise NetworkError(f"network {network}: subnet {subnet} overlaps this host's bridge {self.name} "
                                   f"({self.subnet})")
            host = self.overlays.veth_name(vni, container_id) if self.overlays is not None else ""
            out.append(OverlayEndpoint(network, vni, subnet, mtu, ip, net.prefixlen, mac, f"eth{i}", host))
        return tuple(out)

    def withdraw(self, endpoint: Endpoint, back: bool = False) -> None:
        """A container moving away (frozen here while the target runs it): its cluster ports down,
        so this host's other containers reach it where it went; back=True undoes it (rolled back)."""
        for ov in endpoint.overlays:
            if self.overlays is not None:
                self.overlays.set_port(ov.vni, endpoint.container_id, up=back)

    def detach(self, endpoint: Endpoint) -> None:
        for ov in endpoint.overlays:
            if self.overlays is not None:
                self.overlays.detach(ov.vni, endpoint.container_id)
        if endpoint.ports:  # (listing the rules runs iptables-save twice: ~5 ms for nothing otherwise)
            iptables.unpublish(endpoint.bridge, endpoint.container_id)
        with _ipr() as ipr:
            try:
                ipr.link("del", ifname=endpoint.host_ifname)
            except Exception as e:
                if _netlink_code(e) != ENODEV:
                    raise NetworkError(f"delete veth {endpoint.host_ifname}: {e}") from e
