"""v2 memory: memory.max, memory.swap.max (swap alone, unlike v1's memory+swap), usage, OOM kills."""

from __future__ import annotations

import logging
import os

from .. import _fs
from .._resources import Resources, Stats

log = logging.getLogger(__name__)


def swap_max(r: Resources) -> str:
    """docker's --memory-swap counts memory plus swap; v2's memory.swap.max counts swap only."""
    total = r.swap_total()
    return "max" if total == -1 else str(total - r.memory)


class Memory:
    name = "memory"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        swap = os.path.join(path, "memory.swap.max")
        if _fs.exists(swap):
            # No ordering rule in v2 (the limits are independent); runc writes swap first too.
            _fs.write(swap, swap_max(r))
        elif r.memory_swap > 0 or (r.memory and r.memory_swap == 0):
            log.warning("%s: no memory.swap.max (swap accounting off); memory_swap ignored", path)
        _fs.write(os.path.join(path, "memory.max"), str(r.memory) if r.memory else "max")

    def stat(self, path: str, s: Stats) -> None:
        s.memory_usage = _fs.read_int(os.path.join(path, "memory.current"))
        peak = os.path.join(path, "memory.peak")  # since Linux 5.19
        s.memory_max_usage = _fs.read_int(peak) if _fs.exists(peak) else 0
        s.memory_limit = _fs.read_int(os.path.join(path, "memory.max"))
        ms = _fs.read_keyed(os.path.join(path, "memory.stat"))
        s.memory_rss = ms.get("anon", 0)
        s.memory_cache = ms.get("file", 0)
        s.working_set = max(0, s.memory_usage - ms.get("inactive_file", 0))
        s.oom_kills = oom_kills(path)


def oom_kills(path: str) -> int:
    return _fs.read_keyed(os.path.join(path, "memory.events")).get("oom_kill", 0)
