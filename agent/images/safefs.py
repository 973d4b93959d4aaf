"""Writing into a root filesystem from the host side without ever leaving it.

Every writer into a layer, a snapshot's upper dir or an unpacked archive (layer apply for import,
load, pull and restore; build COPY/ADD; the archive unpacker) goes through a ``Root``: paths are
lists of components resolved *below* the root's directory fd by the kernel, with openat2
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` (Linux 5.6), so a symlink at any component -- placed by
an earlier tar member, by a lower layer, or swapped in by anyone between two calls -- is an error
(ELOOP), never followed. Without openat2 the same walk is made one component at a time with
``O_PATH | O_NOFOLLOW`` descriptors, each checked to be a directory.

The final component is always acted on through the descriptor of its parent (``mkdirat``,
``symlinkat``, ``mknodat``, ``linkat``, ``unlinkat``, ``openat(O_EXCL | O_NOFOLLOW)``), and modes,
owners and times are set on a descriptor opened with ``O_NOFOLLOW`` (``fchown``, ``fchmod``,
``futimens``), or, for a symlink itself, with ``AT_SYMLINK_NOFOLLOW`` on the parent's descriptor.
So no later entry can change what an earlier decision referred to: a directory that was replaced
by a symlink is simply not found as a directory any more.

Descriptors of recently used parent directories are cached; every removal of a directory goes
through ``remove`` here, which empties the cache, so a cached descriptor never names a directory
that has left the tree.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.errors import InvalidArgument
from agent.runtime import syscalls

from .errors import ImageError

_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory descriptors kept per Root: enough that a layer whose files alternate between a few
# hundred directories hits the cache (BENCHMARKS.md), and at most 1/16 of the process's descriptor
# limit (1024 under systemd's default: 64), since several layers may be applied at once.
_CACHE_MAX = max(16, min(512, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 16))

# None until probed; False when the kernel lacks openat2 (ENOSYS) or a sandbox refuses it (EPERM).
_have_openat2: bool | None = None


class UnsafePath(ImageError, InvalidArgument):
    """A path inside the root goes through a symlink or a non-directory."""

    def __init__(self, message: str, where: str, kind: str) -> None:
        super().__init__(message)
        self.where = where  # the offending components, joined with "/"
        self.kind = kind    # "symlink" | "not a directory"


def check_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"not a single path component: {name!r}")


def use_openat2(enabled: bool | None) -> None:
    """Force the O_NOFOLLOW walk (False), openat2 (True), or probe again (None); for tests."""
    global _have_openat2
    _have_openat2 = enabled


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2 beneath dir_fd; raises OSError(ENOSYS) when it is not available."""
    global _have_openat2
    if _have_openat2 is False:
        raise OSError(errno.ENOSYS, "openat2 not available")
    try:
        fd = syscalls.openat2(dir_fd, path, flags | os.O_CLOEXEC, mode, _RESOLVE)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM) and _have_openat2 is None:
            _have_openat2 = False
        raise
    _have_openat2 = True
    return fd


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# Called with (parent fd, name, lstat) for a component on the way that is not a directory; returns
# True after replacing it with a directory (the layer applier does so for its own whiteouts).
Replacer = Callable[[int, str, os.stat_result], bool]
# Called with (parent fd, name, index in parts) for each directory opendir makes.
Made = Callable[[int, str, int], None]


