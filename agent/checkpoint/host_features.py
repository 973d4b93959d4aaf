"""What a process restored here from another host may need of this host: kernel, architecture, CPU.

A dumped process keeps using the instructions it picked at start (glibc's ifuncs, a JIT, numpy's
dispatch all test CPUID once), so on a CPU without one of them it dies of SIGILL after the move.
CRIU itself compares only the FPU/xsave state by default (`--cpu-cap=fpu`), at restore time, when
the downtime has started. The scheduler compares these lists before it picks live instead.

Only the instruction-set flags of /proc/cpuinfo are kept: the rest (bugs, "constant_tsc",
virtualisation details) say nothing about what user code may execute.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass

# x86 flags user space dispatches on (and the xsave features whose state CRIU restores).
X86_USER_FLAGS = frozenset({
    "fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "cx16",
    "popcnt", "movbe", "lahf_lm", "abm", "aes", "pclmulqdq", "avx", "avx2", "f16c", "fma", "bmi1", "bmi2",
    "adx", "rdrand", "rdseed", "sha_ni", "erms", "fsrm", "xsave", "xsaveopt", "xsavec", "xsaves", "pku",
    "ospke", "clflushopt", "clwb", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma",
    "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "vaes", "vpclmulqdq", "gfni", "movdiri", "movdir64b", "serialize",
    "amx_tile", "amx_bf16", "amx_int8",
})
# arm64 hwcaps (/proc/cpuinfo "Features") are all about user-visible instructions.
_FLAG_LINE = re.compile(r"^(flags|Features)\s*:\s*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class HostFeatures:
    kernel: str
    arch: str
    cpu_features: tuple[str, ...]


def cpu_features(cpuinfo: str, arch: str) -> tuple[str, ...]:
    """The flags every CPU of this host has (a process may be scheduled on any of them)."""
    common: set[str] | None = None
    for m in _FLAG_LINE.finditer(cpuinfo):
        flags = set(m.group(2).split())
        common = flags if common is None else common & flags
    if common is None:
        return ()
    if arch in ("x86_64", "i686", "i386"):
        common &= X86_USER_FLAGS
    return tuple(sorted(common))


def probe() -> HostFeatures:
    arch = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    return HostFeatures(kernel=os.uname().release, arch=arch, cpu_features=cpu_features(info, arch))

