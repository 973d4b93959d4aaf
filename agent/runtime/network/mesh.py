"""The routing mesh on one host (Swarm's ingress): a port a service publishes in ingress mode answers
on every node, whether a task runs there or not, spread over the service's ready tasks anywhere.

Every node has an address of its own on the ingress network (the bridge of that overlay carries
it), and every task of a meshed service one too. On each node, in the host's namespace:

    nat    PREROUTING  -m addrtype --dst-type LOCAL -j DY-MESH-<h>       from other hosts
    nat    OUTPUT      -m addrtype --dst-type LOCAL -j DY-MESH-<h>       the host's own (127.0.0.1 too)
    nat    DY-MESH-<h> -p P --dport PUB -m statistic --mode random --probability 1/n
                           -j DNAT --to-destination TASK1:TARGET      ... the last one without statistic
    nat    POSTROUTING -j DY-MESHS-<h>
    nat    DY-MESHS-<h> -o <ingress bridge> -m conntrack --ctstate DNAT -j SNAT --to-source <own address>
    filter FORWARD     -j DY-MESHF-<h>   (inserted first, for hosts whose FORWARD policy is DROP)
    filter DY-MESHF-<h> -o <bridge> --ctstate DNAT ACCEPT; -i <bridge> --ctstate RELATED,ESTABLISHED ACCEPT

The SNAT to the entry node's own ingress address is what brings the reply back through the entry
node, whose conntrack undoes both translations (a task on another host would otherwise answer the
client directly, from an address it never spoke to). Conntrack pins a connection to the task it got:
a task that goes away stops receiving new connections once the map no longer lists it ready.

The three chains are rewritten whole by one iptables-restore --noflush (a declared chain is
flushed first: atomic per table); the jumps into them are added only when missing. Chains are
named from the agent's bridge (`<h>`), so agents side by side in one namespace keep apart.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.runtime.network import iptables

log = logging.getLogger("dockyard.agent.mesh")


@dataclass(frozen=True, slots=True)
class MeshPort:
    """One published port and the ready tasks behind it ("ip:port" each)."""
    protocol: str
    published: int
    backends: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Chains:
    dnat: str
    snat: str
    forward: str
    tag: str

    @classmethod
    def of(cls, owner: str) -> Chains:
        h = hashlib.sha256(owner.encode()).hexdigest()[:8]
        return cls(f"DY-MESH-{h}", f"DY-MESHS-{h}", f"DY-MESHF-{h}", f"dy-mesh:{owner}")


def _jumps(c: Chains) -> dict[str, list[tuple[str, str]]]:
    def rule(what: str, text: str) -> tuple[str, str]:
        comment = f'"{c.tag}:{what}"'
        return comment, text.format(tag=f"-m comment --comment {comment}")

    return {
        "nat": [rule("from-outside", f"-A PREROUTING -m addrtype --dst-type LOCAL {{tag}} -j {c.dnat}"),
                rule("from-host", f"-A OUTPUT -m addrtype --dst-type LOCAL {{tag}} -j {c.dnat}"),
                rule("snat", f"-A POSTROUTING {{tag}} -j {c.snat}")],
        "filter": [rule("forward", f"-I FORWARD 1 {{tag}} -j {c.forward}")],
    }


def chain_rules(c: Chains, bridge: str, source: str, ports: Sequence[MeshPort]) -> dict[str, list[str]]:
    """The three chains' whole contents, as iptables-restore lines (each chain declared: flushed)."""
    nat = [f":{c.dnat} - [0:0]", f":{c.snat} - [0:0]"]
    for p in sorted(ports, key=lambda p: (p.published, p.protocol)):
        n = len(p.backends)
        for i, b in enumerate(p.backends):
            pick = "" if i == n - 1 else f"-m statistic --mode random --probability {1 / (n - i):.8f} "
            nat.append(f"-A {c.dnat} -p {p.protocol} -m {p.protocol} --dport {p.published} {pick}"
                       f"-j DNAT --to-destination {b}")
    nat.append(f"-A {c.snat} -o {bridge} -m conntrack --ctstate DNAT -j SNAT --to-source {source}")
    flt = [f":{c.forward} - [0:0]",
           f"-A {c.forward} -o {bridge} -m conntrack --ctstate DNAT -j ACCEPT",
           f"-A {c.forward} -i {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    return {"nat": nat, "filter": flt}


class Mesh:
    """The mesh rules of one agent; apply() is idempotent and cheap when nothing changed."""

    def __init__(self, owner: str) -> None:
        self.chains = Chains.of(owner)
        self._applied: dict[str, list[str]] | None = None
        self._ports: tuple[MeshPort, ...] = ()

    def apply(self, bridge: str, source: str, ports: Sequence[MeshPort]) -> bool:
        """Make the rules exactly these; True when something was (re)written. UDP flows to a
        backend that left are forgotten (conntrack would keep sending a client's datagrams to it
        for as long as they keep coming: kubernetes#48370)."""
        left = {(p.protocol, b) for p in self._ports for b in p.backends} - {
            (p.protocol, b) for p in ports for b in p.backends}
        self._ports = tuple(ports)
        if any(proto == "udp" for proto, _ in left):
            forget_udp(b for proto, b in left if proto == "udp")
        want = chain_rules(self.chains, bridge, source, ports)
        todo: dict[str, list[str]] = {}
        for table, rules in _jumps(self.chains).items():
            present = iptables.list_rules(table) or []
            chains = {self.chains.dnat, self.chains.snat} if table == "nat" else {self.chains.forward}
            gone = any(f"-N {ch}" not in present for ch in chains)
            missing = [r for comment, r in rules if not any(f"--comment {comment}" in ln for ln in present)]
            if gone or missing or want != self._applied:
                todo[table] = want[table] + missing
        if not todo:
            return False
        iptables.restore(todo)
        self._applied = want
        return True

    def remove(self) -> None:
        """Every jump and chain of ours gone; quiet when there is none."""
        c = self.chains
        todo: dict[str, list[str]] = {}
        for table, chains in (("nat", (c.dnat, c.snat)), ("filter", (c.forward,))):
            present = iptables.list_rules(table) or []
            lines = ["-D" + ln[2:] for ln in present
                     if ln.startswith("-A ") and f'--comment "{c.tag}:' in ln and ln.split()[1] not in chains]
            for ch in chains:
                if f"-N {ch}" in present:
                    lines += [f"-F {ch}", f"-X {ch}"]
            todo[table] = lines
        iptables.restore(todo)
        self._applied = None

    def installed(self) -> bool:
        present = iptables.list_rules("nat") or []
        return f"-N {self.chains.dnat}" in present


def forget_udp(backends: Iterable[str]) -> int:
    """Delete the conntrack entries of UDP flows DNATed to these "ip:port" backends (their reply
    direction comes from the backend); how many went. In the caller's network namespace."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    n = 0
    for b in backends:
        ip, _, port = b.rpartition(":")
        # one socket per request: pyroute2's synchronous Conntrack ends its event loop after each
        with Conntrack() as ct:
            entries = list(ct.dump_entries(tuple_reply=NFCTAttrTuple(proto=socket.IPPROTO_UDP, saddr=ip,
                                                                     sport=int(port))))
        for entry in entries:
            try:
                with Conntrack() as ct:
                    ct.delete(entry)
                n += 1
            except Exception as e:  # gone meanwhile (it timed out): nothing to forget
                log.debug("conntrack delete %s: %s", entry, e)
    return n
