"""The overlay data plane on the real kernel (agent/runtime/network/overlay.py), on three hosts made
of network namespaces on an underlay bridge of their own (TEST-NET-1 inside the namespaces only),
each with one container namespace: bridge + VXLAN port made as specified (learning off, proxy,
port 4789, MTU 1450), static FDB + neighbour entries, cross-host TCP, DF at the MTU, the reconcile
repairing entries deleted or added behind its back, a move of an endpoint to another host, and
removal leaving nothing. Every namespace carries a random tag and is deleted even on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from scheduler.network import mac_for
from tests.overlay_hosts import VNI, Hosts, py_in, sh

pytestmark = [pytest.mark.root, pytest.mark.multinode, pytest.mark.slow]

@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    h = Hosts()
    try:
        h.setup()
        yield h
    finally:
        h.teardown()
    left = [ns for ns in sh("ip", "netns", "list").split() if h.tag in ns]
    assert not left, left


ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen(4); s.settimeout(20)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], 7000)); u.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()
d, a = u.recvfrom(65535); u.sendto(d, a)
"""

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=5); s.sendall(b"hello"); print(s.recv(100).decode())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: never fragment
try:
    u.sendto(b"y" * 1423, (sys.argv[1], 7000)); print("1423 sent")
except OSError as e:
    print("1423", e.errno)
u.sendto(b"y" * 1422, (sys.argv[1], 7000)); print("echoed", len(u.recvfrom(65535)[0]))
"""


def serve(h: Hosts, ctr: str, ip: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(["nsenter", f"--net=/run/netns/{ctr}", "--", sys.executable, "-c", ECHO, ip],
                         stdout=subprocess.PIPE, text=True)
    h.procs.append(p)  # type: ignore[arg-type]
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def talk(ctr: str, ip: str) -> list[str]:
    return py_in(ctr, CLIENT, ip).split("\n")[:-1]


def test_three_hosts_cross_host_tcp_repair_move_and_removal(hosts: Hosts) -> None:
    h = hosts
    c1, c2, c3, moved = h.ctrs
    h.attach(1, c1, h.cip(1))
    h.attach(2, c2, h.cip(2))
    h.attach(3, c3, h.cip(3))
    everyone = [(h.cip(1), 1), (h.cip(2), 2), (h.cip(3), 3)]
    for i in (1, 2, 3):
        peers = [p for p in everyone if p[1] != i]
        assert h.program(i, peers) == {"fdb_added": 2, "fdb_removed": 0, "neigh_added": 2, "neigh_removed": 0}
        assert h.program(i, peers) == {"fdb_added": 0, "fdb_removed": 0, "neigh_added": 0, "neigh_removed": 0}

    # the devices are what the design says
    vx, br = h.ov(1, "print(ov.vxlan_name(net.vni), ov.bridge_name(net.vni))").split()
    details = sh("ip", "-n", h.hosts[0], "-d", "link", "show", vx)
    assert f"vxlan id {VNI} local 192.0.2.1 dev eth0" in details and "dstport 4789" in details
    assert "nolearning" in details and "proxy" in details and "mtu 1450" in details and f"master {br}" in details
    assert "learning off" in sh("bridge", "-n", h.hosts[0], "-d", "link", "show", "dev", vx)
    fdb = sh("bridge", "-n", h.hosts[0], "fdb", "show", "dev", vx)
    assert f"{mac_for(h.cip(2))} dst 192.0.2.2 self permanent" in fdb
    assert "00:00:00:00:00:00" not in fdb  # no flooding to every host
    assert f"{h.cip(3)} lladdr {mac_for(h.cip(3))} PERMANENT" in sh("ip", "-n", h.hosts[0], "neigh", "show", "dev", vx)
    assert "mtu 1450" in sh("ip", "-n", c1, "link", "show", "eth1")

    # TCP and UDP h1 -> h2 over VXLAN; DF: 1422 bytes of payload fit the 1450 MTU, 1423 do not (EMSGSIZE)
    serve(h, c2, h.cip(2))
    assert talk(c1, h.cip(2)) == ["HELLO", "1423 90", "echoed 1422"]
    # the ARP for c2 was answered on h1 by the VXLAN proxy: c1 learned c2's real MAC
    assert mac_for(h.cip(2)) in sh("ip", "-n", c1, "neigh", "show", h.cip(2))

    # reconcile both ways: an entry deleted behind our back comes back, a stray one goes
    sh("bridge", "-n", h.hosts[0], "fdb", "del", mac_for(h.cip(3)), "dev", vx, "self")
    sh("bridge", "-n", h.hosts[0], "fdb", "append", "02:42:0a:fb:00:63", "dev", vx, "dst", "192.0.2.99", "self",
       "permanent")
    sh("ip", "-n", h.hosts[0], "neigh", "replace", "10.251.0.99", "lladdr", "02:42:0a:fb:00:63", "dev", vx,
       "nud", "permanent")
    assert h.program(1, [p for p in everyone if p[1] != 1]) == {
        "fdb_added": 1, "fdb_removed": 1, "neigh_added": 0, "neigh_removed": 1}
    fdb = sh("bridge", "-n", h.hosts[0], "fdb", "show", "dev", vx)
    assert "192.0.2.99" not in fdb and f"{mac_for(h.cip(3))} dst 192.0.2.3" in fdb

    # c2's address moves to h3 (same IP and MAC in a new namespace there): h1 only retargets the VTEP
    h.ov(2, f"ov.detach(net.vni, {c2!r})")
    h.attach(3, moved, h.cip(2))
    moved_peers = [(h.cip(1), 1), (h.cip(2), 3), (h.cip(3), 3)]
    assert h.program(1, [p for p in moved_peers if p[1] != 1]) == {
        "fdb_added": 1, "fdb_removed": 0, "neigh_added": 0, "neigh_removed": 0}
    h.program(3, [(h.cip(1), 1)])  # h3 holds both locally now: no entries for them
    serve(h, moved, h.cip(2))
    assert talk(c1, h.cip(2))[0] == "HELLO"  # c1's ARP entry for c2 is still right: nothing to relearn

    # removal: the bridge, its VXLAN port and every entry are gone; other hosts are untouched
    h.ov(1, f"ov.detach(net.vni, {c1!r}); ov.remove(net.vni); ov.remove(net.vni)")
    links = sh("ip", "-n", h.hosts[0], "-o", "link", "show")
    veth = h.ov(1, f"print(ov.veth_name(net.vni, {c1!r}))").strip()
    assert vx not in links and br not in links and veth not in links
    assert not sh("bridge", "-n", h.hosts[0], "fdb", "show", "dev", "eth0", check=False).count("192.0.2.")
    assert h.ov(1, "print(ov.present([net.vni]))").strip() == f"{{{VNI}: False}}"
    assert vx in sh("ip", "-n", h.hosts[2], "-o", "link", "show")


def test_an_mtu_the_underlay_cannot_carry_is_refused(hosts: Hosts) -> None:
    h = hosts
    sh("ip", "-n", h.hosts[0], "link", "set", "eth0", "mtu", "1400")
    out = h.ov(1, """
        from agent.runtime.network.model import NetworkError
        try:
            ov.ensure(net)
        except NetworkError as e:
            print(e)
        print(ov.present([net.vni]))
    """)
    assert "MTU 1450 needs an underlay MTU of at least 1500; the link of 192.0.2.1 has 1400" in out
    assert f"{{{VNI}: False}}" in out  # nothing half-made
