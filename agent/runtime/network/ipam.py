"""Addresses of one bridge network, in a JSON file shared by every process of the host.

The file is read and rewritten whole under an exclusive flock on a sibling lock file, and
replaced by rename, so a crash never leaves half a file and two agents (or an agent and the
CLI) never hand out the same address or host port.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.runtime.network.model import NetworkError
from agent.runtime.spec import write_atomic

FORMAT = 1


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """A locally administered MAC derived from the address, as docker does: stable across restarts."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


class Ipam:
    def __init__(self, state_dir: Path, name: str, subnet: ipaddress.IPv4Network,
                 pool: ipaddress.IPv4Network | None = None, reserved: frozenset[str] = frozenset()) -> None:
        """pool: the part of the subnet containers' addresses are given from (docker's IPRange; the
        whole subnet by default); reserved: never given (the gateway, docker's AuxiliaryAddresses)."""
        self.path = state_dir / f"{name}.ipam.json"
        self.lock_path = state_dir / f"{name}.lock"
        self.name = name
        self.subnet = subnet
        self.pool = pool or subnet
        self.reserved = reserved or frozenset({str(subnet.network_address + 1)})

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive hold on the network's state (IPAM and the bridge's iptables chains)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {
                "format": FORMAT,
                "bridge": self.name,
                "subnet": str(self.subnet),
                "next": 2,
                "endpoints": {},
            }
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError as e:
            raise NetworkError(f"{self.path}: not valid JSON ({e})") from None
        if data.get("format") != FORMAT or not isinstance(data.get("endpoints"), dict):
            raise NetworkError(f"{self.path}: unknown IPAM format {data.get('format')!r}")
        if data.get("subnet") != str(self.subnet):
            raise NetworkError(
                f"{self.path}: network {self.name} was made with subnet {data.get('subnet')}, "
                f"not {self.subnet}; destroy it first"
            )
        return data

    def save(self, data: dict[str, Any]) -> None:
        # Renamed into place, not fsync'd: the addresses of running containers, which a power cut
        # ends too (the containers' own state files are written the same way: write_atomic).
        # An fsync cost 2-3 ms of every start and exit here, one of them on the agent's loop.
        write_atomic(self.path, json.dumps(data, sort_keys=True))

    def next_free(self, data: dict[str, Any]) -> ipaddress.IPv4Address:
        """Round-robin from where the last allocation stopped, so a freed address rests a while
        before reuse (stale ARP entries in other containers then age out)."""
        used = {e["ip"] for e in data["endpoints"].values()} | self.reserved
        base = int(self.subnet.network_address)
        # "next" is the host index after the last address given (2: the first after a .1 gateway)
        first = max(int(self.pool.network_address), base + 1) - base
        last = min(int(self.pool.broadcast_address), int(self.subnet.broadcast_address) - 1) - base
        size = last - first + 1
        if size <= 0:
            raise NetworkError(f"subnet {self.subnet} has no room for containers")
        start = int(data.get("next", 2))
        if not first <= start <= last:
            start = first
        for i in range(size):
            index = first + (start - first + i) % size
            cand = ipaddress.IPv4Address(base + index)
            if str(cand) not in used:
                data["next"] = index + 1
                return cand
        where = self.subnet if self.pool == self.subnet else f"{self.pool} (the range of {self.subnet})"
        raise NetworkError(f"network {self.name}: no free address left in {where}")

    def take(self, data: dict[str, Any], ip: str) -> ipaddress.IPv4Address:
        """The address a container asked for (docker's --ip), if it is a free host address here."""
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            raise NetworkError(f"invalid IPv4 address {ip!r}") from None
        first = self.subnet.network_address + 1
        if addr not in self.subnet or addr < first or addr == self.subnet.broadcast_address:
            raise NetworkError(f"address {ip} is not a container address of {self.subnet} "
                               f"(from {first} to {self.subnet.broadcast_address - 1})")
        if str(addr) in self.reserved:
            raise NetworkError(f"address {ip} is reserved on network {self.name} (its gateway or an auxiliary "
                               "address)")
        if str(addr) in {e["ip"] for e in data["endpoints"].values()}:
            raise NetworkError(f"address {ip} is already in use on network {self.name}")
        return addr

    def remove(self) -> None:
        for p in (self.path, self.lock_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
