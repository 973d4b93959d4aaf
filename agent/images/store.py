"""Content store: blobs addressed by their sha256, as containerd's content store.

Layout: ``root/blobs/sha256/<hex>`` for committed blobs, ``root/ingest/<pid>-<random>`` for writes in
progress. A write goes to an ingest file while it is hashed; ``commit`` checks the digest (and the
size, when known), fsyncs and renames it into place. Until then the blob is invisible, so a broken
download, a wrong digest or a killed process never leaves a half blob under blobs/. Ingest files of
dead processes are removed when a store is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from .errors import ImageNotFound, InvalidArchive

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


def check_digest(digest: object, what: str = "digest") -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise naming ``what``."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InvalidArchive(f"{what}: {digest!r} is not a sha256 digest (sha256:<64 hex>)")
    return digest


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Writer:
    """One blob being written. Use as a context manager: leaving it without commit() discards it."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        self.path = store.root / "ingest" / f"{os.getpid()}-{secrets.token_hex(8)}"
        self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 - closed in commit/abort
        self._hash = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None

    def write(self, data: bytes) -> int:
        assert self._file is not None, "write after commit or abort"
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def copy_from(self, src: BinaryIO, limit: int | None = None) -> None:
        """Copy ``src`` to its end (or ``limit`` bytes: fewer means a truncated stream)."""
        left = limit
        while left is None or left > 0:
            chunk = src.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            self.write(chunk)
            if left is not None:
                left -= len(chunk)
        if left:
            raise InvalidArchive(f"truncated stream: {left} of {limit} bytes missing")

    def commit(self, expected: str | None = None, size: int | None = None, what: str = "blob") -> str:
        """Verify and publish the blob; returns its digest. On any mismatch nothing is kept."""
        assert self._file is not None, "commit after commit or abort"
        try:
            actual = "sha256:" + self._hash.hexdigest()
            if expected is not None and actual != expected:
                raise InvalidArchive(f"{what}: digest mismatch: expected {expected}, got {actual}")
            if size is not None and size != self.size:
                raise InvalidArchive(f"{what}: size mismatch: expected {size} bytes, got {self.size}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            target = self._store.path(actual)
            if target.exists():
                self.path.unlink()
            else:
                os.chmod(self.path, 0o444)
                os.rename(self.path, target)
            self.digest = actual
            return actual
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.digest is None:
            self.abort()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "ingest").mkdir(parents=True, exist_ok=True)
        self._clean_stale_ingests()

    def _clean_stale_ingests(self) -> None:
        for entry in (self.root / "ingest").iterdir():
            pid_text = entry.name.split("-", 1)[0]
            # A live process (this one included) may still be writing; a dead one never will.
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "blobs" / "sha256" / digest[len("sha256:") :]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} not found in the content store") from None

    def writer(self) -> Writer:
        return Writer(self)

    def ingest(self, src: BinaryIO, expected: str | None = None, size: int | None = None, what: str = "blob") -> str:
        """Copy a stream into the store; verified against ``expected``/``size`` when given."""
        if expected is not None:
            check_digest(expected, what)
        with self.writer() as w:
            w.copy_from(src, size)
            if size is not None and src.read(1):
                raise InvalidArchive(f"{what}: longer than its declared size {size}")
            return w.commit(expected, size, what)

    def adopt(self, path: Path, expected: str, size: int, what: str = "blob") -> str:
        """Move a file on the store's filesystem into the store as blob ``expected``, after checking
        its size and digest where it lies (no copy); on a mismatch it stays where it was."""
        check_digest(expected, what)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArchive(f"{what}: not a regular file")
            if st.st_size != size:
                raise InvalidArchive(f"{what}: size mismatch: expected {size} bytes, got {st.st_size}")
            h = hashlib.sha256()
            while chunk := os.read(fd, CHUNK):
                h.update(chunk)
            actual = "sha256:" + h.hexdigest()
            if actual != expected:
                raise InvalidArchive(f"{what}: digest mismatch: expected {expected}, got {actual}")
            os.fsync(fd)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
        target = self.path(actual)
        if target.exists():
            path.unlink()
        else:
            os.rename(path, target)
        return actual

    def write_bytes(self, data: bytes, expected: str | None = None, what: str = "blob") -> str:
        with self.writer() as w:
            w.write(data)
            return w.commit(expected, len(data), what)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} not found in the content store") from None

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def list(self) -> Iterator[str]:
        for entry in sorted((self.root / "blobs" / "sha256").iterdir()):
            yield "sha256:" + entry.name

    def total_size(self) -> int:
        return sum(e.stat().st_size for e in (self.root / "blobs" / "sha256").iterdir())


class Tee:
    """Reads from ``src`` and copies every byte to a content-store writer."""

    def __init__(self, src: IO[bytes], writer: Writer) -> None:
        self._src = src
        self._writer = writer

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._writer.write(data)
        return data

    def peek(self, n: int = 0) -> bytes:
        # No compression sniffing through the tee: the stream is already plain tar.
        return b"\0" * 8
