"""v1 cpuset: a new cpuset cgroup starts with no CPUs and no memory nodes; give it its parent's."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats


class CpuSet:
    name = "cpuset"

    def prepare(self, path: str) -> None:
        parent = os.path.dirname(path)
        for f in ("cpuset.cpus", "cpuset.mems"):
            mine = os.path.join(path, f)
            if not _fs.read(mine).strip():
                _fs.write(mine, _fs.read(os.path.join(parent, f)).strip())

    def apply(self, path: str, r: Resources) -> None:
        pass

    def stat(self, path: str, s: Stats) -> None:
        pass
