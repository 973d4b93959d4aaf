"""iptables rules of one bridge: a chain of our own per table, every rule tagged with a comment.

Model: docker with --userland-proxy=false (and, with --ip-masq, its outbound NAT).
  nat    PREROUTING  -m addrtype --dst-type LOCAL -j DY-<br>       (published ports, from outside)
  nat    OUTPUT      -m addrtype --dst-type LOCAL -j DY-<br>       (the host's own connections)
  nat    POSTROUTING -s 127.0.0.0/8 -o <br> -j MASQUERADE          (127.0.0.1:PORT works, with
                                                                  route_localnet=1 on the bridge)
  nat    DY-<br>     [-d HOSTIP] -p P --dport HP -j DNAT --to IP:CP   one per published port
  filter FORWARD     -o <br> -j DY-<br>                            (inserted first, so a DROP
  filter DY-<br>     -i <br> -o <br> -j ACCEPT                      policy elsewhere cannot cut
                     ESTABLISHED,RELATED / published ports ACCEPT   container-to-container traffic)
With masquerading (the agent's --ip-masq, on by default as docker's):
  nat    POSTROUTING -s <subnet> ! -o <br> -j MASQUERADE         containers reach beyond the host
  filter FORWARD     -i <br> ! -o <br> -j ACCEPT                 (inserted first)
Without it nothing is NATed or forwarded towards another interface of the host. An internal
network (--internal) gets neither, and instead, first in FORWARD:
  filter FORWARD     ! -i <br> -o <br> -j DROP;  -i <br> ! -o <br> -j DROP

Each change is one iptables-restore --noflush run (atomic per table, and one process however
many ports), which keeps attach on the container start path fast.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from agent.runtime.network.model import Endpoint, NetworkError, PortMapping

_bins: dict[str, str] = {}


def _bin(name: str) -> str:
    if name not in _bins:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
        if path is None:
            raise NetworkError(f"{name} not found: install Debian's iptables package")
        _bins[name] = path
    return _bins[name]


def chain_name(bridge: str) -> str:
    return f"DY-{bridge}"


def network_tag(bridge: str) -> str:
    return f"dy-net:{bridge}"


def container_tag(container_id: str) -> str:
    return f"dy:{container_id}"


def _quoted(tag: str) -> str:
    return f'"{tag}"'


def list_rules(table: str, chain: str | None = None) -> list[str] | None:
    """`iptables -S` lines of a table (or one chain); None if the chain does not exist."""
    args = [_bin("iptables"), "-w", "-t", table, "-S"]
    if chain:
        args.append(chain)
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        if chain:
            return None
        raise NetworkError(f"iptables -t {table} -S: {r.stderr.strip()}")
    return r.stdout.splitlines()


def restore(tables: Mapping[str, Sequence[str]]) -> None:
    """Applies rule lines (in `iptables -S` form) per table, atomically per table, without flushing."""
    text = "".join(
        f"*{table}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
        for table, lines in tables.items()
        if lines
    )
    if not text:
        return
    r = subprocess.run(
        [_bin("iptables-restore"), "-w", "--noflush"], input=text, capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise NetworkError(f"iptables-restore failed: {r.stderr.strip()}\n{text}")


EGRESS = ("masquerade", "egress")  # the rules --ip-masq adds (and removes when it is off)


def base_rules(bridge: str, subnet: str = "", masq: bool = False, internal: bool = False
               ) -> dict[str, list[tuple[str, str]]]:
    """Per table: (comment naming the rule, rule). Each rule has its own comment so that ensure can
    tell exactly which are missing whatever spelling `iptables -S` prints them in."""
    chain = chain_name(bridge)

    def tag(what: str) -> str:
        return f"-m comment --comment {_quoted(network_tag(bridge) + ':' + what)}"

    def rules(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
        return [
            (_quoted(network_tag(bridge) + ":" + what), rule.format(tag=tag(what))) for what, rule in pairs
        ]

    egress_nat = [("masquerade", f"-A POSTROUTING -s {subnet} ! -o {bridge} {{tag}} -j MASQUERADE")] if masq else []
    egress_filter = [("egress", f"-I FORWARD 1 -i {bridge} ! -o {bridge} {{tag}} -j ACCEPT")] if masq else []
    # an internal network (docker's --internal): nothing is forwarded out of the bridge or into it,
    # first in FORWARD, whatever another network's rules accept
    if internal:
        egress_filter = [("internal-out", f"-I FORWARD 1 -i {bridge} ! -o {bridge} {{tag}} -j DROP"),
                         ("internal-in", f"-I FORWARD 1 ! -i {bridge} -o {bridge} {{tag}} -j DROP")]
    return {
        "nat": rules(
            ("from-outside", f"-A PREROUTING -m addrtype --dst-type LOCAL {{tag}} -j {chain}"),
            ("from-host", f"-A OUTPUT -m addrtype --dst-type LOCAL {{tag}} -j {chain}"),
            ("localhost", f"-A POSTROUTING -s 127.0.0.0/8 -o {bridge} {{tag}} -j MASQUERADE"),
            *egress_nat,
        ),
        "filter": rules(
            ("forward", f"-I FORWARD 1 -o {bridge} {{tag}} -j {chain}"),
            ("same-bridge", f"-A {chain} -i {bridge} -o {bridge} {{tag}} -j ACCEPT"),
            (
                "replies",
                f"-A {chain} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {{tag}} -j ACCEPT",
            ),
            *egress_filter,
        ),
    }


def ensure_base(bridge: str, subnet: str = "", masq: bool = False, internal: bool = False) -> None:
    """Creates our chains and the rules that lead to them, adding only what is missing (and taking
    the egress rules away when masquerading is off)."""
    chain = chain_name(bridge)
    todo: dict[str, list[str]] = {}
    unwanted = [] if masq else [_quoted(f"{network_tag(bridge)}:{what}") for what in EGRESS]
    for table, rules in base_rules(bridge, subnet, masq, internal).items():
        present = list_rules(table) or []
        lines = [] if f"-N {chain}" in present else [f":{chain} - [0:0]"]
        for comment, rule in rules:
            if not any(f"--comment {comment}" in line for line in present):
                lines.append(rule)
        lines += ["-D" + line[2:] for line in present
                  if line.startswith("-A ") and any(f"--comment {c}" in line for c in unwanted)]
        todo[table] = lines
    restore(todo)


def remove_base(bridge: str) -> None:
    """Deletes every rule tagged for the network and both chains; quiet when already gone."""
    chain = chain_name(bridge)
    prefix = f"--comment {_quoted(network_tag(bridge))[:-1]}:"
    todo: dict[str, list[str]] = {}
    for table in ("nat", "filter"):
        present = list_rules(table) or []
        lines = [
            "-D" + line[2:]
            for line in present
            if line.startswith("-A ") and prefix in line and not line.startswith(f"-A {chain} ")
        ]
        if f"-N {chain}" in present:
            lines += [f"-F {chain}", f"-X {chain}"]
        todo[table] = lines
    restore(todo)


def port_rules(endpoint: Endpoint) -> dict[str, list[str]]:
    chain = chain_name(endpoint.bridge)
    tag = f"-m comment --comment {_quoted(container_tag(endpoint.container_id))}"
    nat: list[str] = []
    flt: list[str] = []
    for m in endpoint.ports:
        dst = f"-d {m.host_ip}/32 " if m.host_ip else ""
        nat.append(
            f"-A {chain} {dst}-p {m.protocol} -m {m.protocol} --dport {m.host_port} {tag} "
            f"-j DNAT --to-destination {endpoint.ip}:{m.container_port}"
        )
        flt.append(
            f"-A {chain} -d {endpoint.ip}/32 ! -i {endpoint.bridge} -o {endpoint.bridge} "
            f"-p {m.protocol} -m {m.protocol} --dport {m.container_port} {tag} -j ACCEPT"
        )
    return {"nat": nat, "filter": flt}


def publish(endpoint: Endpoint) -> None:
    if endpoint.ports:
        restore(port_rules(endpoint))


def unpublish(bridge: str, container_id: str) -> None:
    """Deletes every rule tagged with the container, whatever ports it had."""
    chain = chain_name(bridge)
    marker = f"--comment {_quoted(container_tag(container_id))} "
    todo: dict[str, list[str]] = {}
    for table in ("nat", "filter"):
        present = list_rules(table, chain) or []
        todo[table] = ["-D" + line[2:] for line in present if line.startswith("-A ") and marker in line]
    restore(todo)


def published_elsewhere() -> list[PortMapping]:
    """Ports DNATed by any dockyard network of the host (other agents included)."""
    out: list[PortMapping] = []
    for line in list_rules("nat") or []:
        if not line.startswith("-A DY-") or "-j DNAT" not in line:
            continue
        words = line.split()
        try:
            proto = words[words.index("-p") + 1]
            port = int(words[words.index("--dport") + 1])
        except (ValueError, IndexError):
            continue
        host_ip = words[words.index("-d") + 1].removesuffix("/32") if "-d" in words else ""
        out.append(PortMapping(host_ip, port, 0, proto))
    return out
