"""The cgroup v2 driver: one directory per container, controllers enabled down the tree."""

from __future__ import annotations

import errno
import logging
import os

from .. import _fs
from .._driver import CgroupDriver, Controller
from .._errors import CgroupError
from .._resources import Resources, Stats, check_available
from . import memory
from .cpu import Cpu
from .cpuset import CpuSet
from .devices import Devices
from .io import Io
from .memory import Memory
from .pids import Pids

log = logging.getLogger(__name__)

CONTROLLERS: tuple[Controller, ...] = (Memory(), Cpu(), Pids(), Io(), CpuSet())
# Device rules are a BPF program on the cgroup, whatever controllers it has: applied to every one.
DEVICES = Devices()


def _needs(r: Resources) -> set[str]:
    """Controllers whose files must exist for r to be applied (defaults can be skipped without them)."""
    out = set()
    if r.memory or r.memory_swap:
        out.add("memory")
    if r.nano_cpus or r.cpu_shares:
        out.add("cpu")
    if r.pids_limit:
        out.add("pids")
    if r.blkio_weight or r.device_read_bps or r.device_write_bps:
        out.add("io")
    if r.needs_cpuset():
        out.add("cpuset")
    return out


class V2Driver(CgroupDriver):
    """root is the cgroup2 mount; base the directory the parent lives in (root or the agent's own cgroup)."""

    version = 2

    def __init__(self, root: str, base: str, parent: str, *, freeze_timeout: float = 10.0) -> None:
        self.root = root.rstrip("/") or "/"
        self.base = base
        self.parent = parent.strip("/")
        self.freeze_timeout = freeze_timeout

    def _path(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise CgroupError(f"cgroup name {name!r} must be one path component", op="lookup", field="name")
        return os.path.join(self.base, self.parent, name)

    def _parent_dir(self) -> str:
        return os.path.join(self.base, self.parent)

    def _enabled(self, path: str) -> list[Controller]:
        """Controllers this cgroup has (what its parent delegated to it)."""
        have = set(_fs.read(os.path.join(path, "cgroup.controllers")).split())
        return [c for c in CONTROLLERS if c.name in have]

    def paths(self, name: str) -> dict[str, str]:
        """Every controller maps to the one directory; "unified" is always there, even with none enabled."""
        d = self._path(name)
        return {"unified": d, **{c.name: d for c in CONTROLLERS}}

    def check(self, resources: Resources) -> None:
        resources.validate()
        if resources.memory_swappiness != -1:
            # cgroup v2 has no memory.swappiness; docker on v2 drops the setting with a warning,
            # dockyard refuses it rather than accept and ignore it
            raise CgroupError("memory_swappiness: not supported with cgroup v2 (the kernel has no "
                              "per-cgroup swappiness there)", op="validate", field="memory_swappiness")
        if resources.needs_cpuset():
            for field, wanted, f in (("cpuset_cpus", resources.cpuset_cpus, "cpuset.cpus.effective"),
                                     ("cpuset_mems", resources.cpuset_mems, "cpuset.mems.effective")):
                eff = os.path.join(self.root, f)
                if wanted and _fs.exists(eff):
                    check_available(field, wanted, _fs.read(eff))

    # lifecycle
    def create(self, name: str, resources: Resources) -> None:
        self.check(resources)
        path = self._path(name)
        made: list[str] = []
        try:
            self._delegate(made)
            if _fs.mkdir(path):
                made.append(path)
            self._apply(path, resources)
        except BaseException:
            for d in reversed(made):
                try:
                    _fs.rmdir(d)
                except CgroupError as e:
                    log.warning("create %s: cleanup: %s", name, e)
            raise

    def _delegate(self, made: list[str]) -> None:
        """Make the parent and enable our controllers in cgroup.subtree_control of every level from
        the mount root down to the parent, so the container's cgroup gets their files.

        The kernel refuses (EBUSY) to enable controllers below a non-root cgroup that has
        processes of its own ("no internal processes"): an agent nested under its own cgroup on v2
        must live in a leaf of it, and the error says which directory is in the way.
        """
        wanted = [c.name for c in CONTROLLERS]
        rel = os.path.relpath(self._parent_dir(), self.root)
        levels = [self.root]
        for part in [] if rel == "." else rel.split("/"):
            levels.append(os.path.join(levels[-1], part))
        for i, level in enumerate(levels):
            if i > 0 and _fs.mkdir(level):
                made.append(level)
            have = set(_fs.read(os.path.join(level, "cgroup.controllers")).split())
            sc = os.path.join(level, "cgroup.subtree_control")
            on = {x.lstrip("+") for x in _fs.read(sc).split()}
            add = [n for n in wanted if n in have and n not in on]
            if add:
                try:
                    _fs.write(sc, " ".join("+" + n for n in add))
                except CgroupError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    raise CgroupError(
                        f"{e} (a cgroup with processes of its own cannot delegate controllers: run the "
                        "agent in a leaf cgroup, or give detect() a parent outside its cgroup)",
                        op=e.op,
                        path=e.path,
                        errno=e.errno,
                    ) from e

    def update(self, name: str, resources: Resources) -> None:
        self.check(resources)
        path = self._path(name)
        self._require(path)
        self._apply(path, resources)

    def _apply(self, path: str, resources: Resources) -> None:
        enabled = self._enabled(path)
        missing = _needs(resources) - {c.name for c in enabled}
        if missing:
            raise CgroupError(
                f"apply {path}: controllers {', '.join(sorted(missing))} are not enabled for this cgroup",
                op="apply",
                path=path,
            )
        for c in enabled:
            c.apply(path, resources)
        DEVICES.apply(path, resources)

    def add_process(self, name: str, pid: int) -> None:
        path = self._path(name)
        self._require(path)
        _fs.write(os.path.join(path, "cgroup.procs"), str(pid))

    def procs(self, name: str) -> list[int]:
        return sorted(_fs.pids_in(self._path(name)))

    def exists(self, name: str) -> bool:
        return os.path.isdir(self._path(name))

    def destroy(self, name: str) -> None:
        path = self._path(name)
        if not os.path.isdir(path):
            return
        kill = os.path.join(path, "cgroup.kill")
        if _fs.exists(kill):
            # Linux >= 5.14: the kernel kills the whole subtree, frozen tasks included, with no
            # fork race.
            _fs.write(kill, "1")
        else:
            try:
                self._set_frozen(path, True, min(self.freeze_timeout, 1.0))
            except CgroupError as e:
                log.warning("destroy %s: could not freeze first: %s", name, e)
            _fs.signal_all(self.procs(name))
            self._set_frozen(path, False, self.freeze_timeout)
        _fs.kill_all(lambda: self.procs(name), path)
        _fs.rmdir(path)

    def list(self) -> list[str]:
        d = self._parent_dir()
        if not os.path.isdir(d):
            return []
        return sorted(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))

    # freezer: core files in v2, no controller to enable
    def freeze(self, name: str) -> None:
        path = self._path(name)
        self._require(path)
        self._set_frozen(path, True, self.freeze_timeout)

    def thaw(self, name: str) -> None:
        path = self._path(name)
        self._require(path)
        self._set_frozen(path, False, self.freeze_timeout)

    def frozen(self, name: str) -> bool:
        return self._events(self._path(name)).get("frozen", 0) == 1

    def _events(self, path: str) -> dict[str, int]:
        return _fs.read_keyed(os.path.join(path, "cgroup.events"))

    def _set_frozen(self, path: str, on: bool, timeout: float) -> None:
        _fs.write(os.path.join(path, "cgroup.freeze"), "1" if on else "0")
        want = 1 if on else 0
        _fs.poll(
            lambda: self._events(path).get("frozen", 0) == want,
            timeout=timeout,
            what="freeze" if on else "thaw",
            path=os.path.join(path, "cgroup.events"),
        )

    # numbers
    def stats(self, name: str) -> Stats:
        path = self._path(name)
        self._require(path)
        s = Stats()
        enabled = {c.name for c in self._enabled(path)}
        for c in CONTROLLERS:
            if c.name in enabled or c.name == "cpu":  # cpu.stat exists without the controller
                c.stat(path, s)
        return s

    def oom_kills(self, name: str) -> int:
        return memory.oom_kills(self._path(name))

    def _require(self, path: str) -> None:
        if not os.path.isdir(path):
            raise CgroupError(f"cgroup {path} does not exist", op="lookup", path=path)
