"""A container's further user networks: a second `--network`, and docker's `network connect` and
`network disconnect`, of a created or a running container.

The first network stays the container's `network_mode` (eth0: its default route and its published
ports). Each further one (`ContainerConfig.networks`) is an interface eth1, eth2 ... on that
network's bridge, with an address of its subnet and no route but the subnet's (docker's rule: one
default gateway). A running container gets it at once: the veth goes into its netns and is
configured there through netlink (BridgeNetwork.plug), its 127.0.0.11 answers for the network's
names from then on and its /etc/hosts gains the address. A disconnect removes the interface, the
address is freed, and the names and the /etc/hosts line go. The change is kept in the container's
config, so a restart joins the same networks (docker does the same).

Disconnecting the first network of a running container takes eth0 away (and its ports); the next
start makes the first remaining network its first one, or `none`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent.model import Conflict, Container, ContainerConfig, InvalidArgument, NetworkAttachment, NotFound
from agent.runtime.network.model import Endpoint, NetworkError

if TYPE_CHECKING:
    from agent.containers import ContainerManager

RUNNING = ("running", "paused")
NO_NETWORK = ("host", "none")


def networks_of(c: Container) -> list[str]:
    """Every network the container is configured on, its first one first ("" for none/host)."""
    first = c.config.network_mode if c.config.network_mode not in ("", "default") else "bridge"
    out = [] if first in NO_NETWORK else [first]
    return out + [a.name for a in c.config.networks]


def attached(c: Container) -> dict[str, dict[str, Any]]:
    """The endpoints of a running container by network: eth0's and the further ones'."""
    out = {}
    if c.endpoint:
        out[networks_of(c)[0] if c.config.network_mode not in NO_NETWORK else c.config.network_mode] = c.endpoint
    out.update(c.extra_endpoints)
    return out


def attachment(c: Container, name: str) -> NetworkAttachment | None:
    return next((a for a in c.config.networks if a.name == name), None)


def check(m: ContainerManager, cfg: ContainerConfig) -> None:
    """At create and on every change: the further networks exist, are user networks of this
    agent, are named once, and any address asked for is in the network's subnet."""
    if not cfg.networks:
        return
    if cfg.network_mode in NO_NETWORK:
        raise InvalidArgument(f"container cannot be connected to multiple networks with one of the networks in "
                              f"{cfg.network_mode} mode")
    seen = {cfg.network_mode if cfg.network_mode not in ("", "default") else "bridge"}
    for a in cfg.networks:
        n = m.localnets.find(a.name)
        if n is None:
            raise NotFound(f"network {a.name} not found")
        a.name = n.name   # (it may have been given by id)
        if a.name in seen:
            raise Conflict(f"endpoint with name {cfg.name} already exists in network {a.name}")
        seen.add(a.name)
        if a.ipv4_address and ipaddress.IPv4Address(a.ipv4_address) not in ipaddress.IPv4Network(n.subnet):
            raise InvalidArgument(f"--ip {a.ipv4_address}: not an address of network {n.name} ({n.subnet})")


def _ifname(c: Container) -> str:
    taken = {e.get("ifname", "eth0") for e in c.extra_endpoints.values()}
    taken |= {f"eth{i}" for i in range(1 + len(c.config.overlays))}
    return next(f"eth{i}" for i in range(1, 64) if f"eth{i}" not in taken)


def allocate(m: ContainerManager, c: Container, a: NetworkAttachment) -> Endpoint:
    """An address on the network (from a thread: the IPAM file is locked)."""
    n = m.localnets.find(a.name)
    if n is None:
        raise NotFound(f"network {a.name} not found")
    ep = m.localnets.bridge_of(n).allocate(c.id, (), a.ipv4_address, _ifname(c))
    c.extra_endpoints[a.name] = ep.to_dict()
    return ep


def allocate_all(m: ContainerManager, c: Container) -> None:
    """At a start: every further network's address (released again on any failure)."""
    try:
        for a in c.config.networks:
            if a.name not in c.extra_endpoints:
                allocate(m, c, a)
    except NetworkError as e:
        release_all(m, c)
        raise InvalidArgument(str(e)) from e
    except BaseException:
        release_all(m, c)
        raise


def plug_all(m: ContainerManager, c: Container, pid: int) -> None:
    """Once the init exists (the agent wires its namespace): each further interface."""
    for name, ep in c.extra_endpoints.items():
        n = m.localnets.find(name)
        if n is not None:
            m.localnets.bridge_of(n).plug(Endpoint.from_dict(ep), pid)


