"""Seed CRIU's kernel-feature cache (/run/criu.kdat) on hosts whose /run is not a tmpfs.

Every criu run first probes what the kernel can do (about 30 ms here: it forks helpers, maps the
vDSO, tries syscalls) unless it finds that cache. criu writes the cache only onto a tmpfs, so that a
reboot into another kernel cannot leave a stale one; where /run is a plain directory (this machine's
sandbox) it probes every time, and a live migration runs criu three times on its critical path.

We make the same file criu would make, with criu itself (`criu check` in a private mount namespace
whose /run is a tmpfs), and keep criu's rule by other means: a cache older than the last boot is
made again. criu only reads it then (it checks its magic numbers).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("dockyard.agent.criu")

KDAT_CACHE = Path("/run/criu.kdat")
# The shell runs in its own mount namespace: the tmpfs on /run is seen by it and criu alone.
_MAKE = 'mount -t tmpfs -o size=1m dockyard-criu-kdat /run && "$0" check >/dev/null 2>&1; cat /run/criu.kdat'


def run_is_tmpfs(mountinfo: str | None = None) -> bool:
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    fstype = ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/run" and " - " in line:
            fstype = line.split(" - ", 1)[1].split()[0]  # the last mount on /run wins
    return fstype == "tmpfs"


def boot_time(stat: str | None = None) -> float:
    if stat is None:
        stat = Path("/proc/stat").read_text()
    for line in stat.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def seed(criu_path: str, cache: Path = KDAT_CACHE) -> str:
    """Make the cache if criu would not keep one here and there is none from this boot; says what it did."""
    if run_is_tmpfs():
        return "criu keeps its own cache (/run is a tmpfs)"
    try:
        if cache.stat().st_mtime >= boot_time():
            return f"{cache} is from this boot"
    except FileNotFoundError:
        pass
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _MAKE, criu_path],
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"no kdat cache: {e}"
    if proc.returncode != 0 or not proc.stdout:
        return f"no kdat cache: criu check in a private /run made none ({proc.stderr.decode(errors='replace')[-200:]})"
    tmp = cache.with_name(f".{cache.name}.dockyard-{os.getpid()}")
    tmp.write_bytes(proc.stdout)
    os.chmod(tmp, 0o600)
    os.rename(tmp, cache)
    log.info("seeded criu's kernel-feature cache %s (/run is not a tmpfs, so criu would probe on every run)", cache)
    return f"seeded {cache}"
