"""The container's filesystem view, built by the container init inside its new mount namespace.

Order matters and follows runc: make every mount private (nothing leaks back to the host), mount
/proc, /sys, /dev and friends under the new root, pivot_root into it, then hide and freeze the
/proc and /sys paths docker hides. CRIU needs the pivot_root and no mount borrowed from outside
the rootfs, so device nodes are made with mknod, not bind-mounted from the host's /dev.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from agent.runtime import syscalls as sc
from agent.runtime.spec import DeviceNode, MountSpec

_DEVICES = [  # name, major, minor (docker's default devices)
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
]
_DEV_LINKS = [
    ("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"), ("/proc/kcore", "core"),
]


def unmount(path: str) -> None:
    """Unmount a container's rootfs: plainly first, lazily only if busy (a lazy umount waits for
    an RCU grace period: 1.9 ms here, against 0.7). Not mounted is fine. (monitor.c does the same.)"""
    try:
        sc.umount(path, 0)
    except OSError as e:
        if e.errno == errno.EBUSY:
            with contextlib.suppress(OSError):
                sc.umount(path, sc.MNT_DETACH)


def mount_rootfs(mounts: list[MountSpec], target: str, userns_fd: int = -1,
                 root_ids: tuple[int, int] = (0, 0)) -> None:
    """Apply the snapshotter's mount descriptions (overlay or bind) at target, on the host.

    With userns_fd (--userns remap), the image's layers are seen through idmapped mounts of that
    user namespace's mapping, so the container's root owns the image's root-owned files. The
    writable layer is not idmapped (overlay makes its work directory as the mounter, host root,
    whom the mapping lacks): it holds the remapped ids on disk, as docker's userns-remap does, and
    its top directory is given to the container's root (root_ids, host ids).
    """
    if userns_fd >= 0:
        _mount_idmapped(mounts, target, userns_fd, root_ids)
        return
    for m in mounts:
        flags = 0
        data = []
        for opt in m.options:
            if opt in ("rbind", "bind"):
                flags |= sc.MS_BIND | (sc.MS_REC if opt == "rbind" else 0)
            elif opt == "ro":
                flags |= sc.MS_RDONLY
            elif opt == "rw":
                pass
            else:
                data.append(opt)
        sc.mount(m.source, target, None if flags & sc.MS_BIND else m.type, flags, ",".join(data) or None)


def _mount_idmapped(mounts: list[MountSpec], target: str, userns_fd: int, root_ids: tuple[int, int]) -> None:
    for m in mounts:
        if m.type != "overlay":  # a bind of one directory (an image with no layers: scratch)
            sc.idmapped_bind(m.source, target, userns_fd)
            continue
        # Each layer gets an idmapped bind on a scratch directory beside the rootfs; overlay keeps
        # private clones of its layers' mounts, so the binds are detached as soon as it is up.
        scratch = target.rstrip("/") + ".idmap"
        os.makedirs(scratch, exist_ok=True)
        binds: list[str] = []
        opts: list[str] = []
        try:
            for opt in m.options:
                key, _, value = opt.partition("=")
                if key == "lowerdir":
                    lowers = []
                    for i, layer in enumerate(value.split(":")):
                        at = os.path.join(scratch, f"l{i}")
                        os.makedirs(at, exist_ok=True)
                        binds.append(at)
                        sc.idmapped_bind(layer, at, userns_fd)
                        lowers.append(at)
                    opts.append("lowerdir=" + ":".join(lowers))
                else:
                    if key == "upperdir":
                        os.chown(value, *root_ids)
                    if opt not in ("rw", "ro"):
                        opts.append(opt)
            sc.mount("overlay", target, "overlay", sc.MS_RDONLY if "ro" in m.options else 0, ",".join(opts))
        finally:
            # rmdir, never rmtree: a bind that failed to detach would be the image's own files.
            for at in binds:
                with contextlib.suppress(OSError):
                    sc.umount(at, sc.MNT_DETACH)
                with contextlib.suppress(OSError):
                    os.rmdir(at)
            with contextlib.suppress(OSError):
                os.rmdir(scratch)


def prepare_in_namespace(rootfs: str, userns: bool, share_net: bool, devices: list[DeviceNode] | None = None,
                         readonly_sysfs: bool = True, shm_size: int = 0) -> None:
    """Everything before pivot_root: private propagation, then the kernel filesystems in rootfs,
    docker's default device nodes and `devices` (--device, --privileged) in its /dev, and /dev/shm
    of shm_size bytes (0: docker's 64 MiB).

    Called with the rootfs as working directory; `rootfs` is its absolute path on the host.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    # pivot_root refuses a new root that a user namespace has locked (every mount copied from the
    # host is): bind the rootfs onto itself and step back in through its name to stand on the bind.
    sc.mount(".", ".", None, sc.MS_BIND | sc.MS_REC)
    os.chdir(os.path.join("..", os.path.basename(rootfs.rstrip("/"))))
    rootfs = "."

    def under(p: str) -> str:
        path = in_root(rootfs, p)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, f"the image's {p} ({os.path.relpath(path, rootfs)} in it) cannot be made a "
                          f"directory to mount on: {e.strerror}") from None
        return path

    nosuid_nodev_noexec = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    sc.mount("proc", under("/proc"), "proc", nosuid_nodev_noexec)
    ro = sc.MS_RDONLY if readonly_sysfs else 0
    if share_net:
        # --network host: a new sysfs needs its own net namespace; borrow the host's, read-only.
        sc.mount("/sys", under("/sys"), None, sc.MS_BIND | sc.MS_REC)
        if ro:
            sc.mount(None, under("/sys"), None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)
    else:
        sc.mount("sysfs", under("/sys"), "sysfs", nosuid_nodev_noexec | ro)
    dev = under("/dev")
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in _DEVICES:
        path = os.path.join(dev, name)
        if userns:
            # mknod is not allowed in a user namespace: bind the host's node instead.
            open(path, "a").close()
            sc.mount(f"/dev/{name}", path, None, sc.MS_BIND)
        else:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)
    for src, name in _DEV_LINKS:
        os.symlink(src, os.path.join(dev, name))
    for node in devices or ():
        try:
            _make_node(dev, node, userns)
        except OSError as e:
            raise OSError(e.errno, f"device {node.path} ({node.type} {node.major}:{node.minor}): "
                          f"{e.strerror or e}") from None
    sc.mount("devpts", under("/dev/pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620" + ("" if userns else ",gid=5"))
    sc.mount("shm", under("/dev/shm"), "tmpfs", nosuid_nodev_noexec,
             f"mode=1777,size={shm_size}" if shm_size else "mode=1777,size=65536k")
    sc.mount("mqueue", under("/dev/mqueue"), "mqueue", nosuid_nodev_noexec)


def in_root(root: str, path: str) -> str:
    """path resolved inside root as if root were "/": every symlink on the way is followed and
    re-rooted (an absolute target, a ".." above the top), never out of root, as runc's securejoin
    resolves mount points. An image whose /dev is a link (dangling or not) gets its mount where the
    link points, inside the rootfs."""
    todo = [x for x in path.split("/") if x]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, f"{path} in the image: too many levels of symbolic links")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [x for x in target.split("/") if x] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _make_node(dev: str, node: DeviceNode, userns: bool) -> None:
    """One node under the container's /dev (a tmpfs of its own, so nothing of the image is in the
    way): made with mknod as the host has it, or, in a user namespace (no mknod there), the
    host's node bound on an empty file."""
    rel = os.path.normpath(node.path).lstrip("/")
    if not rel.startswith("dev/") or ".." in rel.split("/"):
        raise OSError(errno.EINVAL, f"device {node.path}: must be a path under /dev")
    path = os.path.join(dev, rel[len("dev/"):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # (a default node the rule replaces, e.g. --device /dev/null)
    if userns:
        open(path, "a").close()
        sc.mount(node.host_path or node.path, path, None, sc.MS_BIND)
        return
    kind = stat.S_IFBLK if node.type == "b" else stat.S_IFCHR
    os.mknod(path, node.mode | kind, os.makedev(node.major, node.minor))
    os.chmod(path, node.mode)
    os.chown(path, node.uid, node.gid)


def pivot(rootfs: str) -> None:
    """pivot_root(".", ".") then detach the old root: no put_old directory is left in the image."""
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths(masked: list[str], readonly: list[str]) -> None:
    for path in masked:
        try:
            st = os.stat(path)
        except OSError:
            continue
        try:
            if stat.S_ISDIR(st.st_mode):
                sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
            else:
                sc.mount("/dev/null", path, None, sc.MS_BIND)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES):
                raise
    for path in readonly:
        if not os.path.exists(path):
            continue
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        with contextlib.suppress(OSError):
            sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)
