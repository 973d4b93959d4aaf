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
    for ip, error in (("10.5.0.50", "already in use"), ("10.5.0.1", "reserved on network dyntest"),
                      ("10.5.0.0", "not a container address"), ("10.5.0.255", "not a container address"),
                      ("10.6.0.5", "not a container address"), ("nope", "invalid IPv4 address")):
        with pytest.raises(NetworkError, match=error):
            ipam.take(data, ip)


def test_an_ip_range_a_gateway_elsewhere_and_reserved_addresses(tmp_path: Path) -> None:
    net = ipaddress.IPv4Network("10.5.0.0/24")
    ipam = Ipam(tmp_path, "dynr", net, ipaddress.IPv4Network("10.5.0.248/29"),
                frozenset({"10.5.0.254", "10.5.0.249"}))
    data = ipam.load()
    given = []
    for i in range(5):   # .248 .250 .251 .252 .253: the gateway (.254) and .249 are never given
        addr = ipam.next_free(data)
        data["endpoints"][f"c{i}"] = {"ip": str(addr), "mac": "", "host_ifname": "", "ports": []}
        given.append(str(addr))
    assert given == ["10.5.0.248", "10.5.0.250", "10.5.0.251", "10.5.0.252", "10.5.0.253"]
    with pytest.raises(NetworkError, match=r"no free address left in 10.5.0.248/29 \(the range of 10.5.0.0/24\)"):
        ipam.next_free(data)
    # --ip may be outside the range (docker's rule), never the gateway or an auxiliary address
    assert str(ipam.take(data, "10.5.0.1")) == "10.5.0.1"
    with pytest.raises(NetworkError, match="reserved"):
        ipam.take(data, "10.5.0.249")
    # the default: .1 is the gateway, addresses from .2 round-robin
    plain = Ipam(tmp_path, "dynp", net)
    d = plain.load()
    assert str(plain.next_free(d)) == "10.5.0.2" and str(plain.next_free(d)) == "10.5.0.3"
