"""The driver interface both cgroup versions implement; the rest of the agent codes against this only."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from ._resources import Resources, Stats


class CgroupDriver(ABC):
    """Containers' cgroups under one parent. `name` is a container id everywhere.

    Every method raises CgroupError (naming the operation and the path) on failure.
    """

    version: int
    parent: str
    root: str = "/sys/fs/cgroup"  # the hierarchy's mount (v2: the unified one; v1: their parent)

    def check(self, resources: Resources) -> None:
        """validate(), then refuse by name what this host's cgroups cannot do (a v1-only setting
        on v2, CPUs the host does not have): before a container is created, not at its start."""
        resources.validate()

    @abstractmethod
    def create(self, name: str, resources: Resources) -> None:
        """Make the cgroup and apply resources; idempotent; on failure removes what it made."""

    @abstractmethod
    def update(self, name: str, resources: Resources) -> None:
        """Apply resources (the whole configuration, see Resources) to an existing cgroup."""

    @abstractmethod
    def add_process(self, name: str, pid: int) -> None:
        """Move pid into the cgroup of every controller."""

    @abstractmethod
    def procs(self, name: str) -> list[int]:
        """Pids in the cgroup (and any child cgroups a container made), sorted."""

    @abstractmethod
    def freeze(self, name: str) -> None:
        """Freeze every process; returns once the kernel reports the cgroup frozen."""

    @abstractmethod
    def thaw(self, name: str) -> None: ...

    @abstractmethod
    def frozen(self, name: str) -> bool: ...

    @abstractmethod
    def stats(self, name: str) -> Stats:
        """Read the kernel's counters now."""

    @abstractmethod
    def oom_kills(self, name: str) -> int:
        """How many processes the OOM killer has killed in this cgroup."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def destroy(self, name: str) -> None:
        """Kill what is left (SIGKILL, thawing first), wait for it to leave, remove the cgroup. Idempotent."""

    @abstractmethod
    def list(self) -> list[str]:
        """Names of the cgroups under parent, sorted."""

    def make_spare(self, tag: str, pid: int) -> bool:
        """Ahead of need: a cgroup named `tag` (a name starting with ".", which list() leaves out)
        with default resources, pid moved into it. take_spare() gives it its container's name.
        False where a cgroup cannot be renamed (v2): the caller creates and joins at the start."""
        return False

    def take_spare(self, tag: str, name: str, resources: Resources) -> bool:
        """Rename the spare cgroup `tag` (made by make_spare) to `name` and apply resources to it;
        False, with nothing changed, if it cannot (no such spare, `name` taken)."""
        return False

    @abstractmethod
    def paths(self, name: str) -> dict[str, str]:
        """controller -> absolute cgroup directory (v2: every controller maps to the one directory)."""


class Controller(Protocol):
    """One controller's share of the work, as in runc's fs and fs2 packages.

    prepare() runs on each directory level the driver makes, before any process joins it;
    apply() writes the limits; stat() adds what this controller knows to a Stats.
    """

    name: str

    def prepare(self, path: str) -> None: ...

    def apply(self, path: str, resources: Resources) -> None: ...

    def stat(self, path: str, stats: Stats) -> None: ...
