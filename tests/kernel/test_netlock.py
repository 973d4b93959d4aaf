"""The restore lock a moving container's new netns gets (agent/checkpoint/netlock.py), in a private
netns (`unshare --net`, a process of its own: nothing of the machine's namespace is touched).

Locked, a connection attempt is dropped (the caller times out, as a peer's retransmission would be
lost) instead of refused with a reset; unlocked, the namespace answers again; a second unlock is a
no-op."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = textwrap.dedent("""
    import socket, subprocess
    from agent.checkpoint import netlock
    from agent.runtime import syscalls

    syscalls.set_interface_up("lo")

    def attempt():
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect(("127.0.0.1", 9))
            return "connected"
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, socket.timeout):
            return "dropped"
        finally:
            s.close()

    def chain():
        return "CRIU" in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout

    print("before", attempt())
    netlock.lock_here()
    print("locked", attempt(), chain())
    netlock.unlock_here()
    print("unlocked", attempt(), chain())
    netlock.unlock_here()
    print("again", attempt(), chain())
""")


def test_the_restore_lock_drops_instead_of_resetting_and_goes_away() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=30, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["before refused", "locked dropped True", "unlocked refused False",
                                        "again refused False"], r.stdout
