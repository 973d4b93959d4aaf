"""GET /containers/{id}/stats: the same kernel reading as /metrics (agent/metrics.py), in Docker's keys."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from agent import metrics
from agent.model import Container
from agent.runtime.cgroups import CgroupError

from .convert import iso

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _system_cpu_ns() -> int:
    """All CPUs' time since boot in ns, as docker's system_cpu_usage (the first line of /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(x) for x in fields) * 1_000_000_000 // _CLK_TCK


def _empty_cpu() -> dict[str, Any]:
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


async def sample(manager: Any, c: Container, prev: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "/" + c.name, "id": c.id, "read": iso(time.time()),
        "preread": prev["read"] if prev else "0001-01-01T00:00:00Z",
        "pids_stats": {}, "blkio_stats": {"io_service_bytes_recursive": None}, "num_procs": 0,
        "storage_stats": {}, "cpu_stats": _empty_cpu(), "precpu_stats": prev["cpu_stats"] if prev else _empty_cpu(),
        "memory_stats": {}, "networks": {},
    }
    if c.state.status not in ("running", "paused"):
        return doc
    try:
        s = await asyncio.to_thread(metrics.read_container, manager, c)
    except (OSError, CgroupError):
        return doc   # it exited a moment ago: docker sends the empty reading too
    st = s.stats
    doc["pids_stats"] = {"current": st.pids_current, **({"limit": st.pids_limit} if st.pids_limit else {})}
    doc["blkio_stats"] = {"io_service_bytes_recursive": [
        {"major": 0, "minor": 0, "op": "read", "value": st.blkio_read_bytes},
        {"major": 0, "minor": 0, "op": "write", "value": st.blkio_write_bytes}]}
    doc["cpu_stats"] = {
        "cpu_usage": {"total_usage": st.cpu_usage_ns, "usage_in_kernelmode": st.cpu_system_ns,
                      "usage_in_usermode": st.cpu_user_ns},
        "system_cpu_usage": _system_cpu_ns(), "online_cpus": os.cpu_count() or 1,
        "throttling_data": {"periods": st.nr_periods, "throttled_periods": st.nr_throttled,
                            "throttled_time": st.throttled_ns},
    }
    limit = st.memory_limit or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    doc["memory_stats"] = {"usage": st.memory_usage, "max_usage": st.memory_max_usage, "limit": limit,
                           "failcnt": 0, "stats": {"rss": st.memory_rss, "cache": st.memory_cache,
                                                   "total_inactive_file": max(0, st.memory_usage - st.working_set)}}
    doc["networks"] = {name: {"rx_bytes": i.rx_bytes, "rx_packets": i.rx_packets, "rx_errors": i.rx_errors,
                              "rx_dropped": i.rx_dropped, "tx_bytes": i.tx_bytes, "tx_packets": i.tx_packets,
                              "tx_errors": i.tx_errors, "tx_dropped": i.tx_dropped}
                       for name, i in s.interfaces.items()}
    return doc
