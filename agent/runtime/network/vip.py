"""Service virtual IPs inside a container's network namespace: iptables DNAT of each VIP to one of
its service's ready tasks, chosen at random per connection (conntrack keeps a connection on the
task it got), in the container's own nat OUTPUT chain.

    nat OUTPUT  -j DY-VIP
    nat DY-VIP  -d VIP/32 -m statistic --mode random --probability 1/n   -j DNAT --to-destination TASK1
                -d VIP/32 -m statistic --mode random --probability 1/(n-1) -j DNAT --to-destination TASK2
                ...       (the last one without a statistic match)

Because the address is rewritten before the packet leaves the container, it goes to the task over
the overlay as any other packet (no SNAT, no hairpin, the task sees the client's own address).
The container's nat table is the agent's (made whole once, when the container starts; then only
DY-VIP is replaced, atomically, by iptables-restore --noflush). A VIP with no ready task has no
rule: a connection to it is not answered.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from agent.runtime.network.iptables import _bin
from agent.runtime.network.model import NetworkError

CHAIN = "DY-VIP"


def ruleset(vips: Sequence[tuple[str, Sequence[str]]], first: bool) -> str:
    lines = ["*nat"]
    if first:
        lines += [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                  ":POSTROUTING ACCEPT [0:0]"]
    lines.append(f":{CHAIN} - [0:0]")
    if first:
        lines.append(f"-A OUTPUT -j {CHAIN}")
    for vip, backends in vips:
        n = len(backends)
        for i, b in enumerate(backends):
            pick = "" if i == n - 1 else f"-m statistic --mode random --probability {1 / (n - i):.8f} "
            lines.append(f"-A {CHAIN} -d {vip}/32 {pick}-j DNAT --to-destination {b}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def netns_of(pid: int) -> int:
    """The inode of pid's network namespace (what apply checks it writes into)."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def apply(pid: int, text: str, first: bool, netns: int) -> None:
    """One iptables-restore in the network namespace `netns` (an inode from netns_of), reached
    through pid (nsenter --net only: the rest is ours). A pid whose process is gone may be
    another's by now, the agent's own namespace's even: the namespace is opened once, checked,
    and entered by that descriptor, so a recycled pid gets nothing written."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetworkError(f"virtual IPs in the namespace of pid {pid}: {e.strerror}") from None
    try:
        if os.fstat(fd).st_ino != netns:
            raise NetworkError(f"virtual IPs: pid {pid} is no longer in its container's network namespace")
        argv = ["nsenter", f"--net=/proc/self/fd/{fd}", "--", _bin("iptables-restore"), "-w"]
        if not first:
            argv.append("--noflush")
        r = subprocess.run(argv, input=text, capture_output=True, text=True, check=False, pass_fds=(fd,))
    finally:
        os.close(fd)
    if r.returncode != 0:
        raise NetworkError(f"virtual IPs in the namespace of pid {pid}: {r.stderr.strip()}")
