"""v1 cpu: CFS quota and period, shares, throttling counters."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats

DEFAULT_SHARES = 1024


class Cpu:
    name = "cpu"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        quota, period = r.cfs_quota()
        quota_file = os.path.join(path, "cpu.cfs_quota_us")
        # The kernel checks quota against the period: lift the quota before changing the period.
        _fs.write(quota_file, "-1")
        _fs.write(os.path.join(path, "cpu.cfs_period_us"), str(period))
        if quota != -1:
            _fs.write(quota_file, str(quota))
        _fs.write(os.path.join(path, "cpu.shares"), str(r.cpu_shares or DEFAULT_SHARES))

    def stat(self, path: str, s: Stats) -> None:
        cs = _fs.read_keyed(os.path.join(path, "cpu.stat"))
        s.nr_periods = cs.get("nr_periods", 0)
        s.nr_throttled = cs.get("nr_throttled", 0)
        s.throttled_ns = cs.get("throttled_time", 0)
