"""A container's own mounts (volumes, bind mounts, tmpfs) and --read-only, made by its init.

Two steps around pivot_root (init._configure): before it, while the host's paths are in view,
each volume or bind source is cloned as a detached mount tree (open_tree), read-only if asked, so
no path on the host is resolved after the container's root is in place; after it, each target is
made *inside* the new root (a link the image planted resolves within the container, never to the
host) and the tree attached there (move_mount), parents before children, and given its
propagation (docker's -v :rshared etc.; rprivate by default). The clones are taken before the
namespace is made private, so a clone of a shared host mount is in its peer group: shared stays
in it, slave becomes its slave, private leaves it. Then tmpfs mounts, and
last the root itself is made read-only with --read-only: its submounts (/proc, /dev, the volumes,
the tmpfs) keep their own flags.

Copy-up (docker's): a volume that is empty when a container mounts it is first filled with what
the image has at the target, owner and mode included. The copy never follows a link (a link is
copied as a link) and creates nothing outside the volume: every name is opened relative to a
directory descriptor with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from agent.runtime import syscalls as sc
from agent.runtime.spec import ContainerMount

_FLAGS = {
    "ro": sc.MS_RDONLY, "nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC,
    "sync": 16, "dirsync": 128, "noatime": 1024, "nodiratime": 2048, "relatime": sc.MS_RELATIME,
    "strictatime": sc.MS_STRICTATIME,
}
_PROPAGATION = {"private": sc.MS_PRIVATE, "shared": sc.MS_SHARED, "slave": sc.MS_SLAVE}
_CLEARS = {"rw", "suid", "dev", "exec", "async", "atime", "diratime", "norelatime", "nostrictatime"}


@dataclass
class Held:
    tree: int = -1       # the detached mount tree of the source
    dest: int = -1       # the source directory, for a copy-up into it
    is_dir: bool = True


def tmpfs_flags(options: list[str]) -> tuple[int, str]:
    """mount(8)-style options -> (flags, data)."""
    flags = 0
    data = []
    for opt in options:
        if opt in _FLAGS:
            flags |= _FLAGS[opt]
        elif opt in _CLEARS:
            pass
        else:
            data.append(opt)
    return flags, ",".join(data)


def open_sources(mounts: list[ContainerMount]) -> list[Held]:
    """Before pivot_root: a detached tree of every volume and bind source."""
    held: list[Held] = []
    try:
        for m in mounts:
            h = Held()
            held.append(h)
            if m.type == "tmpfs":
                continue
            try:
                h.is_dir = stat.S_ISDIR(os.stat(m.source).st_mode)
            except OSError as e:
                raise OSError(e.errno, f"mount {m.source} at {m.target}: {e.strerror}") from None
            h.tree = sc.open_tree(m.source, recursive=True)
            if m.readonly:
                sc.set_tree_readonly(h.tree)
            if m.copy_up and h.is_dir:
                h.dest = os.open(m.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        close(held)
        raise
    return held


def close(held: list[Held]) -> None:
    for h in held:
        for fd in (h.tree, h.dest):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        h.tree = h.dest = -1


def attach(mounts: list[ContainerMount], held: list[Held], read_only: bool) -> None:
    """After pivot_root, in the container's root: targets, copy-up, the mounts, --read-only."""
    try:
        order = sorted(range(len(mounts)), key=lambda i: len([p for p in mounts[i].target.split("/") if p]))
        for i in order:
            m, h = mounts[i], held[i]
            _make_target(m.target, h.is_dir)
            if m.type == "tmpfs":
                flags, data = tmpfs_flags(m.options)
                sc.mount("tmpfs", m.target, "tmpfs", flags, data or None)
                continue
            if h.dest >= 0:
                if not os.listdir(h.dest):
                    copy_up(m.target, h.dest)
                os.close(h.dest)
                h.dest = -1
            sc.move_mount(h.tree, m.target)
            os.close(h.tree)
            h.tree = -1
            prop = m.propagation or "rprivate"
            sc.mount(None, m.target, None, _PROPAGATION[prop.removeprefix("r")] | (sc.MS_REC if prop[0] == "r" else 0))
    finally:
        close(held)
    if read_only:
        # Keep the root mount's other flags (a remount that dropped a locked one would fail).
        keep = os.statvfs("/").f_flag & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | 1024 | 2048 | sc.MS_RELATIME)
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | keep)


def _make_target(target: str, is_dir: bool) -> None:
    """Resolved in the container's root (we have pivoted): links stay inside it."""
    if is_dir:
        try:
            os.makedirs(target, exist_ok=True)
        except FileExistsError:
            raise OSError(f"mount target {target} exists in the image and is not a directory") from None
        return
    parent = os.path.dirname(target.rstrip("/")) or "/"
    os.makedirs(parent, exist_ok=True)
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    elif os.path.isdir(target):
        raise OSError(f"mount target {target} is a directory in the image, and the source is a file")


# --- copy-up -----------------------------------------------------------------------------------------

def copy_up(src: str, dest: int) -> None:
    """Fill the empty volume directory `dest` (a descriptor) with the tree at `src` (in the
    container's root), as docker does when a new volume is first mounted. Kept in this one
    function so that it can move to the project's safe rootfs writer."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing at the target in the image: an empty volume
    try:
        _copy_dir(sfd, dest)
        st = os.fstat(sfd)
        os.fchown(dest, st.st_uid, st.st_gid)
        os.fchmod(dest, stat.S_IMODE(st.st_mode))
    finally:
        os.close(sfd)


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _copy_dir(sfd: int, dfd: int) -> None:
    for name in os.listdir(sfd):
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            s2, d2 = _open_dir(name, sfd), _open_dir(name, dfd)
            try:
                _copy_dir(s2, d2)
                os.fchown(d2, st.st_uid, st.st_gid)
                os.fchmod(d2, mode)
                os.utime(d2, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(s2)
                os.close(d2)
            continue
        if stat.S_ISREG(st.st_mode):
            fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            try:
                fout = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                               dir_fd=dfd)
                try:
                    _copy_bytes(fin, fout, st.st_size)
                    os.fchown(fout, st.st_uid, st.st_gid)
                    os.fchmod(fout, mode)
                    os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(fout)
            finally:
                os.close(fin)
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dfd)
        else:
            continue  # a socket: nothing to copy
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, mode, dir_fd=dfd)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


def _copy_bytes(fin: int, fout: int, size: int) -> None:
    """In the kernel: copy_file_range (across file systems it may refuse: then sendfile)."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(fin, fout, left)
            if n == 0:
                return
            left -= n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    offset = size - left
    while left > 0:
        n = os.sendfile(fout, fin, offset, left)
        if n == 0:
            return
        offset += n
        left -= n
