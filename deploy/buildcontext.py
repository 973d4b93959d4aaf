"""The build context as the client sends it (docker's CLI does this side too): the files of the
context directory that .dockerignore keeps, as a tar written with hand-made ustar headers.

Imported by the fast `build` (deploy/cli_local_images.py), so only the standard library's light
modules: tarfile only for a name that does not fit ustar.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

REGTYPE, DIRTYPE, SYMTYPE = b"0", b"5", b"2"
BLOCKSIZE = 512


def iter_context(root: Path, dockerfile: str = "Dockerfile") -> Iterator[str]:
    """Relative paths of the context that .dockerignore keeps (the client sends only these)."""
    from common.dockerignore import Matcher

    matcher = Matcher.from_file(root / ".dockerignore")
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if matcher.excluded(rel) and not matcher.may_include_below(rel):
                continue
            keep_dirs.append(d)
            if not matcher.excluded(rel):
                yield rel
        dirnames[:] = keep_dirs
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if rel in (dockerfile, ".dockerignore") or not matcher.excluded(rel):
                yield rel


def write_context(root: Path, out: IO[bytes], dockerfile: str = "Dockerfile",
                  warn: Callable[[str], None] | None = None) -> int:
    """Tar the context (owner 0:0 as docker sends it); returns the number of entries. Sockets
    cannot be archived: docker's CLI skips them with a warning, and so does this (``warn``).

    Headers are ustar, written here from lstat with whole-second mtimes (tarfile's took ~0.5 ms a
    member: an owner lookup and a PAX header each); a member whose name or link does not fit ustar
    gets tarfile's PAX header. The content of a hardlink is sent again, as a plain file."""
    n = 0
    for rel in iter_context(root, dockerfile):
        path = os.path.join(root, rel)
        st = os.lstat(path)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            kind, size, link = REGTYPE, st.st_size, ""
        elif stat.S_ISDIR(mode):
            kind, size, link = DIRTYPE, 0, ""
        elif stat.S_ISLNK(mode):
            kind, size, link = SYMTYPE, 0, os.readlink(path)
        else:
            if stat.S_ISSOCK(mode) and warn is not None:
                warn(f"archive: skipping {path!r} since it is a socket")
            continue  # nor fifos and devices, as before
        name = rel + "/" if kind == DIRTYPE else rel
        out.write(_ustar_header(name, stat.S_IMODE(mode), size, int(st.st_mtime), kind, link)
                  or _pax_header(name, stat.S_IMODE(mode), size, int(st.st_mtime), kind, link))
        if size:
            with open(path, "rb") as f:
                left = size
                while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                    out.write(chunk)
                    left -= len(chunk)
            if left:  # it shrank while we read: what the header promised, in zeros
                out.write(b"\0" * left)
            out.write(b"\0" * (-size % BLOCKSIZE))
        n += 1
    out.write(b"\0" * (2 * BLOCKSIZE))
    return n


def _ustar_header(name: str, mode: int, size: int, mtime: int, kind: bytes, link: str) -> bytes | None:
    raw, linkb = name.encode("utf-8", "surrogateescape"), link.encode("utf-8", "surrogateescape")
    prefix = b""
    if len(raw) > 100:
        cut = raw.rfind(b"/", 0, 156)
        if cut <= 0 or len(raw) - cut - 1 > 100:
            return None
        prefix, raw = raw[:cut], raw[cut + 1:]
    if len(linkb) > 100 or size >= 8 ** 11 or not (0 <= mtime < 8 ** 11):
        return None
    head = b"".join((raw.ljust(100, b"\0"), b"%07o\0" % mode, b"0000000\0", b"0000000\0", b"%011o\0" % size,
                     b"%011o\0" % mtime, b" " * 8, kind, linkb.ljust(100, b"\0"), b"ustar\x0000", b"\0" * 64,
                     b"0000000\0", b"0000000\0", prefix.ljust(155, b"\0"), b"\0" * 12))
    return head[:148] + b"%06o\0 " % sum(head) + head[156:]


def _pax_header(name: str, mode: int, size: int, mtime: int, kind: bytes, link: str) -> bytes:
    import tarfile

    info = tarfile.TarInfo(name)
    info.mode, info.size, info.mtime, info.type, info.linkname = mode, size, mtime, kind, link
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
