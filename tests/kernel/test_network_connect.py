"""A container on more than one user network, and networks added to and removed from a running
container (docker's `network connect|disconnect`), through the real docker CLI and docker-py:
each interface, route, name and /etc/hosts line is checked inside the containers."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import docker as dockerpy
import pytest

from tests.agent_harness import AgentProcess
from tests.kernel.test_dockerapi import da, dconf, denv, docker  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def sh(a: AgentProcess, conf: Path, name: str, script: str) -> str:
    return docker(a, conf, "exec", name, "sh", "-c", script).stdout


def nets(a: AgentProcess, conf: Path, name: str) -> dict[str, dict[str, object]]:
    doc = json.loads(docker(a, conf, "inspect", name).stdout)[0]
    out: dict[str, dict[str, object]] = doc["NetworkSettings"]["Networks"]
    return out


def test_connect_and_disconnect_a_running_container(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    tag = f"{random.randrange(16**4):04x}"
    na, nb = f"dca{tag}", f"dcb{tag}"
    docker(da, dconf, "network", "create", na)
    docker(da, dconf, "network", "create", nb)
    a1, b1 = f"a1{tag}", f"b1{tag}"
    try:
        docker(da, dconf, "run", "-d", "--name", a1, "--network", na, "busybox", "sleep", "120")
        docker(da, dconf, "run", "-d", "--name", b1, "--network", nb, "--network-alias", "bee", "busybox",
               "sleep", "120")
        gw_a = json.loads(docker(da, dconf, "network", "inspect", na).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        b_ip = nets(da, dconf, b1)[nb]["IPAddress"]
        # (not NXDOMAIN: a name that is not ours goes to the host's resolvers, which may be slow)
        assert f"Address: {b_ip}" not in sh(da, dconf, a1, f"nslookup {b1} 2>&1 || true")
        # connect while it runs: eth1 on nb, the default route stays on eth0, names both ways
        docker(da, dconf, "network", "connect", "--alias", "second", nb, a1)
        n = nets(da, dconf, a1)
        assert list(n) == [na, nb] and n[nb]["Aliases"] == ["second"]
        a_ip_b = n[nb]["IPAddress"]
        out = sh(da, dconf, a1, "ip -4 -o addr show eth1; ip route; cat /etc/hosts; "
                                f"nslookup {b1}; nslookup bee; ping -c1 -W2 {b_ip} >/dev/null && echo ping-ok")
        assert f"inet {a_ip_b}/" in out and f"default via {gw_a} dev eth0" in out, out
        assert out.count("default") == 1, out
        assert f"{a_ip_b}\t" in out and f"{n[na]['IPAddress']}\t" in out, out   # /etc/hosts: both
        assert out.count(f"Address: {b_ip}") >= 2 and "ping-ok" in out, out
        out = sh(da, dconf, b1, f"nslookup {a1}; nslookup second")
        assert out.count(f"Address: {a_ip_b}") == 2, out
        net = json.loads(docker(da, dconf, "network", "inspect", nb).stdout)[0]
        assert sorted(c["Name"] for c in net["Containers"].values()) == sorted([a1, b1])
        r = docker(da, dconf, "network", "connect", nb, a1, check=False)
        assert r.returncode != 0 and "already exists in network" in r.stderr
        r = docker(da, dconf, "network", "rm", nb, check=False)
        assert r.returncode != 0 and "active endpoints" in r.stderr
        # disconnect: eth1, its names, its /etc/hosts line and its address are gone
        docker(da, dconf, "network", "disconnect", nb, a1)
        assert list(nets(da, dconf, a1)) == [na]
        out = sh(da, dconf, a1, "ip link show eth1 2>&1; cat /etc/hosts; "
                                f"ping -c1 -W1 {b_ip} >/dev/null 2>&1 || echo unreachable")
        assert "can't find device" in out and f"{a_ip_b}\t" not in out and "unreachable" in out, out
        assert f"Address: {a_ip_b}" not in sh(da, dconf, b1, f"nslookup {a1} 2>&1 || true")
        r = docker(da, dconf, "network", "disconnect", nb, a1, check=False)
        assert r.returncode != 0 and "is not connected to network" in r.stderr
        # its address is free again: a fixed --ip connect takes it
        docker(da, dconf, "network", "connect", "--ip", str(a_ip_b), nb, a1)
        assert nets(da, dconf, a1)[nb]["IPAddress"] == a_ip_b
        # the first network of a running container can go too: eth0 with it; eth1 stays
        docker(da, dconf, "network", "disconnect", na, a1)
        out = sh(da, dconf, a1, "ip -o link; ip route")
        assert "eth0" not in out and "eth1" in out, out
        # a restart joins what is left (nb, now its first network: eth0)
        docker(da, dconf, "restart", "-t", "0", a1)
        n = nets(da, dconf, a1)
        assert list(n) == [nb]
        assert f"inet {n[nb]['IPAddress']}/" in sh(da, dconf, a1, "ip -o -4 addr show eth0")
        for bad, error in (([na, "nosuchcontainer"], "No such container"),
                           (["nosuchnet" + tag, a1], "not found"),
                           (["--ip", "10.1.2.3", na, a1], "not an address of network")):
            r = docker(da, dconf, "network", "connect", *bad, check=False)
            assert r.returncode != 0 and error in r.stderr, (bad, r.stderr)
    finally:
        docker(da, dconf, "rm", "-f", a1, b1, check=False)
        docker(da, dconf, "network", "rm", na, nb, check=False)
    assert docker(da, dconf, "network", "ls", "--filter", "type=custom", "-q").stdout == ""


def test_two_networks_at_create_and_connect_before_start(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    tag = f"{random.randrange(16**4):04x}"
    na, nb = f"dma{tag}", f"dmb{tag}"
    with dockerpy.APIClient(base_url=f"unix://{da.docker_socket}", version="1.45") as c:
        c.create_network(na)
        c.create_network(nb)
        made: list[str] = []
        try:
            # NetworkingConfig with two networks (API 1.44+, `docker run --network a --network b`)
            cid = c.create_container("busybox", "sleep 120", name=f"m1{tag}",
                                     host_config=c.create_host_config(network_mode=na),
                                     networking_config=c.create_networking_config({
                                         na: c.create_endpoint_config(aliases=["first"]),
                                         nb: c.create_endpoint_config(aliases=["other"])}))["Id"]
            made.append(cid)
            # connect before the start (docker-py's models test, docker-compose's way)
            cid2 = c.create_container("busybox", "sleep 120", name=f"m2{tag}")["Id"]
            made.append(cid2)
            c.connect_container_to_network(cid2, nb, aliases=["late"])
            for x in made:
                c.start(x)
            n1 = c.inspect_container(cid)["NetworkSettings"]["Networks"]
            n2 = c.inspect_container(cid2)["NetworkSettings"]["Networks"]
            assert list(n1) == [na, nb] and list(n2) == ["bridge", nb]
            ex = c.exec_create(cid, ["sh", "-c", "ip -4 -o addr; nslookup late; nslookup other"])
            out = c.exec_start(ex).decode()
            assert f"inet {n1[nb]['IPAddress']}/" in out and f"inet {n1[na]['IPAddress']}/" in out, out
            assert f"Address: {n2[nb]['IPAddress']}" in out and out.count(f"Address: {n1[nb]['IPAddress']}") == 1, out
            got = sorted(k[:12] for k in c.inspect_network(nb)["Containers"])
            assert got == sorted(x[:12] for x in made)
            with pytest.raises(dockerpy.errors.APIError, match="user-defined"):
                c.create_container("busybox", "true", host_config=c.create_host_config(network_mode=na),
                                   networking_config=c.create_networking_config({
                                       na: c.create_endpoint_config(), "host": c.create_endpoint_config()}))
        finally:
            for x in made:
                c.remove_container(x, force=True)
            c.remove_network(na)
            c.remove_network(nb)


def test_the_dockyard_cli_bridge_networks_internal_and_ipam(da: AgentProcess) -> None:  # noqa: F811
    """`dockyard network create -d bridge` with an address range, a gateway that is not .1 and
    auxiliary addresses; an --internal one with no way out; connect and disconnect of a running
    container through the dockyard CLI."""
    tag = f"{random.randrange(16**4):04x}"
    x = random.randrange(256)
    net, inner = f"dli{tag}", f"dlx{tag}"
    c1 = f"c1{tag}"

    def cli(*args: str) -> str:
        return da.cli(*args, check=True).stdout

    ids: list[str] = []
    try:
        cli("network", "create", "-d", "bridge", "--subnet", f"10.219.{x}.0/24", "--gateway", f"10.219.{x}.254",
            "--ip-range", f"10.219.{x}.16/28", "--aux-address", f"r=10.219.{x}.16", "--label", "k=v", net)
        cli("network", "create", "-d", "bridge", "--internal", inner)
        doc = {n["Name"]: n for n in json.loads(cli("network", "ls", "--format", "json"))}
        assert doc[net]["Driver"] == "bridge" and doc[net]["Scope"] == "local" and doc[inner]["Internal"]
        info = json.loads(cli("network", "inspect", net))[0]
        ids += [info["id"], json.loads(cli("network", "inspect", inner))[0]["id"]]
        assert (info["gateway"], info["ip_range"], info["aux_addresses"]) == \
            (f"10.219.{x}.254", f"10.219.{x}.16/28", {"r": f"10.219.{x}.16"})
        # the first address given is the range's first that is not reserved; the gateway is .254
        cli("run", "-d", "--name", c1, "--network", net, "busybox", "sleep", "120")
        out = cli("exec", c1, "sh", "-c", "ip -4 -o addr show eth0; ip route")
        assert f"inet 10.219.{x}.17/24" in out and f"default via 10.219.{x}.254" in out, out
        # connect to the internal network: eth1, no second default route
        cli("network", "connect", "--alias", "inside", inner, c1)
        inner_info = json.loads(cli("network", "inspect", inner))[0]
        assert inner_info["containers"] == [c1]
        out = cli("exec", c1, "sh", "-c", "ip -4 -o addr show eth1; ip route")
        assert "eth1" in out and out.count("default") == 1, out
        # a container only on the internal network has no way out: not even to the agent's bridge
        # address (a host-local address, reachable from any other network without forwarding)
        gw_default = str(da.subnet).rsplit(".", 1)[0] + ".1"
        r = da.cli("run", "--rm", "--network", inner, "busybox", "sh", "-c",
                   f"ip route; ping -c1 -W1 {gw_default} 2>&1 || echo no-way-out", check=True).stdout
        assert "default" not in r and "no-way-out" in r, r
        r = da.cli("run", "--rm", "--network", net, "busybox", "sh", "-c",
                   f"ping -c1 -W2 {gw_default} >/dev/null && echo out-ok", check=True).stdout
        assert "out-ok" in r, r
        rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
        bridge = "dyn" + inner_info["id"][:12]
        assert f"! -i {bridge} -o {bridge}" in rules and f"-i {bridge} ! -o {bridge}" in rules
        # bad input, each named
        for args, error in ((["-d", "bridge", "--subnet", f"10.219.{x}.0/24", "--gateway", "10.1.1.1", "bad1"],
                             "is not a host address"),
                            (["-d", "bridge", "--subnet", "10.218.0.0/24", "--ip-range", "10.218.1.0/28", "bad2"],
                             "not inside the subnet"),
                            (["-d", "bridge", "--ip-range", "10.218.1.0/28", "bad3"], "need --subnet"),
                            (["--gateway", "10.218.1.1", "bad4"], "for -d bridge networks")):
            r = da.cli("network", "create", *args)
            assert r.returncode != 0 and error in r.stderr, (args, r.stderr)
        r = da.cli("run", "--rm", "--network", inner, "-p", "8080:80", "busybox", "true")
        assert r.returncode != 0 and "internal" in r.stderr, r.stderr
        r = da.cli("network", "rm", inner)
        assert r.returncode != 0 and "active endpoints" in r.stderr
        r = da.cli("checkpoint", c1)   # (refused by name, not half-restored without its eth1)
        assert r.returncode != 0 and "more than one network" in r.stderr, r.stderr
        cli("network", "disconnect", inner, c1)
        assert "eth1" not in cli("exec", c1, "ip", "-o", "link")
    finally:
        da.cli("rm", "-f", c1)
        da.cli("network", "rm", net, inner)
    rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert ids and not any("dyn" + i[:12] in rules + links for i in ids)   # bridges and rules gone


def test_an_agent_restart_keeps_a_second_network(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    """Killed and started again, the agent adopts the container with its eth1: the names of that
    network answer again from a fresh 127.0.0.11, and a disconnect still frees the address."""
    tag = f"{random.randrange(16**4):04x}"
    na, nb = f"dra{tag}", f"drb{tag}"
    a1, b1 = f"ra{tag}", f"rb{tag}"
    docker(da, dconf, "network", "create", na)
    docker(da, dconf, "network", "create", nb)
    try:
        docker(da, dconf, "run", "-d", "--name", a1, "--network", na, "busybox", "sleep", "120")
        docker(da, dconf, "run", "-d", "--name", b1, "--network", nb, "busybox", "sleep", "120")
        docker(da, dconf, "network", "connect", nb, a1)
        b_ip = nets(da, dconf, b1)[nb]["IPAddress"]
        da.kill9()
        da.start()
        assert list(nets(da, dconf, a1)) == [na, nb]
        out = sh(da, dconf, a1, f"nslookup {b1}; ip -o link show eth1")
        assert f"Address: {b_ip}" in out and "eth1" in out, out
        docker(da, dconf, "network", "disconnect", nb, a1)
        assert "eth1" not in sh(da, dconf, a1, "ip -o link")
        docker(da, dconf, "rm", "-f", b1)
        docker(da, dconf, "network", "rm", nb)   # nothing left holding it
    finally:
        docker(da, dconf, "rm", "-f", a1, b1, check=False)
        docker(da, dconf, "network", "rm", na, nb, check=False)
