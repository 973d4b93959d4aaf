"""CRIU's network lock, in a container's network namespace: the same rules `criu dump --tcp-established`
adds (criu/net.c network_lock_internal: every packet in or out dropped, except CRIU's own, marked
0xC114) and the ones its unlock applies.

Why the agent sets it itself: a restore into an external network namespace (ours: the agent builds
the netns, and CRIU was told at dump time that it is external) is not locked by CRIU. The target's
netns holds the moved container's address from before CRIU starts, and peers are pointed at this
host while the restore runs (scheduler/migrate.py, phase "switched"): a packet reaching a
namespace with the address but not yet the socket would be answered with a reset and end the
connection. Locked, it is dropped instead and the peer retransmits; the restored socket takes the
retransmission once the lock is gone.

Who lifts it: CRIU's restore does, with the same chain, in network_unlock after the sockets are out
of repair mode and before the tasks resume (its restore.log: "net: Unlock network", then "Restore
finished successfully. Tasks resumed."; seen with criu 4.2 here). The shim runs unlock_here()
after the restore anyway, for a criu that does not.
"""

from __future__ import annotations

import contextlib
import subprocess

from agent.runtime.network.iptables import _bin
from agent.runtime.network.model import NetworkError

LOCK_RULES = """*filter
:CRIU - [0:0]
-I INPUT -j CRIU
-I OUTPUT -j CRIU
-A CRIU -m mark --mark 0xC114 -j ACCEPT
-A CRIU -j DROP
COMMIT
"""

# Declaring the chain flushes it, so the deletes work whatever it holds; the whole run is a no-op
# (and fails harmlessly) when there is no lock.
UNLOCK_RULES = """*filter
:CRIU - [0:0]
-D INPUT -j CRIU
-D OUTPUT -j CRIU
-X CRIU
COMMIT
"""


class LockError(OSError):
    pass


def _restore(rules: str, prefix: list[str], tools: tuple[str, ...]) -> list[str]:
    """iptables-restore --noflush of `rules` with each tool; the errors of the ones that failed."""
    errors = []
    for tool in tools:
        try:
            r = subprocess.run([*prefix, _bin(tool), "--noflush", "-w"], input=rules, text=True,
                               capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired, NetworkError) as e:
            errors.append(f"{tool}: {e}")
            continue
        if r.returncode != 0:
            errors.append(f"{tool}: {r.stderr.strip() or f'exit {r.returncode}'}")
    return errors


def lock_here() -> None:
    """Lock the current network namespace (IPv4: the overlay is IPv4 only). Raises LockError."""
    errors = _restore(LOCK_RULES, [], ("iptables-restore",))
    if errors:
        raise LockError("cannot lock the network namespace for the restore: " + "; ".join(errors))


def unlock_here() -> None:
    """Remove the lock from the current network namespace, if it is there."""
    _restore(UNLOCK_RULES, [], ("iptables-restore", "ip6tables-restore"))


def unlock_pid(pid: int) -> None:
    """Remove the lock from the network namespace of `pid`, if it is there."""
    with contextlib.suppress(OSError):
        _restore(UNLOCK_RULES, ["nsenter", f"--net=/proc/{pid}/ns/net", "--"],
                 ("iptables-restore", "ip6tables-restore"))
