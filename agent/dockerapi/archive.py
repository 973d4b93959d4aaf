"""GET and HEAD /containers/{id}/archive: a path of a container's filesystem as a tar, read from its
snapshot's layer directories by overlay's rules (agent/images/tree.py), so it works whether the
container runs or not and never follows a link out of the container's root."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from agent.images.tree import MergedTree, split
from agent.model import NotFound


def _find(layers: list[Path], path: str) -> tuple[MergedTree, list[str], Path, os.stat_result]:
    tree = MergedTree(layers)
    parts = split(path)
    # The parent is resolved as a chroot would; the last component is not followed (docker's rule
    # too: a link is archived as a link), unless the path ends in "/" or "/.".
    follow = path.endswith("/") or path.endswith("/.")
    resolved = tree.resolve(parts, follow_final=follow)
    found = tree.lookup(resolved)
    if found is None:
        raise NotFound(f"Could not find the file {path} in container")
    return tree, resolved, found[0], found[1]


def path_stat(layers: list[Path], path: str) -> dict[str, Any]:
    """The X-Docker-Container-Path-Stat header's JSON."""
    _tree, resolved, real, st = _find(layers, path)
    mode = stat.S_IMODE(st.st_mode)
    # Go's os.FileMode bits, as docker sends them
    if stat.S_ISDIR(st.st_mode):
        mode |= 1 << 31
    elif stat.S_ISLNK(st.st_mode):
        mode |= 1 << 27
    import datetime

    return {
        "name": resolved[-1] if resolved else "/", "size": st.st_size, "mode": mode,
        "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "linkTarget": os.readlink(real) if stat.S_ISLNK(st.st_mode) else "",
    }


def tar_path(layers: list[Path], path: str, out: IO[bytes]) -> None:
    tree, resolved, _real, _st = _find(layers, path)
    name = resolved[-1] if resolved else "."
    if path.endswith("/."):   # docker: "dir/." archives the directory's contents
        name = "."
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, tree, resolved, name)


def _add(tar: tarfile.TarFile, tree: MergedTree, parts: list[str], arcname: str) -> None:
    found = tree.lookup(parts)
    if found is None:
        return
    real, st = found
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for child in tree.listdir(parts):
            _add(tar, tree, [*parts, child], f"{arcname}/{child}" if arcname != "." else child)
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(real)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        with open(real, "rb") as f:
            tar.addfile(info, f)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    # sockets and devices are not archived (docker skips sockets; a container's /dev is the runtime's)