class Root:
    """A directory tree that is written into; every path is a list of components below it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self.forget()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forget(self) -> None:
        """Drop the cached directory descriptors (after anything removed a directory)."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    # --- resolving ----------------------------------------------------------------------------------

    def _error(self, parts: Sequence[str], i: int, st: os.stat_result | None) -> UnsafePath:
        where = "/".join(parts[: i + 1])
        if st is not None and stat.S_ISLNK(st.st_mode):
            return UnsafePath(f"{where!r} is a symlink", where, "symlink")
        return UnsafePath(f"{where!r} is not a directory", where, "not a directory")

    def _walk(self, parts: Sequence[str], create: bool, replace: Replacer | None, made: Made | None) -> int:
        """Component by component with O_NOFOLLOW descriptors: creates, replaces, names errors."""
        fd = os.dup(self.fd)
        try:
            for i, comp in enumerate(parts):
                check_name(comp)
                try:
                    nfd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: checked just below like any other
                    else:
                        if made is not None:
                            made(fd, comp, i)
                    nfd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                st = os.fstat(nfd)
                if not stat.S_ISDIR(st.st_mode):
                    os.close(nfd)
                    if replace is not None and not stat.S_ISLNK(st.st_mode) and replace(fd, comp, st):
                        self.forget()
                        nfd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                        if not stat.S_ISDIR(os.fstat(nfd).st_mode):
                            os.close(nfd)
                            raise self._error(parts, i, None)
                    else:
                        raise self._error(parts, i, st)
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def opendir(self, parts: Sequence[str], *, create: bool = False, replace: Replacer | None = None,
                made: Made | None = None) -> int:
        """A descriptor (O_PATH) of the directory at ``parts``, owned by the caller.

        Missing components are made (0755) when ``create``; a component that is not a directory is
        handed to ``replace`` (which may turn it into one), else UnsafePath; FileNotFoundError when
        a component is missing and not ``create``. ``made(parent fd, name, index)`` is called for
        each directory made.
        """
        key = tuple(parts)
        cached = self._dirs.pop(key, None)
        if cached is not None:
            self._dirs[key] = cached  # most recently used: last
            return os.dup(cached)
        if not parts:
            fd = os.dup(self.fd)
        else:
            for comp in parts:
                check_name(comp)
            try:
                fd = _openat2(self.fd, "/".join(parts), _DIR_FLAGS)
            except OSError as e:
                if e.errno == errno.EMFILE and self._dirs:
                    self.forget()  # our cache is what holds them: give them back and try again
                    return self.opendir(parts, create=create, replace=replace, made=made)
                if e.errno not in (errno.ENOSYS, errno.EPERM, errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                    raise
                fd = self._walk(parts, create, replace, made)
        if len(self._dirs) >= _CACHE_MAX:  # the least recently used goes (callers hold dups)
            os.close(self._dirs.pop(next(iter(self._dirs))))
        self._dirs[key] = os.dup(fd)
        return fd

    def open(self, parts: Sequence[str], flags: int, mode: int = 0) -> int:
        """openat of ``parts`` (not the root itself) with O_NOFOLLOW at every component; OSError
        (ELOOP: a symlink on the way, ENOTDIR, ENOENT) otherwise, with openat2 or without."""
        if not parts:
            raise ValueError("open of the root itself")
        check_name(parts[-1])
        try:
            return _openat2(self.fd, "/".join(parts), flags | os.O_NOFOLLOW, mode)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
        try:
            parent = self.opendir(parts[:-1])
        except UnsafePath as e:  # the same errors as openat2's
            code = errno.ELOOP if e.kind == "symlink" else errno.ENOTDIR
            raise OSError(code, os.strerror(code), "/".join(parts)) from None
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        finally:
            os.close(parent)

    def lstat(self, parts: Sequence[str]) -> os.stat_result | None:
        """lstat of ``parts``; None when it, or a directory on the way, is missing or not a directory."""
        if not parts:
            return os.fstat(self.fd)
        try:
            parent = self.opendir(parts[:-1])
        except (FileNotFoundError, UnsafePath):
            return None
        try:
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(parent)

    # --- changing -----------------------------------------------------------------------------------

    def remove(self, parent: int, name: str, st: os.stat_result | None = None) -> None:
        """Remove ``name`` in the directory ``parent``, a whole tree when it is a directory."""
        check_name(name)
        if st is None:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self.forget()
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)


def set_attrs_fd(fd: int, mode: int | None, owner: tuple[int, int] | None, mtime_ns: tuple[int, int] | None) -> None:
    """Owner, then mode (chown clears setuid/setgid), then times, on an open descriptor."""
    if owner is not None:
        os.fchown(fd, owner[0], owner[1])
    if mode is not None:
        os.fchmod(fd, mode & 0o7777)
    if mtime_ns is not None:
        os.utime(fd, ns=mtime_ns)


def set_attrs(parent: int, name: str, mode: int | None, owner: tuple[int, int] | None,
              times_ns: tuple[int, int] | None, *, symlink: bool = False) -> None:
    """Attributes of ``name`` in ``parent``: a symlink itself through AT_SYMLINK_NOFOLLOW (it has no
    mode), anything else through a descriptor opened O_NOFOLLOW (so never through a link)."""
    if symlink:
        if owner is not None:
            os.chown(name, owner[0], owner[1], dir_fd=parent, follow_symlinks=False)
        if times_ns is not None:
            os.utime(name, ns=times_ns, dir_fd=parent, follow_symlinks=False)
        return
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    try:
        set_attrs_fd(fd, mode, owner, times_ns)
    finally:
        os.close(fd)


def open_dir_rd(parent: int, name: str) -> int:
    """A readable descriptor of the directory ``name`` in ``parent`` (for xattrs), never a link."""
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
