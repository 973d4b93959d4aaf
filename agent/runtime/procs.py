"""Small facts about processes, for the agent and every process it starts (the zygote, shim and
init import this: it must stay tiny): one process named by pid and start time, whether it still
runs, and DOCKYARD_TRACE time stamps."""

from __future__ import annotations

import contextlib
import os
import time

_TRACE = os.environ.get("DOCKYARD_TRACE")


def trace(what: str) -> None:
    """DOCKYARD_TRACE=FILE: time stamps of the start and exit path, for finding slow steps."""
    if _TRACE:
        with contextlib.suppress(OSError), open(_TRACE, "a") as f:
            f.write(f"{time.monotonic():.6f} {os.getpid()} {what}\n")


def pid_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: with the pid it names one process, even after pid reuse."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rindex(")") + 2:].split()[19])


def process_alive(pid: int, start_time: int) -> bool:
    """This very process (pid and start time) exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    rest = data[data.rindex(")") + 2:].split()
    return rest[0] not in ("Z", "X") and int(rest[19]) == start_time
