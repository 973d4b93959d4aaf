"""v1 memory: limit, memory+swap limit in the order the kernel accepts, usage, OOM kills."""

from __future__ import annotations

import errno
import logging
import os

from .. import _fs
from .._errors import CgroupError
from .._resources import Resources, Stats

log = logging.getLogger(__name__)


def _limit(v: int) -> int:
    return 0 if v >= _fs.UNLIMITED_V1 else v


class Memory:
    name = "memory"

    def prepare(self, path: str) -> None:
        # Always 1 on kernels >= 5.x (writing 0 is deprecated); older kernels default to 0, and
        # the write fails with EINVAL when a sibling or the parent already fixed it: not our call.
        f = os.path.join(path, "memory.use_hierarchy")
        if _fs.exists(f) and _fs.read(f).strip() == "0":
            try:
                _fs.write(f, "1")
            except CgroupError as e:
                if e.errno not in (errno.EINVAL, errno.EBUSY, errno.EPERM):
                    raise

    def apply(self, path: str, r: Resources) -> None:
        if r.memory_swappiness >= 0:  # (-1: left as the new cgroup inherited it from its parent)
            _fs.write(os.path.join(path, "memory.swappiness"), str(r.memory_swappiness))
        limit_file = os.path.join(path, "memory.limit_in_bytes")
        memsw_file = os.path.join(path, "memory.memsw.limit_in_bytes")
        memory = r.memory or -1
        if not _fs.exists(memsw_file):
            if r.memory_swap > 0 or (r.memory and r.memory_swap == 0):
                log.warning("%s: no swap accounting in this kernel; memory_swap ignored", path)
            _fs.write(limit_file, str(memory))
            return
        memsw = r.swap_total()
        # The kernel keeps memory <= memory+swap at every instant: raising, memsw must move first;
        # lowering, memory must. Comparing the new memsw with the current memory limit picks the
        # order that never breaks the rule in between (runc's setMemoryAndSwap does the same).
        current = _fs.read_int(limit_file)
        if memsw == -1 or memsw >= current:
            _fs.write(memsw_file, str(memsw))
            _fs.write(limit_file, str(memory))
        else:
            _fs.write(limit_file, str(memory))
            _fs.write(memsw_file, str(memsw))

    def stat(self, path: str, s: Stats) -> None:
        s.memory_usage = _fs.read_int(os.path.join(path, "memory.usage_in_bytes"))
        s.memory_max_usage = _fs.read_int(os.path.join(path, "memory.max_usage_in_bytes"))
        s.memory_limit = _limit(_fs.read_int(os.path.join(path, "memory.limit_in_bytes")))
        ms = _fs.read_keyed(os.path.join(path, "memory.stat"))
        s.memory_rss = ms.get("total_rss", ms.get("rss", 0))
        s.memory_cache = ms.get("total_cache", ms.get("cache", 0))
        inactive = ms.get("total_inactive_file", ms.get("inactive_file", 0))
        s.working_set = max(0, s.memory_usage - inactive)
        s.oom_kills = oom_kills(path)


def oom_kills(path: str) -> int:
    return _fs.read_keyed(os.path.join(path, "memory.oom_control")).get("oom_kill", 0)
