"""v2 cpu: cpu.max (quota and period in one file), cpu.weight converted from docker's shares."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats

DEFAULT_WEIGHT = 100


def shares_to_weight(shares: int) -> int:
    """runc's ConvertCPUSharesToCgroupV2Value: maps shares 2..262144 linearly onto weight 1..10000."""
    if shares == 0:
        return DEFAULT_WEIGHT
    return 1 + ((shares - 2) * 9999) // 262142


class Cpu:
    name = "cpu"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        quota, period = r.cfs_quota()
        _fs.write(os.path.join(path, "cpu.max"), f"{'max' if quota == -1 else quota} {period}")
        _fs.write(os.path.join(path, "cpu.weight"), str(shares_to_weight(r.cpu_shares)))

    def stat(self, path: str, s: Stats) -> None:
        # cpu.stat is a core file: usage is there even when the cpu controller is not enabled.
        cs = _fs.read_keyed(os.path.join(path, "cpu.stat"))
        s.cpu_usage_ns = cs.get("usage_usec", 0) * 1000
        s.cpu_user_ns = cs.get("user_usec", 0) * 1000
        s.cpu_system_ns = cs.get("system_usec", 0) * 1000
        s.nr_periods = cs.get("nr_periods", 0)
        s.nr_throttled = cs.get("nr_throttled", 0)
        s.throttled_ns = cs.get("throttled_usec", 0) * 1000
