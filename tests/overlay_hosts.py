"""Hosts made of network namespaces for the overlay data plane alone (no agents): an underlay
bridge in a netns of its own, three hosts on it at 192.0.2.1-3 (TEST-NET-1, inside the namespaces
only), container namespaces, and agent/runtime/network/overlay.py driven inside each host's
namespace. Used by tests/kernel/test_overlay.py and tests/bench/bench_network.py. Every namespace
carries a random tag; teardown() deletes them all, and the processes started in them."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

from scheduler.network import mac_for

REPO = Path(__file__).resolve().parent.parent
SUBNET = "10.251.0.0/24"
VNI = 4242


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 30) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.returncode}: {r.stderr}")
    return r.stdout


def py_in(netns: str, code: str, *args: str, timeout: float = 30) -> str:
    """Python in a namespace (only the netns: the rest is the machine's), with the repo importable."""
    return sh("nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-c", textwrap.dedent(code), *args,
              timeout=timeout)


OVERLAY = """
import json, sys
sys.path.insert(0, {repo!r})
from agent.runtime.network.overlay import Overlays, OverlayNet, Peer
ov = Overlays({owner!r}, {local!r})
net = OverlayNet("appnet", {vni}, {subnet!r}, 1450)
"""


class Hosts:
    def __init__(self, n: int = 3) -> None:
        self.tag = secrets.token_hex(2)
        self.ul = f"dyou{self.tag}"
        self.hosts = [f"dyoh{self.tag}{i}" for i in range(1, n + 1)]
        self.ctrs = [f"dyoc{self.tag}{i}" for i in range(1, n + 1)] + [f"dyoc{self.tag}m"]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.owner = f"t{self.tag}"

    def ip(self, i: int) -> str:
        return f"192.0.2.{i}"

    def cip(self, i: int) -> str:
        return f"10.251.0.{10 + i}"

    def setup(self) -> None:
        for ns in [self.ul, *self.hosts, *self.ctrs]:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ul, "link", "add", "ul0", "type", "bridge")
        sh("ip", "-n", self.ul, "link", "set", "ul0", "up")
        for i, h in enumerate(self.hosts, 1):
            sh("ip", "-n", self.ul, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", h)
            sh("ip", "-n", self.ul, "link", "set", f"p{i}", "master", "ul0", "up")
            sh("ip", "-n", h, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", h, "link", "set", "eth0", "up")

    def ov(self, i: int, code: str, *args: str) -> str:
        head = OVERLAY.format(repo=str(REPO), owner=self.owner, local=self.ip(i), vni=VNI, subnet=SUBNET)
        return py_in(self.hosts[i - 1], head + textwrap.dedent(code), *args)

    def holder(self, ctr: str) -> int:
        """A process in the container namespace, as the container's init would be."""
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{ctr}", "--", "sleep", "600"])
        self.procs.append(p)
        return p.pid

    def attach(self, host: int, ctr: str, ip: str) -> None:
        pid = self.holder(ctr)
        self.ov(host, f"print(ov.attach(net, {ctr!r}, {pid}, 'eth1', {mac_for(ip)!r}))")
        sh("ip", "-n", ctr, "addr", "add", f"{ip}/24", "dev", "eth1")
        sh("ip", "-n", ctr, "link", "set", "eth1", "up")

    def program(self, host: int, peers: list[tuple[str, int]]) -> dict[str, int]:
        arg = json.dumps([[ip, mac_for(ip), self.ip(h)] for ip, h in peers])
        out = self.ov(host, """
            d = ov.program(net.vni, [Peer(*p) for p in json.loads(sys.argv[1])])
            print(json.dumps({"fdb_added": d.fdb_added, "fdb_removed": d.fdb_removed,
                              "neigh_added": d.neigh_added, "neigh_removed": d.neigh_removed}))
        """, arg)
        result: dict[str, int] = json.loads(out)
        return result

    def teardown(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in [*self.ctrs, *self.hosts, self.ul]:
            sh("ip", "netns", "del", ns, check=False)
