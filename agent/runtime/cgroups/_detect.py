"""Choose the driver for this host and work out, once, where our cgroups live.

Both answers come from the kernel's own descriptions (/proc/self/mountinfo, /proc/self/cgroup),
not from well-known paths: hosts co-mount cpu,cpuacct, agents run nested in other cgroups, and
a restarted agent must land on the same directories to find its containers again.
"""

from __future__ import annotations

import os
import re

from . import _fs
from ._driver import CgroupDriver
from ._errors import CgroupError
from ._v1 import NAMES as V1_CONTROLLERS
from ._v1 import V1Driver
from ._v2 import CONTROLLERS as V2_CONTROLLERS
from ._v2 import V2Driver

DEFAULT_PARENT = "dockyard"


def detect(root: str = "/sys/fs/cgroup", parent: str | None = None) -> CgroupDriver:
    """The v2 driver when root is a cgroup2 hierarchy with controllers we use, else the v1 driver.

    A hybrid host's v2 hierarchy holding only hugetlb (or nothing) counts as v1. With parent None,
    containers nest under the agent's own cgroup, in a "dockyard" child of it.
    """
    return _detect(root, parent, "/proc/self/cgroup", "/proc/self/mountinfo")


def _is_v2(root: str) -> bool:
    controllers = os.path.join(root, "cgroup.controllers")
    return _fs.exists(controllers) and bool(set(_fs.read(controllers).split()) & {c.name for c in V2_CONTROLLERS})


def nesting_parent(root: str, own: str) -> str:
    """The default parent of an agent's containers, relative to root: a "dockyard" child of the
    agent's own cgroup `own`, so the host's limits on the agent apply to them too.

    On cgroup v2 a cgroup that holds processes cannot hand controllers down to children (the
    kernel's "no internal processes" rule, EBUSY), and an agent's own cgroup always holds the agent
    (and, started from a login, the session's shell and sshd): there the containers nest under the
    nearest ancestor without processes of its own instead (a systemd slice; at worst the root).
    """
    rel = own.strip("/")
    if _is_v2(os.path.normpath(root)):
        while rel and _fs.read(os.path.join(root, rel, "cgroup.procs")).strip():
            rel = os.path.dirname(rel)
    return f"{rel}/{DEFAULT_PARENT}".strip("/")


def _detect(root: str, parent: str | None, cgroup_file: str, mountinfo_file: str) -> CgroupDriver:
    root = os.path.normpath(root)
    own = _own_cgroups(_fs.read(cgroup_file))
    if _is_v2(root):
        if parent is None:
            return V2Driver(root, _join(root, own.get("", "/")), DEFAULT_PARENT)
        return V2Driver(root, root, parent)
    bases: dict[str, str] = {}
    for mount in _v1_mounts(_fs.read(mountinfo_file), root):
        for c in mount.controllers & set(V1_CONTROLLERS):
            if c in bases:
                continue
            if parent is None:
                mine = own.get(c)
                if mine is None:
                    raise CgroupError(f"detect: {cgroup_file} has no {c} line", op="detect", path=cgroup_file)
                bases[c] = _join(mount.point, os.path.relpath(mine, mount.root))
            else:
                bases[c] = mount.point
    if not bases:
        raise CgroupError(
            f"detect {root}: neither a cgroup2 hierarchy with controllers nor cgroup v1 mounts",
            op="detect",
            path=root,
        )
    return V1Driver(bases, DEFAULT_PARENT if parent is None else parent)


def _join(base: str, rel: str) -> str:
    rel = rel.strip("/")
    if rel.startswith(".."):
        # Our cgroup is outside what this mount shows (a bind mount of a subtree): use its root.
        return base
    return os.path.normpath(os.path.join(base, rel)) if rel and rel != "." else base


def _own_cgroups(text: str) -> dict[str, str]:
    """controller -> path from /proc/self/cgroup; the v2 line ("0::/x") is under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, names, path = parts
        if not names:
            out[""] = path
        for n in names.split(","):
            if n:
                out[n] = path
    return out


class _Mount:
    def __init__(self, point: str, root: str, controllers: set[str]) -> None:
        self.point = point
        self.root = root
        self.controllers = controllers


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _v1_mounts(text: str, under: str) -> list[_Mount]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or fields[sep + 1] != "cgroup":
            continue
        point = _unescape(fields[4])
        if not (point == under or point.startswith(under.rstrip("/") + "/")):
            continue
        opts = set(fields[sep + 3].split(","))
        out.append(_Mount(point, _unescape(fields[3]), opts))
    return out
