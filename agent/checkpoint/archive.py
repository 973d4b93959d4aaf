"""Checkpoint archives in the layout Podman and checkpointctl use, zstd-compressed:

    config.dump       the container's record (dockyard's own config, as JSON)
    spec.dump         the runtime spec the container ran with
    checkpoint/       CRIU's images
    rootfs-diff.tar   the container's writable layer (OCI whiteouts for deletions)
    deleted.files     paths deleted from the image, one JSON list (also as whiteouts above)
    network.status    the container's network endpoint, JSON
    stats-dump        how long the dump took, JSON
    volumes.json      dockyard's: the container's volumes (labels, options, carried or not)
    volumes/NAME/...  dockyard's: each carried volume's content, as a tree (owners, modes, links)

Unpacking is hostile-input safe: only these names, no links, no paths out of the target (each file
is created below it through agent/images/safefs.py); rootfs-diff.tar is applied later as a layer,
through the same checks as any image layer. Inside a volume's
tree links are data: they are made as links and never followed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from agent.images.safefs import Root

ALLOWED_TOP = {"config.dump", "spec.dump", "checkpoint", "rootfs-diff.tar", "deleted.files", "network.status",
               "stats-dump", "volumes.json", "volumes"}
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class ArchiveError(Exception):
    pass


def pack(out: BinaryIO, *, config: dict[str, Any], spec: dict[str, Any], images_dir: Path | None, rootfs_diff: Path,
         network: dict[str, Any] | None, stats: dict[str, Any], level: int = 3,
         volumes: dict[str, dict[str, Any]] | None = None) -> None:
    """level: zstd's; migrations use 1 (memory pages hardly compress, and every ms is downtime).
    volumes: name -> {"labels", "options", "anonymous", "path"}: path (the data directory) is
    carried as volumes/NAME/, unless it is None (a volume whose content lives on its device)."""
    cctx = zstandard.ZstdCompressor(level=level, threads=-1)
    with cctx.stream_writer(out, closefd=False) as z, tarfile.open(fileobj=z, mode="w|") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))

        add_bytes("config.dump", json.dumps(config, indent=1).encode())
        add_bytes("spec.dump", json.dumps(spec, indent=1).encode())
        add_bytes("network.status", json.dumps(network or {}).encode())
        add_bytes("stats-dump", json.dumps(stats).encode())
        deleted = _deleted_files(rootfs_diff)
        add_bytes("deleted.files", json.dumps(deleted).encode())
        tar.add(str(rootfs_diff), arcname="rootfs-diff.tar")
        for p in sorted(images_dir.iterdir()) if images_dir is not None else ():
            if p.is_file():
                tar.add(str(p), arcname=f"checkpoint/{p.name}")
        if volumes:
            records = {name: {k: v for k, v in rec.items() if k != "path"} | {"carried": rec.get("path") is not None}
                       for name, rec in volumes.items()}
            add_bytes("volumes.json", json.dumps(records).encode())
            for name, rec in sorted(volumes.items()):
                if rec.get("path") is not None:
                    tar.add(str(rec["path"]), arcname=f"volumes/{name}", recursive=True)


def _deleted_files(diff: Path) -> list[str]:
    out = []
    with tarfile.open(diff) as t:
        for m in t:
            base = os.path.basename(m.name)
            if base.startswith(".wh.") and base != ".wh..wh..opq":
                out.append("/" + os.path.join(os.path.dirname(m.name), base[4:]).lstrip("./"))
    return out


def unpack(src: BinaryIO, target: Path, cold: bool = False) -> dict[str, Any]:
    """Unpack into target (which must be empty); returns {"config", "spec", "network", "stats"}.

    A cold archive (a stopped container's layer and config, for cold migration) has no CRIU images.
    """
    target.mkdir(parents=True, exist_ok=True)
    (target / "checkpoint").mkdir(exist_ok=True)
    dctx = zstandard.ZstdDecompressor()
    try:
        with Root(target) as root, dctx.stream_reader(src) as z, tarfile.open(fileobj=z, mode="r|") as tar:
            for m in tar:
                name = m.name.lstrip("./")
                top = name.split("/", 1)[0]
                if top not in ALLOWED_TOP or ".." in name.split("/") or name.startswith("/"):
                    raise ArchiveError(f"checkpoint archive: unexpected member {m.name!r}")
                if top == "volumes":
                    _extract_volume_member(tar, m, name, target / "volumes")
                    continue
                if m.isdir():
                    continue
                if not m.isfile():
                    raise ArchiveError(f"checkpoint archive: {m.name!r} is not a regular file")
                if top == "checkpoint" and name.count("/") != 1:
                    raise ArchiveError(f"checkpoint archive: nested member {m.name!r}")
                f = tar.extractfile(m)
                assert f is not None
                try:
                    fd = root.open(name.split("/"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    raise ArchiveError(f"checkpoint archive: {m.name!r} appears twice") from None
                with os.fdopen(fd, "wb") as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
        raise ArchiveError(f"checkpoint archive is corrupt or truncated: {e}") from e
    for needed in ("config.dump", "spec.dump", "rootfs-diff.tar"):
        if not (target / needed).exists():
            raise ArchiveError(f"checkpoint archive: {needed} is missing")
    if not cold and not any((target / "checkpoint").iterdir()):
        raise ArchiveError("checkpoint archive: checkpoint/ holds no CRIU images")
    try:
        volumes = json.loads((target / "volumes.json").read_text()) if (target / "volumes.json").exists() else {}
        if not isinstance(volumes, dict) or not all(isinstance(n, str) and _VOLUME_NAME.match(n) for n in volumes):
            raise ArchiveError("checkpoint archive: volumes.json is not a map of volume names")
        for n, rec in volumes.items():
            if rec.get("carried") and not (target / "volumes" / n).is_dir():
                raise ArchiveError(f"checkpoint archive: volume {n}'s content is missing")
        return {
            "volumes": volumes,
            "config": json.loads((target / "config.dump").read_text()),
            "spec": json.loads((target / "spec.dump").read_text()),
            "network": json.loads((target / "network.status").read_text()) if (target / "network.status").exists() else {},
            "stats": json.loads((target / "stats-dump").read_text()) if (target / "stats-dump").exists() else {},
        }
    except ValueError as e:
        raise ArchiveError(f"checkpoint archive: bad JSON: {e}") from e


def _extract_volume_member(tar: tarfile.TarFile, m: tarfile.TarInfo, name: str, root: Path) -> None:
    """One member of volumes/NAME/...: made under root/NAME through safefs (never through a link),
    with its owner, mode and times."""
    from agent.images.safefs import UnsafePath, set_attrs, set_attrs_fd

    parts = name.split("/")[1:]
    if not parts or not _VOLUME_NAME.match(parts[0]) or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(f"checkpoint archive: unexpected volume member {m.name!r}")
    root.mkdir(exist_ok=True)
    mode = stat.S_IMODE(m.mode)
    owner = (m.uid, m.gid)
    times = (int(m.mtime * 1e9),) * 2
    with Root(root) as r:
        try:
            parent = r.opendir(parts[:-1], create=True)
        except (UnsafePath, OSError) as e:
            raise ArchiveError(f"checkpoint archive: {m.name!r} goes through a link or a file: {e}") from None
        leaf = parts[-1]
        try:
            if m.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(leaf, 0o700, dir_fd=parent)
                set_attrs(parent, leaf, mode, owner, None)
            elif m.isfile():
                src = tar.extractfile(m)
                assert src is not None
                out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=parent)
                try:
                    while chunk := src.read(1 << 20):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out, view):]
                    set_attrs_fd(out, mode, owner, times)
                finally:
                    os.close(out)
            elif m.issym():
                os.symlink(m.linkname, leaf, dir_fd=parent)
                set_attrs(parent, leaf, None, owner, times, symlink=True)
            elif m.islnk():
                link = m.linkname.lstrip("./").split("/")
                if len(link) < 3 or link[:2] != ["volumes", parts[0]] or any(p in ("", ".", "..") for p in link[2:]):
                    raise ArchiveError(f"checkpoint archive: hard link {m.name!r} points out of its volume")
                src_dir = r.opendir(link[1:-1])
                try:
                    os.link(link[-1], leaf, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
                finally:
                    os.close(src_dir)
            elif m.isfifo():
                os.mkfifo(leaf, mode, dir_fd=parent)
                set_attrs(parent, leaf, mode, owner, times)
            else:
                raise ArchiveError(f"checkpoint archive: {m.name!r} is a device or an unknown kind of file")
        except FileExistsError:
            raise ArchiveError(f"checkpoint archive: {m.name!r} appears twice") from None
        finally:
            os.close(parent)
