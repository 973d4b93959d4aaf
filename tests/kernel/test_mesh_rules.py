"""The routing mesh's iptables rules (agent/runtime/network/mesh.py) in a network namespace of the
test's own: applied, idempotent, repaired when a jump is deleted behind them, and removed whole;
and a UDP flow DNATed to a backend that leaves is forgotten from conntrack (otherwise its
datagrams keep going to the gone task for as long as they keep coming)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.agent_harness import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCRIPT = r"""
import json, socket, sys
from agent.runtime.network.mesh import Mesh, MeshPort
from agent.runtime.network import iptables

def rules():
    return [ln for t in ("nat", "filter") for ln in iptables.list_rules(t) or [] if "DY-MESH" in ln]

def udp_entries(ip):
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    with Conntrack() as ct:
        return len(list(ct.dump_entries(tuple_reply=NFCTAttrTuple(proto=socket.IPPROTO_UDP, saddr=ip))))

out = {}
m = Mesh("dytest")
ports = [MeshPort("udp", 5353, ("10.9.0.2:53", "10.9.0.3:53")), MeshPort("tcp", 8080, ("10.9.0.2:80",))]
out["first"] = m.apply("dotest", "10.9.0.1", ports)
out["again"] = m.apply("dotest", "10.9.0.1", ports)
out["rules"] = rules()
# a jump deleted behind the agent's back is put back by the next pass
jump = next(ln for ln in iptables.list_rules("nat") if ln.startswith("-A PREROUTING") and "DY-MESH" in ln)
iptables.restore({"nat": ["-D" + jump[2:]]})
out["repaired"] = m.apply("dotest", "10.9.0.1", ports) and any(ln == jump for ln in iptables.list_rules("nat"))
# UDP flows to both backends (sent to the host's own address: OUTPUT DNAT picks one at random)
for i in range(40):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("10.9.0.1", 5353))
    s.close()
out["before"] = [udp_entries("10.9.0.2"), udp_entries("10.9.0.3")]
m.apply("dotest", "10.9.0.1", [MeshPort("udp", 5353, ("10.9.0.3:53",)), ports[1]])
out["after"] = [udp_entries("10.9.0.2"), udp_entries("10.9.0.3")]
m.remove()
out["removed"] = rules()
out["installed"] = m.installed()
print(json.dumps(out))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dymesh{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "dotest", "type", "bridge"],
                    ["addr", "add", "10.9.0.1/24", "dev", "dotest"], ["link", "set", "dotest", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_rules_apply_repair_forget_udp_and_go(netns: str) -> None:
    r = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-c", SCRIPT],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["first"] is True and out["again"] is False  # nothing rewritten when nothing changed
    text = "\n".join(out["rules"])
    assert "--dport 5353 -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.9.0.2:53" \
        in text and "--dport 8080 -j DNAT --to-destination 10.9.0.2:80" in text
    assert "-o dotest -m conntrack --ctstate DNAT -j SNAT --to-source 10.9.0.1" in text
    assert out["repaired"] is True
    before, after = out["before"], out["after"]
    assert before[0] > 0 and before[1] > 0, before  # 40 flows spread over both
    assert after == [0, before[1]], (before, after)  # only the gone backend's flows forgotten
    assert out["removed"] == [] and out["installed"] is False
