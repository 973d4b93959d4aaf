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


def in_mount(mounts: list[tuple[str, str]], path: str) -> tuple[str, str] | None:
    """(target, host directory) of the container's volumes and binds -> (the directory, the path
    inside it) when `path` is at or below a target (the deepest wins), as the container sees it."""
    norm = os.path.normpath("/" + path.lstrip("/"))
    best: tuple[str, str] | None = None
    for target, source in mounts:
        t = os.path.normpath(target)
        if (norm == t or norm.startswith(t.rstrip("/") + "/")) and (best is None or len(t) > len(best[0])):
            best = (t, source)
    if best is None or not os.path.isdir(best[1]):
        return None
    rest = norm[len(best[0]):] or "/"
    if path.endswith("/.") and rest != "/":
        rest += "/."
    elif path.endswith("/") and rest != "/":
        rest += "/"
    elif path.endswith("/.") or path.endswith("/"):
        rest = "/."
    return best[1], rest


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


def changes(layers: list[Path]) -> list[dict[str, Any]]:
    """GET /containers/{id}/changes: the writable layer against the image's (Kind 0 modified,
    1 added, 2 deleted), read from the upper directory as overlay wrote it."""
    upper, lower = layers[0], MergedTree(layers[1:])
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        rel = os.path.relpath(dirpath, upper)
        base = [] if rel == "." else rel.split(os.sep)
        for name in sorted(dirnames + filenames):
            parts = [*base, name]
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                kind = 2
            else:
                kind = 0 if lower.lookup(parts) is not None else 1
            out.append({"Path": "/" + "/".join(parts), "Kind": kind})
    # The runtime writes these for each run, where docker bind-mounts them: not the container's changes.
    out = [d for d in out if d["Path"] not in RUNTIME_FILES]
    out = [d for d in out if not (d["Path"] == "/etc" and d["Kind"] == 0
                                  and not any(str(x["Path"]).startswith("/etc/") for x in out))]
    return sorted(out, key=lambda d: str(d["Path"]))


RUNTIME_FILES = {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}


def put_archive(layers: list[Path], mounted: Path | None, path: str, tar: IO[bytes],
                no_overwrite_dir_non_dir: bool) -> None:
    """PUT /containers/{id}/archive: extract `tar` into the directory `path` of the container, with
    the layer checks (agent/images/layers.py apply_tree: no member escapes, nothing is written
    through a symlink). A running container is written through its mounted rootfs; a stopped one
    into its writable layer, the directories on the way copied up with their attributes."""
    from agent.images.layers import apply_tree
    from agent.model import Conflict, InvalidArgument

    tree = MergedTree(layers)
    resolved = tree.resolve(split(path))
    found = tree.lookup(resolved)
    if found is None:
        raise NotFound(f"Could not find the file {path} in container")
    if not stat.S_ISDIR(found[1].st_mode):
        raise InvalidArgument(f"extraction point is not a directory: {path}")

    def check(parts: list[str], m: tarfile.TarInfo) -> None:
        if not no_overwrite_dir_non_dir:
            return
        there = tree.lookup(parts)
        if there is None:
            return
        is_dir = stat.S_ISDIR(there[1].st_mode)
        if is_dir and not m.isdir():
            raise Conflict(f"cannot overwrite directory \"/{'/'.join(parts)}\" with non-directory \"{m.name}\"")
        if m.isdir() and not is_dir:
            raise Conflict(f"cannot overwrite non-directory \"/{'/'.join(parts)}\" with directory \"{m.name}\"")

    if mounted is not None:
        apply_tree(tar, mounted, resolved, "archive", check)
        return
    upper = layers[0]
    for i in range(1, len(resolved) + 1):   # copy up the directories on the way
        target = upper.joinpath(*resolved[:i])
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise InvalidArgument(f"extraction point {path}: /{'/'.join(resolved[:i])} is not a directory")
        if not target.exists():
            st = tree.lookup(resolved[:i])
            assert st is not None
            os.mkdir(target, stat.S_IMODE(st[1].st_mode))
            os.chown(target, st[1].st_uid, st[1].st_gid, follow_symlinks=False)
            os.chmod(target, stat.S_IMODE(st[1].st_mode))
    apply_tree(tar, upper, resolved, "archive", check)
