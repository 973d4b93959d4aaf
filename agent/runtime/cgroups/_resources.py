"""Resource limits and usage statistics as plain data; all validation lives in Resources.validate.

The meaning of every field follows docker's flags of the same name, so the CLI can pass them
through unchanged. A Resources value is the whole desired configuration: update() applies every
field, and 0 means "unlimited" or "kernel default", never "leave as it is" (merging a partial
`docker update` into the current value is the caller's job).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ._devices import DEFAULT_DEVICE_RULES, DeviceRule
from ._errors import CgroupError

MIB = 1024 * 1024
# docker's linuxMinMemory: below this a container cannot even start its init.
MIN_MEMORY = 6 * MIB
# The CFS quota must be at least 1 ms of the 100 ms period, so --cpus 0.01 is the smallest.
CFS_PERIOD_US = 100_000
MIN_NANO_CPUS = 10_000_000
# Kernel bounds of cpu.shares (MIN_SHARES, MAX_SHARES in kernel/sched/sched.h).
MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262_144
MIN_BLKIO_WEIGHT = 10
MAX_BLKIO_WEIGHT = 1000


@dataclass(frozen=True)
class DeviceRate:
    """A throttle on one block device: path (e.g. /dev/vda) and bytes per second."""

    path: str
    rate: int


@dataclass(frozen=True)
class Resources:
    memory: int = 0
    """bytes; 0 = unlimited"""
    memory_swap: int = 0
    """bytes of memory+swap (docker's --memory-swap); 0 = 2x memory when memory is set; -1 = unlimited"""
    nano_cpus: int = 0
    """CPUs x 1e9 (--cpus 0.5 == 500_000_000); 0 = unlimited"""
    cpu_shares: int = 0
    """relative weight (--cpu-shares); 0 = kernel default"""
    pids_limit: int = 0
    """0 = unlimited"""
    blkio_weight: int = 0
    """10..1000; 0 = kernel default"""
    device_read_bps: tuple[DeviceRate, ...] = ()
    device_write_bps: tuple[DeviceRate, ...] = ()
    devices: tuple[DeviceRule, ...] = DEFAULT_DEVICE_RULES
    """what the container may open (all else is denied); docker's default unless told otherwise"""
    cpuset_cpus: str = ""
    """CPUs the container may run on, the kernel's list syntax ("0-2,5"); "" = its parent's"""
    cpuset_mems: str = ""
    """memory nodes (NUMA) it may allocate from, the same syntax; "" = its parent's"""
    memory_swappiness: int = -1
    """0..100, how eagerly the kernel swaps its anonymous pages (v1 only); -1 = its parent's"""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resources:
        """From its JSON (dumps of a Resources: a container's record, a runtime spec); keys this
        version does not know are ignored, and a record written before device rules gets docker's."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("device_read_bps", "device_write_bps"):
            kw[key] = tuple(DeviceRate(str(r["path"]), int(r["rate"])) for r in kw.get(key, ()))
        if "devices" in kw:
            kw["devices"] = tuple(DeviceRule(**r) for r in kw["devices"])
        return cls(**kw)

    def validate(self) -> None:
        """Raise CgroupError naming the first bad field, with docker's rules."""
        if self.memory < 0:
            _bad("memory", f"{self.memory} is negative (use 0 for unlimited)")
        if 0 < self.memory < MIN_MEMORY:
            _bad("memory", f"{self.memory} is below the minimum of 6 MiB")
        if self.memory_swap < -1:
            _bad("memory_swap", f"{self.memory_swap} is invalid (use -1 for unlimited swap)")
        if self.memory_swap > 0:
            if self.memory == 0:
                _bad("memory_swap", "needs memory to be set as well")
            if self.memory_swap < self.memory:
                _bad(
                    "memory_swap",
                    f"{self.memory_swap} is below memory {self.memory} (it counts memory plus swap)",
                )
        if self.nano_cpus < 0:
            _bad("nano_cpus", f"{self.nano_cpus} is negative (use 0 for unlimited)")
        if 0 < self.nano_cpus < MIN_NANO_CPUS:
            _bad("nano_cpus", f"{self.nano_cpus} is below the minimum of 0.01 CPU ({MIN_NANO_CPUS})")
        if self.cpu_shares != 0 and not MIN_CPU_SHARES <= self.cpu_shares <= MAX_CPU_SHARES:
            _bad("cpu_shares", f"{self.cpu_shares} is outside {MIN_CPU_SHARES}..{MAX_CPU_SHARES}")
        if self.pids_limit < 0:
            _bad("pids_limit", f"{self.pids_limit} is negative (use 0 for unlimited)")
        if self.blkio_weight != 0 and not MIN_BLKIO_WEIGHT <= self.blkio_weight <= MAX_BLKIO_WEIGHT:
            _bad("blkio_weight", f"{self.blkio_weight} is outside {MIN_BLKIO_WEIGHT}..{MAX_BLKIO_WEIGHT}")
        for field, rates in (
            ("device_read_bps", self.device_read_bps),
            ("device_write_bps", self.device_write_bps),
        ):
            seen: set[str] = set()
            for d in rates:
                if not d.path.startswith("/"):
                    _bad(field, f"{d.path!r} is not an absolute device path")
                if d.rate <= 0:
                    _bad(field, f"{d.path}: rate {d.rate} must be a positive number of bytes per second")
                if d.path in seen:
                    _bad(field, f"{d.path} is listed twice")
                seen.add(d.path)
        for rule in self.devices:
            rule.validate()
        for field, text in (("cpuset_cpus", self.cpuset_cpus), ("cpuset_mems", self.cpuset_mems)):
            if text:
                parse_cpu_list(text, field)
        if not -1 <= self.memory_swappiness <= 100:
            _bad("memory_swappiness", f"{self.memory_swappiness} is outside 0..100 (or -1 for the default)")

    def needs_cpuset(self) -> bool:
        return bool(self.cpuset_cpus or self.cpuset_mems)

    def swap_total(self) -> int:
        """memory+swap in bytes as the kernel should get it; -1 = unlimited."""
        if self.memory == 0 or self.memory_swap == -1:
            return -1
        if self.memory_swap == 0:
            return 2 * self.memory  # docker's default: as much swap as memory
        return self.memory_swap

    def cfs_quota(self) -> tuple[int, int]:
        """(quota_us, period_us); quota -1 = unlimited."""
        if self.nano_cpus == 0:
            return -1, CFS_PERIOD_US
        return self.nano_cpus * CFS_PERIOD_US // 1_000_000_000, CFS_PERIOD_US


def parse_cpu_list(text: str, field: str = "cpuset_cpus") -> list[int]:
    """The kernel's list syntax ("0-3,7"; cpuset.cpus, cpuset.mems): the numbers it names, sorted.
    Raises CgroupError naming the field (docker's own words: "invalid value ... for cpuset cpus")."""
    out: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            _bad(field, f"invalid value {text!r}: expected a list like 0-3,7")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            _bad(field, f"invalid value {text!r}: range {part} goes backwards")
        if b >= 1 << 16:
            _bad(field, f"invalid value {text!r}: {b} is too large")
        out.update(range(a, b + 1))
    return sorted(out)


def check_available(field: str, wanted: str, available: str) -> None:
    """docker's "Requested CPUs are not available": every CPU (or node) of `wanted` in `available`."""
    if not wanted:
        return
    available = available.strip()
    have = set(parse_cpu_list(available, field)) if available else set()
    if not set(parse_cpu_list(wanted, field)) <= have:
        _bad(field, f"requested {wanted} are not available - available: {available or 'none'}")


def _bad(field: str, why: str) -> None:
    raise CgroupError(f"{field}: {why}", op="validate", field=field)


@dataclass
class Stats:
    """What the kernel says now. Limits of 0 mean unlimited, as in Resources."""

    cpu_usage_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    nr_periods: int = 0
    nr_throttled: int = 0
    throttled_ns: int = 0
    memory_usage: int = 0
    memory_max_usage: int = 0
    memory_limit: int = 0
    memory_rss: int = 0
    memory_cache: int = 0
    working_set: int = 0
    """usage minus inactive file pages, as cAdvisor and the kubelet count it"""
    pids_current: int = 0
    pids_limit: int = 0
    oom_kills: int = 0
    blkio_read_bytes: int = 0
    blkio_write_bytes: int = 0
