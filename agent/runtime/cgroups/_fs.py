"""cgroupfs file access shared by both drivers: every failure becomes a CgroupError naming op and path.

Writes open the file without O_CREAT: a file the kernel does not provide is an error (ENOENT), never
silently created, which also keeps the v2 tests' fake tree honest.
"""

from __future__ import annotations

import errno as errno_mod
import os
import signal
import stat
import time
from collections.abc import Callable, Iterable

from ._errors import CgroupError

UNLIMITED_V1 = 0x7FFFFFFFFFFFF000  # what v1 reports for "no limit" (PAGE_COUNTER_MAX pages, rounded)


def _error(op: str, path: str, e: OSError) -> CgroupError:
    return CgroupError(f"{op} {path}: {e.strerror or e}", op=op, path=path, errno=e.errno)


def read(path: str) -> str:
    # os.read on a raw descriptor: a scrape reads a dozen files per container, and the buffered
    # text-mode open() costs about a third more CPU per scrape (tests/bench/bench_metrics.py).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _error("read", path, e) from e
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except OSError as e:
        raise _error("read", path, e) from e
    finally:
        os.close(fd)


def read_int(path: str) -> int:
    text = read(path).strip()
    if text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        raise CgroupError(f"read {path}: {text!r} is not a number", op="read", path=path) from None


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file ("key value" per line) such as memory.stat, cpu.stat, memory.events."""
    out: dict[str, int] = {}
    for line in read(path).splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def write(path: str, value: str) -> None:
    """One write(2) of value: cgroupfs applies each write as one command."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as e:
        raise _error(f"write {value!r} to", path, e) from e
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise _error(f"write {value!r} to", path, e) from e
    finally:
        os.close(fd)


def exists(path: str) -> bool:
    return os.path.exists(path)


def mkdir(path: str) -> bool:
    """Make one directory; True if it was made now, False if it was there."""
    try:
        os.mkdir(path, 0o755)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise _error("mkdir", path, e) from e


def remove_dir(path: str) -> None:
    """rmdir(2) of a cgroup; cgroupfs removes the interface files with it. Tests on a fake tree patch this."""
    os.rmdir(path)


def rmdir(path: str, *, timeout: float = 2.0) -> None:
    """Remove a cgroup directory and its child cgroups, deepest first.

    EBUSY right after the last task left is normal (the kernel drops its css references
    asynchronously), so it is retried for a short while, as runc does.
    """
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            rmdir(entry.path, timeout=timeout)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            remove_dir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno_mod.EBUSY or time.monotonic() >= deadline:
                raise _error("rmdir", path, e) from e
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pids_in(path: str) -> set[int]:
    """Processes in a cgroup and all its child cgroups (cgroup.procs lists only its own)."""
    out: set[int] = set()
    if not os.path.isdir(path):
        return out
    for dirpath, _dirnames, _files in os.walk(path):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                out.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _error("read", os.path.join(dirpath, "cgroup.procs"), e) from e
    return out


def signal_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_all(list_pids: Callable[[], Iterable[int]], where: str, *, timeout: float = 5.0) -> None:
    """SIGKILL every process list_pids() names until none is left.

    Repeats because a process may fork between the listing and the kill; callers freeze the
    cgroup first where they can, which stops that race altogether. Zombies are not listed
    (they left the cgroup when they exited), so waiting never depends on someone reaping them.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        pids = list(list_pids())
        if not pids:
            return
        signal_all(pids)
        if time.monotonic() >= deadline:
            raise CgroupError(
                f"kill processes in {where}: {len(pids)} still there after {timeout:.0f}s ({pids[:10]})",
                op="kill",
                path=where,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def block_device(field: str, path: str) -> tuple[int, int]:
    """major, minor of a block device path (throttle files take numbers, users give paths)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise CgroupError(
            f"{field}: stat {path}: {e.strerror}", op="stat", path=path, errno=e.errno, field=field
        ) from e
    if not stat.S_ISBLK(st.st_mode):
        raise CgroupError(f"{field}: {path} is not a block device", op="stat", path=path, field=field)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def poll(check: Callable[[], bool], *, timeout: float, what: str, path: str) -> None:
    """Wait until check() is true, or raise CgroupError naming what did not happen."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not check():
        if time.monotonic() >= deadline:
            raise CgroupError(f"{what} {path}: timed out after {timeout:g}s", op=what, path=path)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