def unplug(m: ContainerManager, name: str, ep: dict[str, Any], release_id: str = "") -> None:
    n = m.localnets.find(name)
    if n is None:
        return
    b = m.localnets.bridge_of(n)
    with contextlib.suppress(NetworkError):
        b.detach(Endpoint.from_dict(ep))
    if release_id:
        b.release(release_id)


def release_all(m: ContainerManager, c: Container) -> None:
    """At the exit or after a failed start: the addresses (the veths went with the netns). On the
    event loop: a small file under its lock, no netlink."""
    for name in list(c.extra_endpoints):
        n = m.localnets.find(name)
        if n is not None:
            with contextlib.suppress(NetworkError, OSError):
                m.localnets.bridge_of(n).release(c.id)
    c.extra_endpoints = {}


def hosts_lines(c: Container, hostname: str) -> str:
    """The container's own addresses in its /etc/hosts: one line per network, as docker writes."""
    ips = [e["ip"] for e in attached(c).values() if e.get("ip")]
    return "".join(f"{ip}\t{hostname}\n" for ip in dict.fromkeys(ips))


def rewrite_hosts(m: ContainerManager, c: Container) -> None:
    """A running container's /etc/hosts after a connect or disconnect: its own lines made anew,
    every other line (--add-host, links, what the container wrote) kept."""
    hostname = c.config.hostname or c.id[:12]
    old = read_etc(m, c, "hosts")
    if old is None:
        return
    keep = [ln for ln in old.splitlines(keepends=True)
            if not (ln.rstrip("\n").endswith(f"\t{hostname}") and _is_ipv4(ln.split("\t", 1)[0]))]
    write_etc(m, c, "hosts", "".join(keep) + hosts_lines(c, hostname))


def _etc(m: ContainerManager, c: Container) -> int:
    """A descriptor of the container's /etc, opened without following a link (the image, or the
    container itself, may have made /etc a link): its files are read and written relative to it."""
    return os.open(os.path.join(str(m.files(c).dir / "rootfs"), "etc"),
                   os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_etc(m: ContainerManager, c: Container, name: str) -> str | None:
    try:
        etc = _etc(m, c)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=etc)
        with os.fdopen(fd) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(etc)


def write_etc(m: ContainerManager, c: Container, name: str, text: str) -> None:
    """By rename: a reader in the container sees the old file or the new one, whole."""
    try:
        etc = _etc(m, c)
    except OSError:
        return   # no /etc of its own: nothing of ours to keep up to date
    try:
        tmp = f".{name}.dockyard.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=etc)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=etc, dst_dir_fd=etc)
    finally:
        os.close(etc)


def _is_ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s.strip())
    except ValueError:
        return False
    return True


async def connect(m: ContainerManager, c: Container, name: str, aliases: list[str], ip: str = "",
                  links: list[str] | None = None) -> None:
    """Under the container's lock: a start, a checkpoint or another change waits (a container
    half-way through its start would otherwise miss a network its config already has)."""
    async with m._lock(c):
        await _connect(m, c, name, aliases, ip, links)


async def _connect(m: ContainerManager, c: Container, name: str, aliases: list[str], ip: str,
                   links: list[str] | None) -> None:
    """docker network connect NAME CONTAINER [--alias A] [--ip IP]. A running container left with
    no network (every one disconnected) gets it as its first again: eth0, with the default route
    and the links; otherwise links belong to the first network only."""
    import asyncio

    if c.state.status in RUNNING and c.config.network_mode == "none" and not c.config.networks \
            and c.endpoint is None:
        await _connect_first(m, c, name, aliases, ip, links or [])
        return
    if links:
        raise InvalidArgument(f"network connect {name}: links are kept on a container's first network only "
                              f"({c.config.network_mode}) in dockyard")

    n = m.localnets.find(name)
    if n is None:
        raise NotFound(f"network {name} not found" if name not in ("bridge", "host", "none") else
                       f"network connect {name}: only user-defined networks can be added to a container "
                       "(docker network create NAME)")
    if c.config.network_mode in NO_NETWORK:
        raise InvalidArgument(f"container {c.name} is on the {c.config.network_mode} network: it cannot be "
                              f"connected to {n.name}")
    if n.name in networks_of(c):
        raise Conflict(f"endpoint with name {c.name} already exists in network {n.name}")
    if c.config.dns or c.config.dns_search or c.config.dns_options:
        raise InvalidArgument(f"--dns, --dns-search and --dns-option on user network {n.name} are not supported by "
                              "dockyard yet (its containers ask 127.0.0.11)")
    a = NetworkAttachment(n.name, [x for x in aliases if x != c.id[:12]], ip)
    cfg = replace(c.config, networks=[*c.config.networks, a])
    check(m, cfg)
    if c.state.status not in RUNNING:
        c.config = cfg
        m._save(c)
        return
    ep = await asyncio.to_thread(allocate, m, c, a)
    try:
        await asyncio.to_thread(m.localnets.bridge_of(n).plug, ep, c.state.pid)
    except NetworkError as e:
        c.extra_endpoints.pop(a.name, None)
        await asyncio.to_thread(m.localnets.bridge_of(n).release, c.id)
        raise InvalidArgument(f"network connect {n.name}: {e}") from e
    c.config = cfg
    await asyncio.to_thread(_running_changed, m, c)


