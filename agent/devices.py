"""--device and --privileged: which host devices a container gets, as nodes in its /dev and as
rules of its devices cgroup (docker's default list otherwise: cgroups.DEFAULT_DEVICE_RULES).

Read from the host's /dev when the container starts (device numbers are the host's of the moment),
and checked at create, so that a bad --device is refused before anything is made.
"""

from __future__ import annotations

import os
import stat

from agent.model import ContainerConfig, InvalidArgument
from agent.runtime import cgroups
from agent.runtime.spec import CAPABILITY_NUMBERS, DeviceNode
from common.devices import DeviceMapping

# What --privileged does not take from the host's /dev: the container's own devpts, shm and
# mqueue, the /proc links, its own console (none) and ptmx (its devpts's), and the nodes every
# container gets anyway (rootfs._DEVICES).
_PRIVILEGED_SKIP = {"pts", "shm", "mqueue", "fd", "console", "ptmx", "null", "zero", "full", "random", "urandom",
                    "tty", "core", "stdin", "stdout", "stderr"}
ALL_CAPABILITIES = sorted(CAPABILITY_NUMBERS, key=CAPABILITY_NUMBERS.__getitem__)


def devices_for(cfg: ContainerConfig, dev: str = "/dev") -> tuple[list[DeviceNode], tuple[cgroups.DeviceRule, ...]]:
    """The extra nodes the container's init makes, and the device rules of its cgroup.
    Raises InvalidArgument naming the flag and the path."""
    if cfg.privileged:
        return host_devices(dev), cgroups.ALL_DEVICES
    nodes: list[DeviceNode] = []
    rules = list(cgroups.DEFAULT_DEVICE_RULES)
    seen: set[str] = set()
    for d in cfg.devices:
        for node in mapped(d):
            if node.path in seen:
                raise InvalidArgument(f"--device {_flag(d)}: {node.path} is given twice")
            seen.add(node.path)
            nodes.append(node)
            rules.append(cgroups.DeviceRule(node.type, node.major, node.minor, d.permissions or "rwm"))
    for text in cfg.device_cgroup_rules:   # docker's --device-cgroup-rule: only the rule, no node
        try:
            rules.append(cgroups.DeviceRule.parse(text, "--device-cgroup-rule"))
        except cgroups.CgroupError as e:
            raise InvalidArgument(str(e)) from None
    return nodes, tuple(rules)


def _flag(d: DeviceMapping) -> str:
    return ":".join(x for x in (d.path_on_host, d.path_in_container, d.permissions) if x)


def mapped(d: DeviceMapping) -> list[DeviceNode]:
    """One --device: the host's node, or every node under a host directory (docker's /dev/snd)."""
    flag = _flag(d)
    perms = d.permissions or "rwm"
    if not perms or set(perms) - set("rwm") or len(set(perms)) != len(perms):
        raise InvalidArgument(f"--device {flag}: invalid device mode {perms!r} (a combination of r, w and m)")
    src = d.path_on_host
    dst = d.path_in_container or src
    for what, path in (("host", src), ("container", dst)):
        if not path.startswith("/"):
            raise InvalidArgument(f"--device {flag}: the {what} path {path!r} is not absolute")
    try:
        st = os.stat(src)
    except OSError as e:
        raise InvalidArgument(f'error gathering device information while adding custom device "{src}": '
                              f"{(e.strerror or str(e)).lower()}") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidArgument(f"--device {flag}: {src} is not a device node")
    norm = os.path.normpath(dst)
    if not norm.startswith("/dev/") or norm == "/dev/pts" or norm.startswith(("/dev/pts/", "/dev/shm", "/dev/mqueue")):
        raise InvalidArgument(f"--device {flag}: the path in the container, {dst}, must be a device path under /dev")
    if stat.S_ISDIR(st.st_mode):
        out = [_retarget(n, src, norm) for n in _walk(src, st.st_dev)]
        if not out:
            raise InvalidArgument(f"--device {flag}: {src} holds no device node")
        return out
    one = _node(src, st)
    if one is None:
        raise InvalidArgument(f"--device {flag}: {src} is not a device node")
    one.path = norm
    return [one]


def _node(path: str, st: os.stat_result) -> DeviceNode | None:
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(path=path, type=kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
                      mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, host_path=path)


def _retarget(node: DeviceNode, src: str, dst: str) -> DeviceNode:
    node.path = os.path.join(dst, os.path.relpath(node.host_path, src))
    return node


def _walk(top: str, fs: int, skip: frozenset[str] = frozenset()) -> list[DeviceNode]:
    """Device nodes under top, not through symlinks nor into other filesystems, in a stable order."""
    out: list[DeviceNode] = []
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if e.name in skip or e.name.startswith("."):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev == fs:
                out += _walk(e.path, fs)
            continue
        node = _node(e.path, st)
        if node is not None:
            out.append(node)
    return out


def host_devices(dev: str = "/dev") -> list[DeviceNode]:
    """Every device node of the host (--privileged), at the same path in the container."""
    nodes = _walk(dev, os.stat(dev).st_dev, frozenset(_PRIVILEGED_SKIP))
    for n in nodes:
        n.path = "/dev/" + os.path.relpath(n.host_path, dev)
    return nodes
