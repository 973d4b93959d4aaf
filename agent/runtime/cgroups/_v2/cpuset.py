"""v2 cpuset: cpuset.cpus and cpuset.mems ("" = every CPU and node the parent has, the kernel's
default); unlike v1 a new cgroup needs no copy of its parent's to be usable."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats


class CpuSet:
    name = "cpuset"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        for f, value in (("cpuset.cpus", r.cpuset_cpus), ("cpuset.mems", r.cpuset_mems)):
            if value:  # (unset: the new cgroup's "", all of its parent's)
                _fs.write(os.path.join(path, f), value)

    def stat(self, path: str, s: Stats) -> None:
        pass
