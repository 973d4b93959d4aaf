"""A task's secrets and configs, as files on a tmpfs of this node (never on its disk).

The scheduler's dispatcher sends only where each file goes (ContainerConfig.task_files); at create
the agent fetches the data of that one task from the scheduler (Scheduler.TaskFiles, which answers
only the node the task is placed on) and writes it here:

    <root>/taskfiles/<container id>/     a tmpfs (mode 0700, nosuid, nodev, noexec), one per container
        0, 1, ...                        one per file of the task (a secret used twice with two modes
                                         is two files), with its uid, gid and mode

Each file is bind-mounted read-only at its target in the container (agent/runtime/mounts.py, as
any bind), so the container sees /run/secrets/NAME but nothing of it is in its writable layer (an
`export` or `commit` has at most an empty mount point). The tmpfs outlives an agent restart with the
container, and is unmounted when the container is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from agent.model import InvalidArgument, TaskFile
from agent.runtime import syscalls as sc
from agent.runtime.spec import ContainerMount, mount_key

KINDS = ("secret", "config")
# Room for a task's files: docker's limit is 500 KiB an object; a tmpfs only uses what it holds.
TMPFS_SIZE = 64 << 20


def check(files: list[TaskFile]) -> None:
    """At create, before anything is made: every file's kind, name and target."""
    targets: set[str] = set()
    for f in files:
        if f.kind not in KINDS:
            raise InvalidArgument(f"task file {f.name!r}: kind {f.kind!r} is not secret or config")
        if not f.name or "/" in f.name or f.name in (".", ".."):
            raise InvalidArgument(f"invalid {f.kind} name {f.name!r}")
        if not f.target.startswith("/") or os.path.normpath(f.target) != f.target or f.target == "/":
            raise InvalidArgument(f"{f.kind} {f.name}: target {f.target!r} is not a clean absolute path")
        if f.target in targets:
            raise InvalidArgument(f"{f.kind} {f.name}: two files at {f.target}")
        targets.add(f.target)
        if not 0 <= f.mode <= 0o7777:
            raise InvalidArgument(f"{f.kind} {f.name}: mode {f.mode:o} is out of range")


class TaskFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def write(self, cid: str, files: list[TaskFile], data: Mapping[tuple[str, str], bytes]) -> None:
        """Mount the container's tmpfs and write its files; on any error nothing is left."""
        missing = [f"{f.kind} {f.name}" for f in files if (f.kind, f.name) not in data]
        if missing:
            raise InvalidArgument(f"the scheduler sent no data for {', '.join(missing)}")
        d = self.dir(cid)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.mkdir(mode=0o700)
        try:
            sc.mount("tmpfs", str(d), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                     f"mode=0700,size={TMPFS_SIZE}")
            for i, f in enumerate(files):
                fd = os.open(d / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
                try:
                    blob = memoryview(data[(f.kind, f.name)])
                    while blob:
                        blob = blob[os.write(fd, blob):]
                    os.fchown(fd, f.uid, f.gid)
                    os.fchmod(fd, f.mode)
                finally:
                    os.close(fd)
        except BaseException:
            self.remove(cid)
            raise

    def mounts(self, cid: str, files: list[TaskFile]) -> list[ContainerMount]:
        d = self.dir(cid)
        return [ContainerMount("bind", str(d / str(i)), f.target, readonly=True, key=mount_key(f.target))
                for i, f in enumerate(files)]

    def remove(self, cid: str) -> None:
        d = self.dir(cid)
        while os.path.ismount(d):
            try:
                sc.umount(str(d), 0)
            except OSError:
                sc.umount(str(d), sc.MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(d)  # the mount point (files are only ever written on the tmpfs)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every container's tmpfs but those of `keep` (container ids); returns the removed."""
        gone = []
        with contextlib.suppress(FileNotFoundError):
            for d in self.root.iterdir():
                if d.name not in keep:
                    self.remove(d.name)
                    gone.append(d.name)
        return gone
