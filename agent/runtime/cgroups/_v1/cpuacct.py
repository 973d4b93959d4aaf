"""v1 cpuacct: CPU time used, in total and split into user and system."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats


class CpuAcct:
    name = "cpuacct"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        pass

    def stat(self, path: str, s: Stats) -> None:
        s.cpu_usage_ns = _fs.read_int(os.path.join(path, "cpuacct.usage"))
        user = os.path.join(path, "cpuacct.usage_user")
        if _fs.exists(user):
            s.cpu_user_ns = _fs.read_int(user)
            s.cpu_system_ns = _fs.read_int(os.path.join(path, "cpuacct.usage_sys"))
        else:  # older kernels: only clock ticks
            ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            st = _fs.read_keyed(os.path.join(path, "cpuacct.stat"))
            s.cpu_user_ns = st.get("user", 0) * ns_per_tick
            s.cpu_system_ns = st.get("system", 0) * ns_per_tick
