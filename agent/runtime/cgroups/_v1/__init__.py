"""The cgroup v1 driver: one directory per controller hierarchy, one small module per controller."""

from __future__ import annotations

import logging
import os

from .. import _fs
from .._driver import CgroupDriver, Controller
from .._errors import CgroupError
from .._resources import Resources, Stats, check_available
from . import freezer, memory
from .blkio import Blkio
from .cpu import Cpu
from .cpuacct import CpuAcct
from .cpuset import CpuSet
from .devices import Devices
from .freezer import Freezer
from .memory import Memory
from .pids import Pids

log = logging.getLogger(__name__)

# The controllers every container joins. cpuset is joined only by a container that sets
# --cpuset-cpus or --cpuset-mems: each v1 hierarchy joined costs an RCU-synchronised attach, about
# 1.5 ms apiece on this kernel (BENCHMARKS.md). devices is always joined: it is what keeps a container (whose root
# may mknod) from opening the host's disks; a pre-cloned init joins all of them ahead (make_spare).
CONTROLLERS: tuple[Controller, ...] = (
    Memory(),
    Cpu(),
    CpuAcct(),
    Pids(),
    Blkio(),
    Freezer(),
    Devices(),
)
CPUSET = CpuSet()
# every hierarchy the driver may use (detect() finds their mounts): cpuset is joined on demand
NAMES = (*(c.name for c in CONTROLLERS), "cpuset")


