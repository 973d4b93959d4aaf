"""`dockyard agent --cgroup-favor-dynmods`: make moving a process into a cgroup cheap.

Every cgroup migration takes the kernel's global cgroup_threadgroup_rwsem for writing, and the first
writer after a quiet spell waits for an RCU grace period: about 7-12 ms on the machines we measured
(BENCHMARKS.md), once per container start. The kernel's answer is the favordynmods mount option:
while any hierarchy that has it exists, the rwsem stays in its slow mode, so migrations are cheap
and every fork and exit on the host pays a little more (a shared rwsem read instead of a per-CPU
one). cgroup v2 hosts can seed a container with CLONE_INTO_CGROUP instead; cgroup v1 cannot.

A v1 hierarchy's options cannot change on remount, so this mounts a small named hierarchy of its
own, with no controllers, that only carries the flag: name=dockyard,favordynmods. The kernel
drops the flag when the last mount of it goes away (Agent.stop unmounts ours).
"""

from __future__ import annotations

import contextlib
import os

from ._errors import CgroupError

OPTIONS = "none,name=dockyard,favordynmods"


def favor_dynmods(mountpoint: str) -> None:
    """Mount the flag-carrying hierarchy at mountpoint (idempotent)."""
    from agent.runtime import syscalls as sc

    if is_mounted(mountpoint):
        return
    os.makedirs(mountpoint, exist_ok=True)
    try:
        sc.mount("cgroup", mountpoint, "cgroup", 0, OPTIONS)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)
        raise CgroupError(f"--cgroup-favor-dynmods: mount -t cgroup -o {OPTIONS} on {mountpoint}: {e.strerror} "
                          "(the kernel needs 6.1 or later)", op="mount", path=mountpoint) from None


def release(mountpoint: str) -> None:
    from agent.runtime import syscalls as sc

    if is_mounted(mountpoint):
        with contextlib.suppress(OSError):
            sc.umount(mountpoint, 0)
    with contextlib.suppress(OSError):
        os.rmdir(mountpoint)


def is_mounted(mountpoint: str) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target and line.split()[2] == "cgroup" for line in f)
