"""Which registries a pull asks, besides the image's own: docker's registry-mirrors (tried first for
docker.io names, in order; the origin last) and insecure-registries (https without verifying the
certificate, then plain http, as docker treats them). Set by the agent from its flags or
daemon.json (agent/engine.py); read by the registry client (registry.py)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryConfig:
    mirrors: tuple[str, ...] = ()     # scheme://host[:port], checked (agent/engine.py)
    insecure: tuple[str, ...] = ()    # host[:port] or CIDR

    def is_insecure(self, host: str) -> bool:
        """host[:port] named as insecure, or its address inside an insecure CIDR."""
        if host in self.insecure:
            return True
        nets = [ipaddress.ip_network(c, strict=False) for c in self.insecure if "/" in c]
        if not nets:
            return False
        name = host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        try:
            addrs = {ipaddress.ip_address(name)}
        except ValueError:
            try:
                addrs = {ipaddress.ip_address(str(a[4][0])) for a in socket.getaddrinfo(name, None)}
            except OSError:
                return False
        return any(a in n for a in addrs for n in nets)
