"""The container monitor: a small C program the shim execs once the container runs (monitor.c).

It is built from source on this host, beside the source, by `python -m agent.runtime.monitor`
(deploy/install.sh runs it) or by the agent at start when the binary is missing or older than
monitor.c. A build goes to a temporary name and is renamed into place, so agents starting
together never run a half-written binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("monitor.c")
BINARY = Path(__file__).with_name("dockyard-monitor")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2"]
LIBS = ["-lz"]  # zlib: compressed rotated logs (--log-opt compress=true)


class MonitorError(Exception):
    pass


def binary() -> str:
    """The monitor's path, built first if it is missing or stale."""
    if not _fresh():
        build()
    return str(BINARY)


def _fresh() -> bool:
    try:
        return BINARY.stat().st_mtime >= SOURCE.stat().st_mtime and os.access(BINARY, os.X_OK)
    except FileNotFoundError:
        return False


def build() -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise MonitorError(f"{BINARY} is not built and there is no C compiler (cc): run deploy/install.sh")
    fd, tmp = tempfile.mkstemp(prefix=".dockyard-monitor-", dir=BINARY.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS], capture_output=True, text=True)
        if r.returncode != 0:
            raise MonitorError(f"building {SOURCE} failed:\n{r.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.rename(tmp, BINARY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
