"""A layer's tar made again, byte for byte, from its unpacked directory (docker's tar-split).

An image should cost its size once on disk: the unpacked layer is what containers use, so the
layer tar (its blob) is not kept. What the tar holds besides the regular files' contents (headers,
PAX records, padding, the end-of-archive blocks, the data of members that make no file) is
recorded while the layer is applied, in ``tar-split`` beside the layer's ``fs``, compressed
(about 1-2 % of a layer of small files, nothing for a layer of big ones). ``open_layer_tar`` plays
it back with the contents read from ``fs`` and checks the result against the layer's diff_id as it
streams, so save and push hand out the very bytes that were loaded, or fail naming the layer.

A regular file that a later member of the same layer replaces or removes (a name given twice, a
directory replaced by a file) is no longer in ``fs``: its content is copied into
``tar-split.inline`` just before the applier removes it. Recording sits inside the one unpack path
(layers.py ``_Applier``) and only reads what it wrote; it adds no way of writing to the layer.

Records in ``tar-split`` (a zlib stream): ``R`` + u32 length + bytes (copied as they are), ``F`` +
u64 size + u16 length + path (``size`` bytes of the file at ``path`` in ``fs``, or of entry n's
inline copy when ``tar-split.inline.json`` names n).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ImageError, InvalidArchive
from .safefs import Root

SPLIT = "tar-split"
INLINE = "tar-split.inline"
INLINE_INDEX = "tar-split.inline.json"
CHUNK = 1 << 20
_R = struct.Struct(">cI")
_F = struct.Struct(">cQH")
_FLUSH = 1 << 16


class Recorder:
    """Fed every byte of the uncompressed layer stream (``tap``) and told which byte ranges are
    regular files' contents (``content``); writes everything else to ``dir/tar-split``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._out = open(directory / SPLIT, "xb")  # noqa: SIM115 - closed in close()
        self._z = zlib.compressobj(1)
        self._raw = bytearray()  # R bytes not yet written
        self._pending: list[tuple[int, memoryview]] = []  # bytes seen, not yet classified, in order
        self._seen = 0  # stream offset just past the last byte tapped
        self._drop = (0, 0)  # the content range being skipped
        self._entries = 0
        self._live: dict[tuple[str, ...], tuple[int, int]] = {}  # path -> (entry, size) still in fs
        self._inline: dict[int, tuple[int, int]] = {}  # entry -> (offset, size) in tar-split.inline
        self._inline_file: Any = None

    # --- the stream --------------------------------------------------------------------------------

    def tap(self, data: bytes) -> None:
        if not data:
            return
        start = self._seen
        self._seen += len(data)
        self._pending.append((start, memoryview(data)))
        self._skip()

    def content(self, offset: int, size: int, parts: Sequence[str]) -> None:
        """Bytes [offset, offset+size) of the stream are the content of the file at ``parts``."""
        if size <= 0:
            return
        self._emit_until(offset)
        self._drop = (offset, offset + size)
        self._skip()
        self._put_raw_flush()
        path = os.fsencode("/".join(parts))
        self._write(_F.pack(b"F", size, len(path)) + path)
        self._live[tuple(parts)] = (self._entries, size)
        self._entries += 1

    def _emit_until(self, offset: int) -> None:
        while self._pending:
            start, mv = self._pending[0]
            if start >= offset:
                return
            n = min(len(mv), offset - start)
            self._raw += mv[:n]
            if len(self._raw) >= _FLUSH:
                self._put_raw_flush()
            if n == len(mv):
                self._pending.pop(0)
            else:
                self._pending[0] = (start + n, mv[n:])

    def _skip(self) -> None:
        lo, hi = self._drop
        while self._pending:
            start, mv = self._pending[0]
            if start >= hi or start < lo:
                return
            n = min(len(mv), hi - start)
            if n == len(mv):
                self._pending.pop(0)
            else:
                self._pending[0] = (start + n, mv[n:])

    def _put_raw_flush(self) -> None:
        if self._raw:
            self._write(_R.pack(b"R", len(self._raw)) + bytes(self._raw))
            self._raw.clear()

    def _write(self, data: bytes) -> None:
        self._out.write(self._z.compress(data))

    # --- files the layer removes again ---------------------------------------------------------------

    def removing(self, root: Root, parts: Sequence[str], is_dir: bool) -> None:
        """The applier is about to remove ``parts`` (with everything below it when a directory):
        copy the contents recorded there, which the tar still needs."""
        key = tuple(parts)
        if is_dir:
            n = len(key)
            doomed = [k for k in self._live if k[:n] == key and len(k) > n]
        else:
            doomed = [key] if key in self._live else []
        for k in doomed:
            entry, size = self._live.pop(k)
            if self._inline_file is None:
                self._inline_file = open(self.dir / INLINE, "xb")  # noqa: SIM115 - closed in close()
            offset = self._inline_file.tell()
            fd = root.open(k, os.O_RDONLY)
            try:
                copied = _copy_fd(fd, size, self._inline_file.write)
            finally:
                os.close(fd)
            if copied != size:
                raise ImageError(f"tar-split: {'/'.join(k)} changed size while its layer was applied")
            self._inline[entry] = (offset, size)

    def close(self) -> None:
        """The stream has ended: what was not content is the tar's tail."""
        self._emit_until(self._seen)
        self._put_raw_flush()
        self._out.write(self._z.flush())
        self._out.close()
        if self._inline_file is not None:
            self._inline_file.close()
            (self.dir / INLINE_INDEX).write_text(json.dumps({str(k): v for k, v in self._inline.items()}))

    def abort(self) -> None:
        self._out.close()
        if self._inline_file is not None:
            self._inline_file.close()


