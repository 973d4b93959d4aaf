"""Layer tarballs: apply one to a directory (overlay format), diff a directory back to a tarball,
flatten a stack of layer directories (docker export). Tarballs are hostile until proven otherwise.

Applying (``apply_layer``) never uses tarfile.extract*: every member is checked and created here.
The rules, each with a test in tests/kernel/test_images_layers.py:

* a member name that is absolute (``/etc/x``) or has a ``..`` component is refused;
* every path is resolved below the root through safefs.Root (openat2 RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS): a member whose path goes through a symlink at any component (placed by an
  earlier member) is refused; the final component is created through its parent's descriptor
  (O_EXCL|O_NOFOLLOW after removing what was there) and its attributes are set on a descriptor, so
  nothing is ever written, chmod'ed, chown'ed or touched through a link;
* directories get their mode, owner and times at the end of the layer, on the directory found
  again below the root: one a later member replaced (by a symlink or a file) gets nothing, and the
  replacing entry keeps its own attributes (the 6777/4242 symlink attack of issue 17);
* with a Bound, a layer that expands past it is refused as it streams;
* a symlink's target is kept as written when absolute (it means the container's root, and nothing on
  the host follows it); a relative target that climbs above the root (``../../etc``) is refused;
* a hardlink must name a member inside the root, already extracted in this same layer, not a
  directory;
* character and block devices are refused (the runtime creates /dev; docker's rootless mode drops
  them too); FIFOs are allowed;
* setuid/setgid/sticky bits are kept, as docker keeps them; ownership is applied when running as root;
* xattrs in pax headers are ignored (a layer must not be able to set trusted.overlay.*);
* a truncated stream, corrupt gzip/zstd data or a non-tar input raise InvalidArchive.

OCI whiteouts become overlay whiteouts: ``.wh.NAME`` makes a 0:0 character device NAME,
``.wh..wh..opq`` sets trusted.overlay.opaque=y on its directory. ``write_diff`` does the reverse.
Callers apply into a fresh private directory and rename it into place only on success, so a refused
layer leaves nothing behind.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from .errors import ImageError, InvalidArchive
from .hashing import StreamHash
from .safefs import Root, UnsafePath, open_dir_rd, set_attrs, set_attrs_fd, write_all
from .tarsplit import Recorder

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_XATTR = "trusted.overlay.opaque"
CHUNK = 1 << 20

_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    zstandard.ZstdError,
    lzma.LZMAError,
    OSError,
    ValueError,
)


# --- streams --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bound:
    """How far a layer may expand (uncompressed tar bytes), and what to say when it goes further."""

    limit: int
    reason: str  # "the agent's maximum for a layer (--max-layer-size 1GiB)"


@dataclass(frozen=True)
class Limits:
    """Maximum expanded size per layer and per image; None is no bound (docker's default)."""

    layer: int | None = None
    image: int | None = None

    def budget(self) -> Budget:
        return Budget(self)


@dataclass
class Budget:
    """One image's limits as its layers are unpacked one after the other."""

    limits: Limits
    used: int = 0

    def bound(self) -> Bound | None:
        """The bound for the next layer: the smaller of the per-layer one and what the image has left."""
        layer, image = self.limits.layer, self.limits.image
        left = None if image is None else max(image - self.used, 0)
        if layer is not None and (left is None or layer <= left):
            return Bound(layer, f"the agent's maximum for a layer (--max-layer-size {layer})")
        if left is not None:
            return Bound(left, f"the agent's maximum for an image (--max-image-size {image}; "
                               f"{self.used} bytes in the layers before it)")
        return None

    def spend(self, n: int) -> None:
        self.used += n


class HashingReader(io.RawIOBase):
    """Passes a stream through while hashing it: the diff_id of a layer is the sha256 of its tar.
    With a ``bound``, the stream is refused as soon as it expands past it (a compression bomb stops
    there, not at the end of the disk)."""

    def __init__(self, raw: IO[bytes], bound: Bound | None = None, what: str = "layer",
                 tap: Callable[[bytes], None] | None = None, hashed: bool = True) -> None:
        self._raw = raw
        self._tap = tap
        # sha256 is most of the CPU of a load: a stream whose digest nobody needs (an archive around
        # its layers) is only counted and bounded.
        self._hash: Any = StreamHash() if hashed else _NoHash()
        self.size = 0
        self._limit = bound.limit if bound is not None else -1
        self._bound = bound
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def peek(self, size: int = 0) -> bytes:
        """What the next read returns, not consumed (so not hashed yet); needs a stream with peek."""
        return bytes(cast(io.BufferedReader, self._raw).peek(size))

    def read(self, size: int | None = -1) -> bytes:
        # The stream's own bytes handed on as they are (RawIOBase.read would copy them through
        # readinto): tarfile reads its blocks straight from here.
        data = self._raw.read(-1 if size is None else size)
        self._hash.update(data)
        if self._tap is not None:
            self._tap(data)
        self.size += len(data)
        if self._limit >= 0 and self.size > self._limit:
            self._over()
        return data

    def _over(self) -> None:
        assert self._bound is not None
        raise InvalidArchive(f"{self._what}: expands to more than {self._bound.limit} bytes, "
                             f"{self._bound.reason}; refused")

    def digest(self) -> str:
        return "sha256:" + str(self._hash.hexdigest())

    def finish(self) -> str:
        """Hash whatever the tar reader did not consume (end-of-archive padding) and return the digest."""
        while True:
            data = self._raw.read(CHUNK)
            if not data:
                break
            self._hash.update(data)
            if self._tap is not None:
                self._tap(data)
            self.size += len(data)
            if self._limit >= 0 and self.size > self._limit:
                self._over()
        return self.digest()


class _NoHash:
    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


class HashingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes] | None) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if self._out is not None:
            self._out.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def compression_of(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return ""


def decompressed(fileobj: IO[bytes]) -> tuple[IO[bytes], str]:
    """A stream of the tar inside ``fileobj`` (plain, gzip, zstd, bzip2 or xz), and the compression."""
    peekable: Any = fileobj if hasattr(fileobj, "peek") else io.BufferedReader(fileobj)  # type: ignore[arg-type]
    head = peekable.peek(8)[:8]
    kind = compression_of(head)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=peekable, mode="rb"), kind  # type: ignore[return-value]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(peekable, read_across_frames=True), kind
    if kind == "bzip2":
        return bz2.BZ2File(peekable, "rb"), kind
    if kind == "xz":
        return lzma.LZMAFile(peekable, "rb"), kind
    return peekable, kind