async def _connect_first(m: ContainerManager, c: Container, name: str, aliases: list[str], ip: str,
                         links: list[str]) -> None:
    import asyncio

    n = m.localnets.find(name)
    if n is None:
        raise NotFound(f"network {name} not found")
    cfg = replace(c.config, network_mode=n.name, network_aliases=[a for a in aliases if a != c.id[:12]],
                  ipv4_address=ip, links=list(links))
    m._validate(cfg)
    bridge = m.localnets.bridge_of(n)
    try:
        ep = await asyncio.to_thread(bridge.allocate, c.id, (), ip)
    except NetworkError as e:
        raise InvalidArgument(f"network connect {n.name}: {e}") from e
    try:
        await asyncio.to_thread(bridge.plug, ep, c.state.pid)
    except NetworkError as e:
        await asyncio.to_thread(bridge.release, c.id)
        raise InvalidArgument(f"network connect {n.name}: {e}") from e
    c.endpoint, c.ip_address, c.config = ep.to_dict(), ep.ip, cfg
    await asyncio.to_thread(_running_changed, m, c)


async def disconnect(m: ContainerManager, c: Container, name: str) -> None:
    """docker network disconnect NAME CONTAINER: also of a running container and of its first
    network (under the container's lock, as connect)."""
    async with m._lock(c):
        await _disconnect(m, c, name)


async def _disconnect(m: ContainerManager, c: Container, name: str) -> None:
    import asyncio

    n = m.localnets.find(name)
    nets = networks_of(c)
    real = n.name if n is not None else name
    if real not in nets:
        raise InvalidArgument(f"container {c.id} is not connected to network {name}")
    cfg = c.config
    if real == nets[0]:   # its first network: the next one (if any) takes its place at the next start
        rest = cfg.networks
        head = rest[0] if rest else None
        cfg = replace(cfg, network_mode=head.name if head else "none",
                      network_aliases=list(head.aliases) if head else [],
                      ipv4_address=head.ipv4_address if head else "", networks=list(rest[1:]),
                      ports=cfg.ports if head else [])
        if c.state.status in RUNNING and c.endpoint is not None:
            ep, c.endpoint = c.endpoint, None
            c.ip_address, c.ports = "", []
            bridge = m.localnets.bridge_of(n) if n is not None else m.network
            await asyncio.to_thread(_unplug_first, bridge, ep, c.id)
            nxt = next(iter(c.extra_endpoints.values()), None)
            if nxt is not None:   # the default route went with eth0: the next network's gateway takes it
                await asyncio.to_thread(_default_via, c.state.pid, str(nxt["gateway"]))
    else:
        cfg = replace(cfg, networks=[a for a in cfg.networks if a.name != real])
        ep2 = c.extra_endpoints.pop(real, None)
        if ep2 is not None:
            await asyncio.to_thread(unplug, m, real, ep2, c.id)
    c.config = cfg
    if c.state.status in RUNNING:
        await asyncio.to_thread(_running_changed, m, c)
    else:
        m._save(c)


def _default_via(pid: int, gateway: str) -> None:
    from agent.runtime.network.inside import default_route_via, in_netns

    with contextlib.suppress(OSError):
        in_netns(pid, lambda: default_route_via(gateway))


def _unplug_first(bridge: Any, ep: dict[str, Any], cid: str) -> None:
    with contextlib.suppress(NetworkError):
        bridge.detach(Endpoint.from_dict(ep))
    bridge.release(cid)


def _running_changed(m: ContainerManager, c: Container) -> None:
    """After a connect or disconnect of a running container: its names, its resolver's
    networks, its /etc/hosts, and the record."""
    from agent.resolver import RESOLV_CONF

    try:
        if m.localnets.refresh(c) and read_etc(m, c, "resolv.conf") != RESOLV_CONF:
            write_etc(m, c, "resolv.conf", RESOLV_CONF)   # (it had the host's: its first network is the bridge)
    except (OSError, NetworkError) as e:
        raise InvalidArgument(f"container {c.name}: its resolver at 127.0.0.11: {e}") from e
    finally:
        rewrite_hosts(m, c)
        m._save(c)