def _copy_fd(fd: int, size: int, write: Any) -> int:
    done = 0
    while done < size:
        chunk = os.read(fd, min(CHUNK, size - done))
        if not chunk:
            break
        write(chunk)
        done += len(chunk)
    return done


def has_split(directory: Path) -> bool:
    return (directory / SPLIT).is_file()


def _records(path: Path) -> Iterator[tuple[bytes, int, bytes]]:
    """(kind, size, R bytes or F path) from a tar-split file."""
    d = zlib.decompressobj()
    buf = bytearray()
    with open(path, "rb") as f:
        eof = False
        while True:
            while not eof and len(buf) < _F.size + 65536:
                chunk = f.read(CHUNK)
                if not chunk:
                    buf += d.flush()
                    eof = True
                    break
                buf += d.decompress(chunk)
            if not buf:
                return
            kind = bytes(buf[:1])
            if kind == b"R":
                _, n = _R.unpack_from(buf)
                while len(buf) < _R.size + n and not eof:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        buf += d.flush()
                        eof = True
                    else:
                        buf += d.decompress(chunk)
                if len(buf) < _R.size + n:
                    raise ImageError(f"{path}: truncated")
                yield b"R", n, bytes(buf[_R.size : _R.size + n])
                del buf[: _R.size + n]
            elif kind == b"F":
                _, size, plen = _F.unpack_from(buf)
                yield b"F", size, bytes(buf[_F.size : _F.size + plen])
                del buf[: _F.size + plen]
            else:
                raise ImageError(f"{path}: unknown record {kind!r}")


def _chunks(directory: Path, what: str) -> Iterator[bytes]:
    inline: dict[int, tuple[int, int]] = {}
    index = directory / INLINE_INDEX
    if index.exists():
        inline = {int(k): (int(v[0]), int(v[1])) for k, v in json.loads(index.read_text()).items()}
    inline_f = open(directory / INLINE, "rb") if inline else None  # noqa: SIM115 - closed below
    entry = 0
    try:
        with Root(directory / "fs") as root:
            for kind, size, data in _records(directory / SPLIT):
                if kind == b"R":
                    yield data
                    continue
                name = os.fsdecode(data)
                if entry in inline:
                    assert inline_f is not None
                    offset, n = inline[entry]
                    inline_f.seek(offset)
                    left = n
                    while left:
                        chunk = inline_f.read(min(CHUNK, left))
                        if not chunk:
                            raise ImageError(f"{what}: the kept copy of {name} is truncated")
                        left -= len(chunk)
                        yield chunk
                else:
                    fd = root.open(name.split("/"), os.O_RDONLY)
                    try:
                        done = 0
                        while done < size:
                            chunk = os.read(fd, min(CHUNK, size - done))
                            if not chunk:
                                raise ImageError(f"{what}: {name} is shorter than the layer's tar says")
                            done += len(chunk)
                            yield chunk
                    finally:
                        os.close(fd)
                entry += 1
    finally:
        if inline_f is not None:
            inline_f.close()


class LayerTar(io.RawIOBase):
    """The layer's tar as a readable stream; raises once its bytes do not hash to ``diff_id``."""

    def __init__(self, directory: Path, diff_id: str, size: int, what: str) -> None:
        self._it = _chunks(directory, what)
        self._buf = memoryview(b"")
        self._hash = hashlib.sha256()
        self.diff_id = diff_id
        self.size = size
        self.done = 0
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                chunk = next(self._it)
            except StopIteration:
                self._check()
                return 0
            self._hash.update(chunk)
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.done += n
        return n

    def _check(self) -> None:
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.diff_id or (self.size >= 0 and self.done != self.size):
            raise InvalidArchive(f"{self.what}: the unpacked layer no longer makes its tar "
                                 f"(expected {self.diff_id}, {self.size} bytes; got {actual}, {self.done})")


def open_layer_tar(directory: Path, diff_id: str, size: int, what: str = "layer") -> io.BufferedReader:
    """The tar of the committed snapshot in ``directory`` (``fs`` + ``tar-split``), verified as read."""
    if not has_split(directory):
        raise ImageError(f"{what}: no tar-split beside the layer, and its blob is not kept")
    return io.BufferedReader(LayerTar(directory, diff_id, size, what), CHUNK)


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info