# --- names ----------------------------------------------------------------------------------------

def member_parts(name: str, what: str) -> list[str]:
    """Split a member name into safe components, refusing absolute paths and ``..``."""
    if name.startswith("/"):
        raise InvalidArchive(f"{what}: member {name!r} has an absolute path")
    if "\x00" in name:
        raise InvalidArchive(f"{what}: member {name!r} has a NUL byte in its name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(f"{what}: member {name!r} escapes the root with '..'")
    return parts


def _symlink_escapes(parent: Sequence[str], target: str) -> bool:
    if target.startswith("/"):
        return False  # absolute targets resolve inside the container's root; nothing here follows them
    depth = len(parent)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


# --- apply ----------------------------------------------------------------------------------------

@dataclass
class LayerStats:
    diff_id: str = ""
    tar_size: int = 0  # uncompressed bytes
    files: int = 0
    size: int = 0  # bytes of regular file content
    whiteouts: int = 0
    compression: str = ""
    unpacked: bool = False  # Snapshotter.apply made the snapshot (False: it was there already)


def _ns(t: float) -> tuple[int, int]:
    """A tar mtime as (atime, mtime) in nanoseconds (exact for the whole seconds most tars carry)."""
    ns = t * 1_000_000_000 if isinstance(t, int) else round(t * 1e9)
    return ns, ns


@dataclass
class _Applier:
    """Creates each member through a safefs.Root: every path is resolved below the layer's root
    without following a symlink at any component, and attributes are set on descriptors."""

    root: Root
    what: str
    # Records what the layer's tar holds besides file contents, so the tar can be made again from
    # the layer (tarsplit.py); it only ever reads what this applier wrote.
    recorder: Recorder | None = None
    is_root: bool = field(default_factory=lambda: os.geteuid() == 0)
    dirs: dict[tuple[str, ...], tarfile.TarInfo] = field(default_factory=dict)
    created_whiteouts: set[str] = field(default_factory=set)

    def _unsafe(self, name: str, e: UnsafePath) -> InvalidArchive:
        if e.kind == "symlink":
            return InvalidArchive(f"{self.what}: member {name!r} goes through symlink {e.where!r}; refused")
        return InvalidArchive(f"{self.what}: member {name!r}: {e.where!r} is not a directory")

    def _owner(self, m: tarfile.TarInfo) -> tuple[int, int] | None:
        return (m.uid, m.gid) if self.is_root else None

    def _replace_whiteout(self, parent: int, comp: str, st: os.stat_result) -> bool:
        # A directory re-created under a name this layer whited out: it replaces lower's.
        if not _is_whiteout(st):
            return False
        os.unlink(comp, dir_fd=parent)
        os.mkdir(comp, 0o755, dir_fd=parent)
        _set_opaque(parent, comp)
        return True

    def parent_dir(self, parts: Sequence[str], name: str) -> int:
        """A descriptor of the real directory that will hold ``parts[-1]``; missing parents are made
        (0755). The caller closes it."""
        try:
            return self.root.opendir(parts[:-1], create=True, replace=self._replace_whiteout)
        except UnsafePath as e:
            raise self._unsafe(name, e) from None

    def _forget_dirs(self, parts: Sequence[str]) -> None:
        """A removed directory's pending attributes go with it (and those of everything below)."""
        prefix = tuple(parts)
        n = len(prefix)
        for key in [k for k in self.dirs if k[:n] == prefix]:
            del self.dirs[key]

    def clear(self, parent: int, parts: Sequence[str], new_is_dir: bool) -> tuple[bool, bool]:
        """Make room for a new entry. Returns (a directory is there and stays, it replaced this
        layer's whiteout)."""
        base = parts[-1]
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False, False
        if self.recorder is not None and not (new_is_dir and stat.S_ISDIR(st.st_mode)):
            self.recorder.removing(self.root, parts, stat.S_ISDIR(st.st_mode))
        if stat.S_ISDIR(st.st_mode):
            if new_is_dir:
                return True, False
            self.root.remove(parent, base, st)
            self._forget_dirs(parts)
            return False, False
        os.unlink(base, dir_fd=parent)
        return False, _is_whiteout(st)

    def whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        if base == WHITEOUT_OPAQUE:
            if len(parts) > 1:
                self._ensure_dir(parts[:-1], name)
            else:
                _set_opaque(self.root.fd, ".")
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless here
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise InvalidArchive(f"{self.what}: whiteout {name!r} names nothing")
        parent = self.parent_dir(parts, name)
        try:
            try:
                st = os.stat(target, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(target, 0o600 | stat.S_IFCHR, 0, dir_fd=parent)
                self.created_whiteouts.add("/".join([*parts[:-1], target]))
                return
            # Same layer holds NAME and .wh.NAME: the whiteout applies only to lower layers (OCI spec).
            if stat.S_ISDIR(st.st_mode):
                _set_opaque(parent, target)
        finally:
            os.close(parent)

    def _ensure_dir(self, parts: list[str], name: str) -> None:
        """The directory at ``parts`` exists (made 0755) and is marked opaque."""
        parent = self.parent_dir(parts, name)
        try:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise InvalidArchive(
                        f"{self.what}: member {name!r} goes through symlink {'/'.join(parts)!r}; refused")
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidArchive(f"{self.what}: member {name!r}: {'/'.join(parts)!r} is not a directory")
            _set_opaque(parent, parts[-1])
        finally:
            os.close(parent)

    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, stats: LayerStats) -> None:
        name = m.name
        parts = member_parts(name, self.what)
        if not parts:
            return  # "./": the root itself
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, name)
            stats.whiteouts += 1
            return
        if m.ischr() or m.isblk():
            kind = "character" if m.ischr() else "block"
            raise InvalidArchive(
                f"{self.what}: member {name!r} is a {kind} device {m.devmajor}:{m.devminor}; "
                "device nodes are refused in layers"
            )
        if m.issym() and _symlink_escapes(parts[:-1], m.linkname):
            raise InvalidArchive(f"{self.what}: symlink {name!r} -> {m.linkname!r} points outside the root")
        parent = self.parent_dir(parts, name)
        try:
            self._create(parent, parts, tf, m, stats)
        finally:
            os.close(parent)

    def _create(self, parent: int, parts: list[str], tf: tarfile.TarFile, m: tarfile.TarInfo,
                stats: LayerStats) -> None:
        name, base = m.name, parts[-1]
        is_dir, replaced_whiteout = self.clear(parent, parts, m.isdir())
        if m.isdir():
            if not is_dir:
                os.mkdir(base, 0o700, dir_fd=parent)
            if replaced_whiteout:
                _set_opaque(parent, base)
            self.dirs.pop(tuple(parts), None)  # the last entry for a directory gives its attributes
            self.dirs[tuple(parts)] = m
            return
        if m.issym():
            os.symlink(m.linkname, base, dir_fd=parent)
            set_attrs(parent, base, None, self._owner(m), _ns(m.mtime), symlink=True)
            stats.files += 1
            return
        if m.islnk():
            self._hardlink(parent, base, m)
            stats.files += 1
            return
        if m.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
            set_attrs(parent, base, m.mode, self._owner(m), _ns(m.mtime))
            stats.files += 1
            return
        if m.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            if self.recorder is not None and not m.issparse():
                self.recorder.content(m.offset_data, m.size, parts)
            written = 0
            try:
                src = MemberReader(tf, m)
                while chunk := src.read(CHUNK):
                    write_all(fd, chunk)
                    written += len(chunk)
                if written != m.size:
                    raise InvalidArchive(f"{self.what}: member {name!r} is truncated ({written} of {m.size} bytes)")
                set_attrs_fd(fd, m.mode, self._owner(m), _ns(m.mtime))
            finally:
                os.close(fd)
            stats.files += 1
            stats.size += m.size
            return
        raise InvalidArchive(f"{self.what}: member {name!r} has unsupported type {m.type!r}")

    def _hardlink(self, parent: int, base: str, m: tarfile.TarInfo) -> None:
        name = m.name
        target_parts = member_parts(m.linkname, self.what)
        if not target_parts:
            raise InvalidArchive(f"{self.what}: hardlink {name!r} -> {m.linkname!r} points at the root")
        not_here = InvalidArchive(f"{self.what}: hardlink {name!r} -> {m.linkname!r}: target is not in this layer")
        try:
            tparent = self.root.opendir(target_parts[:-1])
        except FileNotFoundError:
            raise not_here from None
        except UnsafePath as e:
            raise InvalidArchive(f"{self.what}: hardlink {name!r} -> {m.linkname!r} goes through "
                                 f"{e.where!r}, which is not a directory; refused") from None
        try:
            try:
                st = os.stat(target_parts[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                raise not_here from None
            if stat.S_ISDIR(st.st_mode) or _is_whiteout(st):
                raise InvalidArchive(f"{self.what}: hardlink {name!r} -> {m.linkname!r}: target is not a file")
            # linkat without AT_SYMLINK_FOLLOW: a link to a symlink is a link to the symlink itself.
            os.link(target_parts[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)

    def finish(self) -> None:
        # Directory modes and times last, deepest first: a 0555 directory must not block its children.
        # Each is opened again below the root without following links: a directory that a later
        # member replaced (by a symlink, a file, a whiteout) is not there any more and gets nothing.
        for parts, m in sorted(self.dirs.items(), key=lambda d: len(d[0]), reverse=True):
            try:
                fd = self.root.open(parts, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError, UnsafePath):
                continue
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EXDEV):
                    continue
                raise
            try:
                set_attrs_fd(fd, m.mode, self._owner(m), _ns(m.mtime))
            finally:
                os.close(fd)


class MemberReader(io.RawIOBase):
    """The content of regular member ``m`` of a plain tar read in stream mode ("r|"), taken
    straight from what tarfile reads from: its stream's buffer, then its file object. tarfile's own
    path (extractfile -> _FileInFile -> _Stream) reads a big member in 32 KiB blocks that it joins and
    slices again, two copies of every byte plus a BufferedReader's: most of the CPU of a load that
    is not hashing. Once tarfile has handed the member out, its stream sits at the member's data, and
    before the next header it seeks past whatever is left and the padding, so reading here is what
    its own reader would have done, without the copies. A sparse member, or a stream that is not
    tarfile's plain one where it should be (another Python's tarfile), goes through extractfile()."""

    def __init__(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        stream: Any = tf.fileobj
        self._direct = (not m.issparse() and type(stream).__name__ == "_Stream"
                        and getattr(stream, "comptype", "") == "tar" and isinstance(getattr(stream, "buf", None), bytes)
                        and hasattr(stream, "fileobj") and stream.tell() == m.offset_data)
        self._stream: Any = stream if self._direct else tf.extractfile(m)
        self._left = m.size

    @property
    def direct(self) -> bool:
        return self._direct

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if not self._direct:
            return bytes(self._stream.read(-1 if size is None else size))
        n = self._left if size is None or size < 0 else min(size, self._left)
        if n <= 0:
            return b""
        stream = self._stream
        buf = stream.buf
        if len(buf) >= n:
            data = buf[:n]
            stream.buf = buf[n:]
        else:
            rest = stream.fileobj.read(n - len(buf))
            data = buf + rest if buf else rest
            stream.buf = b""
        stream.pos += len(data)
        self._left = self._left - len(data) if data else 0  # an early end: the caller sees the shortfall
        return bytes(data)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _set_opaque(parent: int, name: str) -> None:
    fd = open_dir_rd(parent, name)
    try:
        os.setxattr(fd, OPAQUE_XATTR, b"y")
    finally:
        os.close(fd)


class TarReader:
    """Reads a (possibly compressed) tar stream member by member, strictly.

    Every reading error becomes InvalidArchive naming ``what``; the end-of-archive marker is
    checked (tarfile alone stops quietly at a stream cut on a member boundary, or at garbage);
    the uncompressed stream is hashed, so ``diff_id`` is known when ``members()`` is exhausted.
    """

    def __init__(self, fileobj: IO[bytes], what: str, bound: Bound | None = None,
                 tap: Callable[[bytes], None] | None = None, hashed: bool = True) -> None:
        self.what = what
        self.tap = tap
        self.hashed = hashed
        self.bound = bound
        self.compression = ""
        self.diff_id = ""
        self.size = 0
        self._fileobj = fileobj

    def members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        what = self.what
        with reading_errors(what):
            stream, self.compression = decompressed(self._fileobj)
            hashing = HashingReader(stream, self.bound, what, self.tap, self.hashed)
            tail = _TailReader(hashing)
            # 32 KiB reads, not tarfile's 10 KiB: a third of its Python-level calls on a big member; a
            # header read still slices at most that much (_TailReader keeps more than one read).
            with tarfile.open(fileobj=tail, mode="r|", errorlevel=2,  # type: ignore[call-overload]
                              bufsize=32 << 10) as tf:
                for m in tf:
                    yield tf, m
                tail.check_end(tf.offset, what)
            # What the tar reader left in its buffer plus the rest of the stream (zero padding).
            self.diff_id = _finish_hash(hashing, hashing)
            self.size = hashing.size


@contextlib.contextmanager
def reading_errors(what: str, member: str = "") -> Iterator[None]:
    """Turn what a broken stream raises (tar, gzip, zstd, EOF) into InvalidArchive naming ``what``;
    errors of the local filesystem (no space, permissions) pass through unchanged."""
    where = f"{what}: member {member!r}" if member else what
    try:
        yield
    except InvalidArchive:
        raise
    except tarfile.ReadError as e:
        raise InvalidArchive(f"{where}: not a valid tar stream or truncated: {e}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO):
            raise
        raise InvalidArchive(f"{where}: corrupt or truncated stream: {e}") from None
    except _DECOMPRESS_ERRORS as e:
        raise InvalidArchive(f"{where}: corrupt or truncated stream: {type(e).__name__}: {e}") from None


def apply_layer(fileobj: IO[bytes], dest: Path, what: str = "layer", bound: Bound | None = None,
                split: Path | None = None) -> LayerStats:
    """Apply a layer tarball (plain or compressed) to ``dest``, a fresh directory, in overlay format;
    refused (InvalidArchive naming ``what``) once it expands past ``bound``. With ``split`` (a
    directory), the tar-split that makes the tar again from ``dest`` is written there.

    Returns the stats, with ``diff_id`` the sha256 of the uncompressed tar. On error the directory
    is left partially written: the caller owns it and removes it (it is always a private temp dir).
    """
    stats = LayerStats()
    recorder = Recorder(split) if split is not None else None
    reader = TarReader(fileobj, what, bound, recorder.tap if recorder is not None else None)
    try:
        with Root(dest) as root:
            applier = _Applier(root, what, recorder)
            for tf, m in reader.members():
                with reading_errors(what, m.name):
                    applier.member(tf, m, stats)
            applier.finish()
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    if recorder is not None:
        recorder.close()
    stats.diff_id, stats.tar_size, stats.compression = reader.diff_id, reader.size, reader.compression
    return stats


def apply_tree(fileobj: IO[bytes], dest: Path, under: Sequence[str], what: str,
               check: Callable[[list[str], tarfile.TarInfo], None] | None = None) -> LayerStats:
    """Extract a plain tar (docker cp's, PUT /containers/{id}/archive) into ``dest``, an existing
    tree, below the directory ``under`` (components, no symlinks: the caller resolved them), with the
    layer checks. It is not a layer: names that would be whiteouts are refused. ``check(parts, m)``
    may refuse a member (docker's noOverwriteDirNonDir) before anything of it is written."""
    stats = LayerStats()
    reader = TarReader(fileobj, what)
    with Root(dest) as root:
        applier = _Applier(root, what)
        for tf, m in reader.members():
            with reading_errors(what, m.name):
                parts = member_parts(m.name, what)
                if parts and parts[-1].startswith(WHITEOUT_PREFIX):
                    raise InvalidArchive(f"{what}: member {m.name!r}: names starting with {WHITEOUT_PREFIX!r} "
                                         "are overlay whiteouts and cannot be copied into a container")
                if check is not None:
                    check([*under, *parts], m)
                m.name = "/".join([*under, *parts]) or "."
                if m.islnk():
                    m.linkname = "/".join([*under, *member_parts(m.linkname, what)])
                applier.member(tf, m, stats)
        applier.finish()
    return stats


class _TailReader:
    """Keeps the last bytes read, so the end of the archive can be checked: tarfile stops quietly at
    a truncated or garbage header once it has read a member; docker (Go) would fail there."""

    WINDOW = 1 << 16

    def __init__(self, raw: IO[bytes] | HashingReader) -> None:
        self._raw = raw
        # The chunks read last, kept as they came (not copied into one buffer: that copy was a
        # third of a big layer's load here), at least WINDOW bytes of them.
        self._chunks: list[bytes] = []
        self._kept = 0
        self._start = 0  # stream offset of _chunks[0]

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._chunks.append(data)
            self._kept += len(data)
            while self._kept - len(self._chunks[0]) >= self.WINDOW:
                first = self._chunks.pop(0)
                self._kept -= len(first)
                self._start += len(first)
        return data

    @property
    def _buf(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def check_end(self, offset: int, what: str) -> None:
        # Make sure the block at the end offset was read (tarfile may not have asked for it yet).
        while self._start + self._kept < offset + tarfile.BLOCKSIZE:
            if not self.read(tarfile.BLOCKSIZE):
                break
        if offset < self._start:
            return
        block = bytes(self._buf[offset - self._start : offset - self._start + tarfile.BLOCKSIZE])
        if len(block) < tarfile.BLOCKSIZE:
            raise InvalidArchive(f"{what}: truncated tar stream: it ends at byte {offset + len(block)} "
                                 "without an end-of-archive marker")
        if block != bytes(tarfile.BLOCKSIZE):
            raise InvalidArchive(f"{what}: invalid tar header at byte {offset}")


def _finish_hash(reader: Any, hashing: HashingReader) -> str:
    while reader.read(CHUNK):
        pass
    return hashing.digest()


def digest_tar_stream(fileobj: IO[bytes], what: str = "layer") -> tuple[str, int]:
    """diff_id and uncompressed size of a (possibly compressed) layer, checking that it decompresses."""
    try:
        stream, _ = decompressed(fileobj)
        h = hashlib.sha256()
        size = 0
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    except _DECOMPRESS_ERRORS as e:
        raise InvalidArchive(f"{what}: corrupt or truncated stream: {type(e).__name__}: {e}") from None
    return "sha256:" + h.hexdigest(), size


# --- diff and flatten -------------------------------------------------------------------------------

def _is_whiteout_entry(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque_fd(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


class _TarWriter:
    def __init__(self, out: IO[bytes] | None) -> None:
        self.hashing = HashingWriter(out)
        self.tf = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=self.hashing, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self.links: dict[tuple[int, int], str] = {}

    def add(self, name: str, path: Path, st: os.stat_result, dir_fd: int | None = None) -> None:
        """One entry; with ``dir_fd``, ``path`` is a name in that directory, opened O_NOFOLLOW and
        checked to be the inode ``st`` describes (a running container may swap it for a link)."""
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                info.type = tarfile.LNKTYPE
                info.linkname = self.links[key]
                self.tf.addfile(info)
                return
            if st.st_nlink > 1:
                self.links[key] = name
            info.type = tarfile.REGTYPE
            info.size = st.st_size
            if dir_fd is None:
                with open(path, "rb") as f:
                    self.tf.addfile(info, f)
                return
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as f:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino, now.st_size) != (st.st_dev, st.st_ino, st.st_size):
                    raise ImageError(f"{name} changed while it was archived; try again")
                self.tf.addfile(info, f)
            return
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path, dir_fd=dir_fd)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:
            return  # sockets are not archived (as tar and docker do)
        self.tf.addfile(info)

    def whiteout(self, name: str, st: os.stat_result | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.REGTYPE
        info.mode = 0o644
        info.mtime = int(st.st_mtime) if st else 0
        self.tf.addfile(info, io.BytesIO(b""))

    def close(self) -> str:
        self.tf.close()
        return self.hashing.digest()


def write_diff(upper: Path, out: IO[bytes] | None) -> str:
    """Tar of an overlay upper (or layer) directory with overlay whiteouts turned into OCI ones.

    Returns the diff_id (sha256 of the tar written). Entries are sorted, so the same tree gives the
    same digest.
    """
    writer = _TarWriter(out)

    # Walked with directory descriptors and O_NOFOLLOW at every step: the upper dir of a running
    # container changes under us, and a directory swapped for a symlink to / must not put the
    # host's files in the tar.
    def walk(dfd: int, prefix: str) -> None:
        with os.scandir(dfd) as it:
            names = sorted(e.name for e in it)
        for base in names:
            name = prefix + base
            try:
                st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since it was listed
            if _is_whiteout_entry(st):
                writer.whiteout(prefix + WHITEOUT_PREFIX + base, st)
                continue
            writer.add(name, Path(base), st, dir_fd=dfd)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    if _is_opaque_fd(cfd):
                        writer.whiteout(name + "/" + WHITEOUT_OPAQUE, st)
                    walk(cfd, name + "/")
                finally:
                    os.close(cfd)

    top = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walk(top, "")
    finally:
        os.close(top)
    return writer.close()


def write_flattened(layers: Sequence[Path], out: IO[bytes]) -> str:
    """docker export: the merged filesystem of layer directories (``layers[0]`` on top), as overlay
    would show it, without mounting anything. Returns the sha256 of the tar written."""
    writer = _TarWriter(out)

    # Directory descriptors opened O_NOFOLLOW, as in write_diff: the top layer of a running
    # container changes while it is exported.
    def walk(stack: list[int], prefix: str) -> None:
        names: set[str] = set()
        for fd in stack:
            names.update(os.listdir(fd))
        for name in sorted(names):
            top: tuple[int, os.stat_result] | None = None
            below: list[int] = []
            try:
                for fd in stack:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if top is not None and not stat.S_ISDIR(st.st_mode):
                        break  # a whiteout or file below a directory ends the merge
                    if top is None:
                        top = (fd, st)
                        if not stat.S_ISDIR(st.st_mode):
                            break
                    cfd = _open_dir(fd, name)
                    if cfd < 0:
                        break
                    below.append(cfd)
                    if _is_opaque_fd(cfd):
                        break
                if top is None or _is_whiteout_entry(top[1]):
                    continue
                writer.add(prefix + name, Path(name), top[1], dir_fd=top[0])
                if stat.S_ISDIR(top[1].st_mode):
                    walk(below, prefix + name + "/")
            finally:
                for cfd in below:
                    os.close(cfd)

    tops: list[int] = []
    try:
        for layer in layers:
            tops.append(os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        walk(tops, "")
    finally:
        for fd in tops:
            os.close(fd)
    return writer.close()


def _open_dir(parent: int, name: str) -> int:
    """A descriptor of the directory ``name`` in ``parent``, or -1 if it is one no longer."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except (NotADirectoryError, FileNotFoundError):
        return -1
    except OSError as e:
        if e.errno == errno.ELOOP:
            return -1
        raise


def iter_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` (relative name, lstat), sorted; used for sizes and comparisons."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            yield os.path.relpath(p, root), os.lstat(p)


def tree_size(root: Path) -> int:
    """Bytes of regular-file content under ``root``, each inode once (``docker ps -s`` counts this)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for _name, st in iter_files(root):
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
