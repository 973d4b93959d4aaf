"""What runs inside the container's network namespace, in the container init before exec."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from agent.runtime import syscalls
from agent.runtime.network.model import Endpoint, NetworkError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def configure_inside(endpoint: Endpoint) -> None:
    """lo up, eth0 address and up, default route via the gateway; in the current netns.

    With the classic ioctls (agent/runtime/syscalls.py): a fresh namespace needs nothing more,
    and they take microseconds where a netlink session took about 10 ms of every start.
    """
    syscalls.set_interface_up("lo")
    try:
        syscalls.set_ipv4_address("eth0", endpoint.ip, endpoint.prefixlen)
        syscalls.set_interface_up("eth0")
        if not endpoint.isolated:
            syscalls.add_default_route(endpoint.gateway)
        for ov in endpoint.overlays:  # cluster networks: their subnet only, no default route
            syscalls.set_ipv4_address(ov.ifname, ov.ip, ov.prefixlen)
            syscalls.set_interface_up(ov.ifname)
    except OSError as e:
        if e.errno == 19:  # ENODEV
            raise NetworkError(f"container {endpoint.container_id}: an interface is missing in its network "
                               f"namespace: {e.strerror}") from None
        raise NetworkError(f"container {endpoint.container_id}: {e.strerror}") from None


def loopback_up() -> None:
    """For --network none: just lo, with the classic ioctls."""
    syscalls.set_interface_up("lo")


ETH_P_ARP = 0x0806


def garp_frame(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request (RFC 5227 announcement): who-has IP tell IP, from MAC, broadcast."""
    hw, addr = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip)
    return (b"\xff" * 6 + hw + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + b"\x00" * 6 + addr)


def announce(endpoint: Endpoint) -> None:
    """A gratuitous ARP out of each cluster interface, in the current netns: after a move, the new
    host's bridge learns the container's port at once (MACs follow addresses, so no peer's ARP
    entry changes; remote hosts are told through their FDB). Best effort: a failure is only slower."""
    for ov in endpoint.overlays:
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((ov.ifname, ETH_P_ARP))
                s.send(garp_frame(ov.mac, ov.ip))
        except OSError:
            continue


def in_netns(pid: int, fn: Callable[[], T]) -> T:
    """fn() in pid's network namespace, from a short-lived thread that setns()es there and ends (a
    thread's namespace is its own: the agent's stays put, and nothing forks the daemon). Sockets
    fn makes belong to that namespace and stay usable here. OSError if the namespace is gone."""
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    syscalls.setns(target, CLONE_NEWNET)
                    try:
                        out["value"] = fn()
                    finally:
                        syscalls.setns(own, CLONE_NEWNET)
                finally:
                    os.close(target)
            finally:
                os.close(own)
        except BaseException as e:  # (handed to the caller)
            out["error"] = e

    t = threading.Thread(target=work, name=f"netns-{pid}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    value: T = out["value"]
    return value


def has_default_route() -> bool:
    """In the current thread's netns (/proc/thread-self: /proc/net is the process's)."""
    with open("/proc/thread-self/net/route") as f:
        return any(ln.split()[1:2] == ["00000000"] for ln in f.read().splitlines()[1:])


def configure_more(endpoint: Endpoint) -> None:
    """A further interface of a running container (eth1 ...), in its netns (in_netns): its
    address and up; a default route through it only if the container has none (its first network
    keeps the default, as docker's)."""
    try:
        syscalls.set_ipv4_address(endpoint.ifname, endpoint.ip, endpoint.prefixlen)
        syscalls.set_interface_up(endpoint.ifname)
        if not endpoint.isolated and not has_default_route():
            syscalls.add_default_route(endpoint.gateway)
    except OSError as e:
        raise NetworkError(f"{endpoint.ifname} of container {endpoint.container_id}: {e.strerror}") from None


def default_route_via(gateway: str) -> None:
    """After the first network left a running container: the next one's gateway takes the default."""
    if not has_default_route():
        syscalls.add_default_route(gateway)
