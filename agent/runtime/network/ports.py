"""Published ports: docker's -p syntax, and whether a host port is free to publish."""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Callable, Iterable

from agent.runtime.network.model import NetworkError, PortInUse, PortMapping

PROTOCOLS = ("tcp", "udp")
# docker's range for "pick a host port for me"; above the kernel's usual ephemeral start
RANDOM_PORTS = range(49153, 65536)

_Fail = Callable[[str], NetworkError]


def parse_publish(spec: str) -> list[PortMapping]:
    """docker -p: [ip:][hostport[-end]:]containerport[-end][/proto], one mapping per port."""

    def fail(why: str) -> NetworkError:
        return NetworkError(f"-p {spec}: {why}")

    text = spec.strip()
    if not text:
        raise fail("empty port specification")
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise fail(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if text.startswith("["):
        raise fail("IPv6 host addresses are not supported (the bridge is IPv4 only)")
    parts = text.split(":")
    if len(parts) > 3:
        raise fail("too many ':' (expected [ip:][hostport:]containerport)")
    host_ip = ""
    host_part = ""
    if len(parts) == 3:
        host_ip, host_part, container_part = parts
        if not host_ip:
            raise fail("empty host address before ':'")
        _check_host_ip(host_ip, fail)
    elif len(parts) == 2:
        host_part, container_part = parts
    else:
        container_part = parts[0]

    c_lo, c_hi = _parse_range(container_part, "container port", fail)
    count = c_hi - c_lo + 1
    if host_part == "":
        host_ports = [0] * count
    else:
        h_lo, h_hi = _parse_range(host_part, "host port", fail)
        if h_hi - h_lo + 1 != count:
            raise fail(
                f"host port range {host_part} and container port range {container_part} differ in size"
            )
        host_ports = list(range(h_lo, h_hi + 1))
    return [
        PortMapping(host_ip, hp, cp, protocol)
        for hp, cp in zip(host_ports, range(c_lo, c_hi + 1), strict=True)
    ]


def _check_host_ip(host_ip: str, fail: _Fail) -> None:
    try:
        ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise fail(f"host address {host_ip!r} is not an IPv4 address") from None


def _parse_range(text: str, what: str, fail: _Fail) -> tuple[int, int]:
    if text == "":
        raise fail(f"empty {what}")
    lo_text, sep, hi_text = text.partition("-")
    ports = []
    for t in (lo_text, hi_text) if sep else (lo_text,):
        if not t.isdigit():
            raise fail(f"{what} {t!r} is not a number")
        n = int(t)
        if not 1 <= n <= 65535:
            raise fail(f"{what} {n} is out of range 1-65535")
        ports.append(n)
    lo, hi = ports[0], ports[-1]
    if hi < lo:
        raise fail(f"{what} range {text} ends before it starts")
    return lo, hi


def validate_mapping(m: PortMapping) -> None:
    """Checks a mapping that did not come through parse_publish (the runtime may build its own)."""
    if m.protocol not in PROTOCOLS:
        raise NetworkError(f"port {m}: protocol {m.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not 0 <= m.host_port <= 65535:
        raise NetworkError(f"port {m}: host port {m.host_port} is out of range 1-65535")
    if not 1 <= m.container_port <= 65535:
        raise NetworkError(f"port {m}: container port {m.container_port} is out of range 1-65535")
    if m.host_ip:
        try:
            ipaddress.IPv4Address(m.host_ip)
        except ValueError:
            raise NetworkError(f"port {m}: host address {m.host_ip!r} is not an IPv4 address") from None


def overlaps(a: PortMapping, b: PortMapping) -> bool:
    """Would the two mappings catch the same packets? ("" is every address.)"""
    return (
        a.protocol == b.protocol
        and a.host_port == b.host_port
        and (not a.host_ip or not b.host_ip or a.host_ip == b.host_ip)
    )


def check_host_port(m: PortMapping) -> None:
    """Raises PortInUse if a socket on the host holds the port. A TIME_WAIT leftover does not count."""
    kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((m.host_ip or "0.0.0.0", m.host_port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                where = m.host_ip or "0.0.0.0"
                raise PortInUse(
                    f"port {m.host_port}/{m.protocol} on {where} is already in use on the host"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise NetworkError(f"port {m}: {m.host_ip} is not an address of this host") from None
            raise NetworkError(f"port {m}: cannot probe the host port: {e}") from e


def resolve_ports(
    wanted: Iterable[PortMapping],
    taken: Iterable[PortMapping],
    rng: random.Random,
    owner_of: dict[PortMapping, str] | None = None,
) -> list[PortMapping]:
    """Fills in host_port 0 and refuses any port already taken (by `taken` or by the host)."""
    busy = list(taken)
    owners = owner_of or {}
    out: list[PortMapping] = []
    for m in wanted:
        validate_mapping(m)
        if m.host_port == 0:
            m = _pick(m, busy, rng)
        else:
            for other in busy:
                if overlaps(m, other):
                    who = owners.get(other)
                    by = f"container {who}" if who else "this request"
                    raise PortInUse(f"port {m.host_port}/{m.protocol} is already published by {by}")
            check_host_port(m)
        busy.append(m)
        out.append(m)
    return out


def _pick(m: PortMapping, busy: list[PortMapping], rng: random.Random) -> PortMapping:
    for _ in range(200):
        cand = PortMapping(m.host_ip, rng.choice(RANDOM_PORTS), m.container_port, m.protocol)
        if any(overlaps(cand, b) for b in busy):
            continue
        try:
            check_host_port(cand)
        except PortInUse:
            continue
        return cand
    raise PortInUse(f"no free host port for {m.container_port}/{m.protocol} in {RANDOM_PORTS.start}-65535")
