"""v1 cpuset: a new cpuset cgroup starts with no CPUs and no memory nodes; give it its parent's,
then the container's own (--cpuset-cpus, --cpuset-mems). Joined only by a container that sets one:
each v1 hierarchy joined costs an RCU-synchronised attach (see _v1/__init__.py)."""

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
        parent = os.path.dirname(path)
        for f, value in (("cpuset.cpus", r.cpuset_cpus), ("cpuset.mems", r.cpuset_mems)):
            _fs.write(os.path.join(path, f), value or _fs.read(os.path.join(parent, f)).strip())

    def stat(self, path: str, s: Stats) -> None:
        pass
