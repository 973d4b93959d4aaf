"""docker's --ip on a user network: the address asked for, when it is a free container address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from agent.runtime.network.ipam import Ipam
from agent.runtime.network.model import NetworkError


def test_take_an_asked_address_or_say_why_not(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path, "dyntest", ipaddress.IPv4Network("10.5.0.0/24"))
    data = ipam.load()
    assert str(ipam.take(data, "10.5.0.50")) == "10.5.0.50"
    data["endpoints"]["c1"] = {"ip": "10.5.0.50", "mac": "", "host_ifname": "", "ports": []}
    for ip, error in (("10.5.0.50", "already in use"), ("10.5.0.1", "not a container address"),
                      ("10.5.0.0", "not a container address"), ("10.5.0.255", "not a container address"),
                      ("10.6.0.5", "not a container address"), ("nope", "invalid IPv4 address")):
        with pytest.raises(NetworkError, match=error):
            ipam.take(data, ip)