class V1Driver(CgroupDriver):
    """bases maps each mounted controller to the directory the parent lives in."""

    version = 1

    def __init__(self, bases: dict[str, str], parent: str, *, freeze_timeout: float = 10.0) -> None:
        missing = [n for n in ("memory", "cpu", "cpuacct", "pids", "freezer", "devices") if n not in bases]
        if missing:
            raise CgroupError(f"cgroup v1: controllers {', '.join(missing)} are not mounted", op="detect")
        self.bases = dict(bases)
        self.parent = parent.strip("/")
        self.freeze_timeout = freeze_timeout
        self._controllers = [c for c in CONTROLLERS if c.name in bases]

    def check(self, resources: Resources) -> None:
        resources.validate()
        if resources.needs_cpuset():
            if "cpuset" not in self.bases:
                raise CgroupError("cpuset_cpus: the cpuset controller is not mounted on this host",
                                  op="validate", field="cpuset_cpus")
            root = self.bases["cpuset"]
            for field, wanted, f in (("cpuset_cpus", resources.cpuset_cpus, "cpuset.effective_cpus"),
                                     ("cpuset_mems", resources.cpuset_mems, "cpuset.effective_mems")):
                check_available(field, wanted, _fs.read(os.path.join(root, f)))

    def _with_cpuset(self, name: str) -> list[Controller]:
        """The container's controllers: cpuset too when it has a cpuset cgroup (it asked for one)."""
        if "cpuset" in self.bases and os.path.isdir(self._path(name, "cpuset")):
            return [*self._controllers, CPUSET]
        return self._controllers

    # where things are
    def paths(self, name: str) -> dict[str, str]:
        _check_name(name)
        return {c.name: os.path.join(self.bases[c.name], self.parent, name) for c in self._with_cpuset(name)}

    def _dirs(self, name: str) -> list[str]:
        """Distinct directories: co-mounted controllers (cpu,cpuacct) share one."""
        return list(dict.fromkeys(self.paths(name).values()))

    def _path(self, name: str, controller: str) -> str:
        return os.path.join(self.bases[controller], self.parent, name)

    # lifecycle
    def create(self, name: str, resources: Resources) -> None:
        self.check(resources)
        made: list[str] = []
        joined = [*self._controllers, CPUSET] if resources.needs_cpuset() else self._controllers
        try:
            for c in joined:
                path = self.bases[c.name]
                for part in [*self.parent.split("/"), name]:
                    if not part:
                        continue
                    path = os.path.join(path, part)
                    if _fs.mkdir(path):
                        made.append(path)
                    c.prepare(path)
            self._apply(name, resources)
        except BaseException:
            for path in reversed(made):
                try:
                    _fs.rmdir(path)
                except CgroupError as e:
                    log.warning("create %s: cleanup: %s", name, e)
            raise

    def update(self, name: str, resources: Resources) -> None:
        self.check(resources)
        self._require(name)
        if resources.needs_cpuset() and CPUSET not in self._with_cpuset(name):
            raise CgroupError(f"cgroup {name}: cpuset_cpus/cpuset_mems can be changed only on a container "
                              "started with one", op="update", field="cpuset_cpus")
        self._apply(name, resources)

    def _apply(self, name: str, resources: Resources) -> None:
        for c in self._with_cpuset(name):
            c.apply(self._path(name, c.name), resources)

    def add_process(self, name: str, pid: int) -> None:
        self._require(name)
        for d in self._dirs(name):
            _fs.write(os.path.join(d, "cgroup.procs"), str(pid))

    def procs(self, name: str) -> list[int]:
        out: set[int] = set()
        for d in self._dirs(name):
            out |= _fs.pids_in(d)
        return sorted(out)

    def exists(self, name: str) -> bool:
        """True while any controller's directory is left (a half-made cgroup still needs destroy)."""
        return any(os.path.isdir(d) for d in self._dirs(name))

    def destroy(self, name: str) -> None:
        if not self.exists(name):
            return
        fz = self._path(name, "freezer")
        if os.path.isdir(fz) and self.procs(name):
            # (Usually empty: the container's pid 1 has exited and took the rest with it.)
            # Frozen, nothing can fork between our listing and our kill; SIGKILL stays pending
            # on a frozen task, and the thaw lets it die.
            try:
                freezer.set_state(fz, "FROZEN", min(self.freeze_timeout, 1.0))
            except CgroupError as e:
                log.warning("destroy %s: could not freeze first: %s", name, e)
            _fs.signal_all(self.procs(name))
            freezer.set_state(fz, "THAWED", self.freeze_timeout)
        _fs.kill_all(lambda: self.procs(name), self._path(name, "memory"))
        for d in self._dirs(name):
            _fs.rmdir(d)

    def list(self) -> list[str]:
        names: set[str] = set()
        for c in [*self._controllers, CPUSET] if "cpuset" in self.bases else self._controllers:
            d = os.path.join(self.bases[c.name], self.parent)
            if os.path.isdir(d):
                names.update(e.name for e in os.scandir(d)
                             if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
        return sorted(names)

    # made ahead: every join of a v1 hierarchy waits for an RCU grace period (about 1.5 ms each
    # here, seven of them), which a pre-cloned init pays while it waits for its container
    def make_spare(self, tag: str, pid: int) -> bool:
        if not tag.startswith("."):
            raise CgroupError(f"spare cgroup {tag!r} must start with '.'", op="spare", field="name")
        self.create(tag, Resources())
        self.add_process(tag, pid)
        return True

    def take_spare(self, tag: str, name: str, resources: Resources) -> bool:
        self.check(resources)
        if resources.needs_cpuset():
            return False  # the spare has no cpuset cgroup: the caller creates and joins all
        pairs = [(d, os.path.join(os.path.dirname(d), name)) for d in self._dirs(tag)]
        if not all(os.path.isdir(old) for old, _ in pairs) or any(os.path.exists(new) for _, new in pairs):
            return False
        done: list[tuple[str, str]] = []
        try:
            for old, new in pairs:
                os.rename(old, new)  # cgroup v1 renames a cgroup in place, its processes with it
                done.append((old, new))
        except OSError as e:
            for old, new in reversed(done):
                try:
                    os.rename(new, old)
                except OSError as undo:
                    log.warning("take spare %s as %s: undo %s: %s", tag, name, new, undo)
            log.warning("take spare %s as %s: %s", tag, name, e)
            return False
        self._apply(name, resources)
        return True

    # freezer
    def freeze(self, name: str) -> None:
        self._require(name)
        freezer.set_state(self._path(name, "freezer"), "FROZEN", self.freeze_timeout)

    def thaw(self, name: str) -> None:
        self._require(name)
        freezer.set_state(self._path(name, "freezer"), "THAWED", self.freeze_timeout)

    def frozen(self, name: str) -> bool:
        return freezer.state(self._path(name, "freezer")) == "FROZEN"

    # numbers
    def stats(self, name: str) -> Stats:
        self._require(name)
        s = Stats()
        for c in self._controllers:
            c.stat(self._path(name, c.name), s)
        return s

    def oom_kills(self, name: str) -> int:
        return memory.oom_kills(self._path(name, "memory"))

    def _require(self, name: str) -> None:
        d = self._path(name, "memory")
        if not os.path.isdir(d):
            raise CgroupError(f"cgroup {name}: {d} does not exist", op="lookup", path=d)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise CgroupError(f"cgroup name {name!r} must be one path component", op="lookup", field="name")
