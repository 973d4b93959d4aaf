"""Disk pressure: how full the filesystem under the agent's state directory is.

When less than ``--min-free-disk`` percent of it is free, the agent refuses new work (creating a
container, restoring a migrated one) with a reason that names the directory and the figures,
instead of starting something that fails half-written later (an overlay upper dir, a log, a
checkpoint image cut short by ENOSPC). Heartbeats carry the same reason to the scheduler, whose
placement leaves the node out (scheduler/placement/filters.py) until space frees; what already
runs goes on running. 0 turns the check off.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import AgentError


class DiskFull(AgentError):
    """Too little space left under the agent's root for new work (RESOURCE_EXHAUSTED)."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def pressure(root: Path, min_free_percent: float) -> str:
    """"" while at least min_free_percent of root's filesystem is free (for unprivileged users, as
    df's Avail); else why the node takes no new work."""
    if min_free_percent <= 0:
        return ""
    st = os.statvfs(root)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if total <= 0:
        return ""
    percent = 100.0 * free / total
    if percent >= min_free_percent:
        return ""
    return (f"disk almost full: {root} has {_size(free)} free of {_size(total)} ({percent:.1f} %), "
            f"below the {min_free_percent:g} % this agent keeps free (--min-free-disk)")


def refuse_if_full(root: Path, min_free_percent: float, what: str) -> None:
    why = pressure(root, min_free_percent)
    if why:
        raise DiskFull(f"cannot {what}: {why}")
