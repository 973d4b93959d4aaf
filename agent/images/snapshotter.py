"""Overlay snapshotter, modelled on containerd's (Prepare/View/Commit/Mounts/Remove).

It never mounts: it returns ``Mount`` descriptions and the runtime mounts them (``mount_all`` does
it correctly, in the runtime's own child process). Layout under ``root`` (= store root/snapshots)::

    metadata.json   layers and views: key -> id, kind, parent, size (rewritten atomically under ``lock``)
    active.json     containers' writable layers, the same way but not fsync'd (see _locked)
    <id>/fs         the layer (committed) or the upper dir (active)
    <id>/work       overlay's workdir (active only)
    l/<LINK>        short symlink -> ../<id>/fs, as docker's overlay2

Committed snapshots are image layers, keyed by their chain id ("sha256:..."), immutable, and
unpacked once however many images share them. Active snapshots (containers) and views are keyed by
the caller. A snapshot with children cannot be removed: children go first.

The overlay option string must fit in one page (the kernel truncates mount data at 4096 bytes).
Options name lower layers by their ``l/`` links; when a deep stack still does not fit, ``mount_all``
mounts from a child process whose cwd is ``l/`` with relative names (containerd does the same):
10 bytes per layer, so even 400 layers fit (overlay itself allows 500).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from agent.errors import Conflict
from agent.runtime.spec import write_atomic

from .errors import ImageError, ImageInUse, ImageNotFound, InvalidArchive
from .layers import Bound, LayerStats, apply_layer, tree_size, write_diff, write_flattened
from .tarsplit import has_split, open_layer_tar

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_LINK_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
LINK_LEN = 10

KIND_COMMITTED = "committed"
KIND_ACTIVE = "active"
KIND_VIEW = "view"


@dataclass(frozen=True)
class Mount:
    """A mount to make, as containerd describes one: ``mount -t TYPE -o OPTIONS SOURCE TARGET``."""

    type: str
    source: str
    options: list[str]

    def data(self) -> str:
        return ",".join(o for o in self.options if o not in _FLAG_OPTIONS)


_FLAG_OPTIONS = {"ro", "rw", "bind", "rbind"}


class SnapshotExists(ImageError, Conflict):
    pass


@dataclass
class SnapshotInfo:
    key: str
    id: str
    kind: str
    parent: str
    created: float
    size: int
    link: str
    tar_size: int = -1  # bytes of the layer's tar, when a tar-split can make it again (tarsplit.py)


@functools.cache
def overlay_has_volatile() -> bool:
    """overlayfs takes `volatile` from Linux 5.10 on."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 10)


def _chain(parent: str, diff_id: str) -> str:
    from .config import chain_id

    if not parent:
        return diff_id
    return chain_id([parent, diff_id])


class Snapshotter:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "l").mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / "lock"
        self._lock_path.touch(exist_ok=True)
        self._clean()
        # Empty active-snapshot directories made ahead of need (see _take_spare).
        self._spares: builtins.list[Path] = []
        self._spares_lock = threading.Lock()
        self._refilling = False

    # --- metadata ---------------------------------------------------------------------------------

    # Image layers and views are recorded in metadata.json, fsync'd: losing one would break every
    # image built on it. Containers' writable layers (active snapshots) are recorded in
    # active.json, renamed into place but not fsync'd, like the containers' own state files
    # (runtime/spec.py write_atomic): an fsync costs 2-3 ms here, and a create and a rm each
    # change one. A record lost to a power cut leaves an orphan directory that _clean removes.
    _FILES = (("metadata.json", True), ("active.json", False))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Exclusive access to the metadata; changes to the dict yielded are written back atomically."""
        with open(self._lock_path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = self._read()
            before = self._split(meta)
            yield meta
            # Compared as dicts, serialised only when changed: a store of many layers makes for
            # a big metadata.json, and a container's create or rm changes only active.json.
            for (name, durable), old, new in zip(self._FILES, before, self._split(meta), strict=True):
                if new != old:
                    self._write(name, json.dumps({"snapshots": new}, sort_keys=True) if new else "", durable)

    @staticmethod
    def _split(meta: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """The records of metadata.json and of active.json (copies, one level deep: the records
        are flat)."""
        rest = {k: dict(v) for k, v in meta.items() if v.get("kind") != KIND_ACTIVE}
        active = {k: dict(v) for k, v in meta.items() if v.get("kind") == KIND_ACTIVE}
        return rest, active

    def _read(self) -> dict[str, dict[str, Any]]:
        snaps: dict[str, dict[str, Any]] = {}
        for name, _ in self._FILES:
            try:
                with open(self.root / name) as f:
                    snaps.update(json.load(f).get("snapshots", {}))
            except FileNotFoundError:
                pass
        return snaps

    def _write(self, name: str, data: str, durable: bool) -> None:
        if not data:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / name)
            return
        write_atomic(self.root / name, data, fsync=durable)

    def _clean(self) -> None:
        """Remove what an interrupted apply/remove left: temp dirs of dead processes, orphan dirs/links."""
        with self._locked() as meta:
            ids = {m["id"] for m in meta.values()}
            links = {m["link"] for m in meta.values()}
            for entry in self.root.iterdir():
                name = entry.name
                if name in ("l", "lock", "metadata.json", "active.json") or name in ids:
                    continue
                if name.startswith(("tmp-", "trash-")) or name.endswith(".tmp"):
                    pid = name.split("-")[1] if name.startswith(("tmp-", "trash-")) else name.split(".")[-2]
                    if pid.isdigit() and _alive(int(pid)):
                        continue
                _remove_path(entry)
            for link in (self.root / "l").iterdir():
                if link.name not in links:
                    with contextlib.suppress(FileNotFoundError):
                        link.unlink()

    def _info(self, meta: dict[str, dict[str, Any]], key: str) -> SnapshotInfo:
        m = meta.get(key)
        if m is None:
            raise ImageNotFound(f"snapshot {key!r} does not exist")
        return SnapshotInfo(key=key, **m)

    def stat(self, key: str) -> SnapshotInfo:
        return self._info(self._read(), key)

    def exists(self, key: str) -> bool:
        return key in self._read()

    def list(self) -> builtins.list[SnapshotInfo]:
        return [SnapshotInfo(key=k, **m) for k, m in sorted(self._read().items())]

    def _chain_of(self, meta: dict[str, dict[str, Any]], key: str) -> builtins.list[SnapshotInfo]:
        """The snapshot and its ancestors, top first."""
        out = []
        while key:
            info = self._info(meta, key)
            out.append(info)
            key = info.parent
        return out

    # --- containerd's interface -------------------------------------------------------------------

    def prepare(self, key: str, parent_chain_id: str) -> builtins.list[Mount]:
        """A writable snapshot on top of ``parent_chain_id`` (a committed layer; "" for scratch)."""
        return self._create(key, parent_chain_id, KIND_ACTIVE)

    def view(self, key: str, parent_chain_id: str) -> builtins.list[Mount]:
        """A read-only view of a committed layer stack."""
        if not parent_chain_id:
            raise ImageError("a view needs a parent layer")
        return self._create(key, parent_chain_id, KIND_VIEW)

    def mounts(self, key: str, volatile: bool = False) -> builtins.list[Mount]:
        """How to mount snapshot ``key``. With ``volatile`` (a container that is removed when it
        exits: `run --rm`), a writable overlay is mounted with overlayfs's `volatile` option where
        the kernel has it (5.10): without it, the umount at the container's exit syncs the whole
        filesystem below the upper dir (ovl_sync_fs -> sync_filesystem of the host's root fs here),
        12 ms of a `run --rm` at load and unbounded under other I/O, against 0.3 ms. It also makes
        fsync inside the container a no-op: nothing of such a container outlives it (it is never
        restarted or mounted again), as Podman does for --rm."""
        meta = self._read()
        info = self._info(meta, key)
        out = self._mounts(meta, info)
        if volatile and info.kind == KIND_ACTIVE and overlay_has_volatile():
            out = [Mount(m.type, m.source, [*m.options, "volatile"]) if m.type == "overlay" else m for m in out]
        return out

    def commit(self, key: str) -> str:
        """Turn an active snapshot into an immutable layer named by its chain id; returns its diff_id.

        If that layer already exists (same parent, same content) the active snapshot is just removed.
        """
        meta = self._read()
        info = self._info(meta, key)
        if info.kind != KIND_ACTIVE:
            raise ImageError(f"snapshot {key!r} is {info.kind}, only an active snapshot can be committed")
        fs = self.root / info.id / "fs"
        diff_id = write_diff(fs, None)
        size = tree_size(fs)
        chain = _chain(info.parent, diff_id)
        with self._locked() as meta:
            info = self._info(meta, key)
            if chain in meta:
                del meta[key]
                duplicate = True
            else:
                meta[chain] = {**meta.pop(key), "kind": KIND_COMMITTED, "size": size, "created": time.time()}
                duplicate = False
        if duplicate:
            self._delete_files(info)
        else:
            _remove_path(self.root / info.id / "work")
        return diff_id

    def fill(self, key: str, stream: IO[bytes], what: str = "layer", bound: Bound | None = None) -> LayerStats:
        """Unpack a layer tar into a new active snapshot's own (still empty) upper dir: a moved
        container's writable layer as it was where it was written. Applied as a layer below a fresh
        upper instead, it would drop out of the next diff() (and so out of the next move)."""
        info = self.stat(key)
        if info.kind != KIND_ACTIVE:
            raise ImageError(f"snapshot {key!r} is {info.kind}, only an active snapshot can be filled")
        fs = self.root / info.id / "fs"
        if any(fs.iterdir()):
            raise ImageError(f"snapshot {key!r} has changes of its own already")
        return apply_layer(stream, fs, what, bound)

    def diff(self, key: str, out: IO[bytes]) -> str:
        """The snapshot's own changes (upper dir) as an OCI layer tar; returns its diff_id."""
        info = self.stat(key)
        return write_diff(self.root / info.id / "fs", out)

    def remove(self, key: str, *, purge: bool = True) -> Path | None:
        """Forget the snapshot and delete its files. With purge=False the files are only moved
        aside, to a trash directory whose path is returned for the caller to purge() when it likes
        (a container's rm need not wait for its upper dir to be deleted); one that is never purged
        is swept at the next start, like the trash of an interrupted remove."""
        with self._locked() as meta:
            info = self._info(meta, key)
            children = sorted(k for k, m in meta.items() if m["parent"] == key)
            if children:
                raise ImageInUse(f"snapshot {key!r} has children ({', '.join(children)}); remove them first")
            del meta[key]
        return self._delete_files(info, purge)

    @staticmethod
    def purge(trash: Path) -> None:
        _remove_path(trash)

    def usage(self, key: str) -> int:
        info = self.stat(key)
        if info.kind == KIND_COMMITTED:
            return info.size
        return tree_size(self.root / info.id / "fs")

    # --- used by the image store ---------------------------------------------------------------------

    def apply(
        self, parent_chain_id: str, stream: IO[bytes], expected_diff_id: str | None = None, what: str = "layer",
        bound: Bound | None = None,
    ) -> tuple[str, LayerStats]:
        """Unpack a layer tarball on top of ``parent_chain_id`` as a committed snapshot.

        The layer is applied into a private temp dir and renamed into place only when it is whole and
        its diff_id matches; a refused or truncated layer leaves nothing. Returns (chain id, stats).
        """
        if parent_chain_id and not self.exists(parent_chain_id):
            raise ImageNotFound(f"parent layer {parent_chain_id} is not unpacked")
        tmp, stats = self.unpack(stream, what, bound)
        try:
            if expected_diff_id and stats.diff_id != expected_diff_id:
                raise InvalidArchive(
                    f"{what}: diff_id mismatch: config says {expected_diff_id}, content is {stats.diff_id}"
                )
            return self.install(tmp, parent_chain_id, stats), stats
        finally:
            _remove_path(tmp)

    def unpack(self, stream: IO[bytes], what: str = "layer", bound: Bound | None = None) -> tuple[Path, LayerStats]:
        """The first half of apply: the layer unpacked into a private temp dir (with its tar-split),
        before its parent is known (a layer's directory does not depend on the layers below it, so
        load unpacks an archive's layers as they stream past, before its manifest). The caller
        install()s it or removes it; one of a dead process is swept at the next start."""
        tmp = self.root / f"tmp-{os.getpid()}-{secrets.token_hex(12)}"
        try:
            (tmp / "fs").mkdir(parents=True)
            os.chmod(tmp / "fs", 0o755)
            return tmp, apply_layer(stream, tmp / "fs", what, bound, split=tmp)
        except BaseException:
            _remove_path(tmp)
            raise

    def discard(self, tmp: Path) -> None:
        _remove_path(tmp)

    def install(self, tmp: Path, parent_chain_id: str, stats: LayerStats) -> str:
        """The second half: ``tmp`` (from unpack) becomes the committed snapshot of ``stats.diff_id``
        on ``parent_chain_id``; when that exists already, ``tmp`` is left for the caller to remove."""
        chain = _chain(parent_chain_id, stats.diff_id)
        with self._locked() as meta:
            if chain in meta:
                return chain
            if parent_chain_id and parent_chain_id not in meta:
                raise ImageNotFound(f"parent layer {parent_chain_id} is not unpacked")
            sid = secrets.token_hex(12)
            link = self._new_link()
            os.rename(tmp, self.root / sid)
            os.symlink(f"../{sid}/fs", self.root / "l" / link)
            meta[chain] = {
                "id": sid,
                "kind": KIND_COMMITTED,
                "parent": parent_chain_id,
                "created": time.time(),
                "size": stats.size,
                "link": link,
                "tar_size": stats.tar_size,
            }
            stats.unpacked = True
        return chain

    def open_tar(self, chain: str, diff_id: str, what: str = "layer") -> BinaryIO | None:
        """The committed layer's tar, made again from its directory and checked against ``diff_id``
        as it is read; None when the layer was unpacked without a tar-split."""
        info = self.stat(chain)
        d = self.root / info.id
        if info.kind != KIND_COMMITTED or info.tar_size < 0 or not has_split(d):
            return None
        return open_layer_tar(d, diff_id, info.tar_size, what)  # type: ignore[return-value]

    def layer_dirs(self, key: str) -> builtins.list[Path]:
        """Directories of the snapshot and its parents, top first (for docker export)."""
        return [self.root / i.id / "fs" for i in self._chain_of(self._read(), key)]

    def export(self, key: str, out: IO[bytes]) -> str:
        return write_flattened(self.layer_dirs(key), out)

    def children(self, key: str) -> builtins.list[str]:
        return sorted(k for k, m in self._read().items() if m["parent"] == key)

    # --- internals ----------------------------------------------------------------------------------

    def _create(self, key: str, parent: str, kind: str) -> builtins.list[Mount]:
        if not key:
            raise ImageError("snapshot key must not be empty")
        sid = secrets.token_hex(12)
        with self._locked() as meta:
            if key in meta:
                raise SnapshotExists(f"snapshot {key!r} already exists")
            if parent:
                p = self._info(meta, parent)
                if p.kind != KIND_COMMITTED:
                    raise ImageError(f"parent {parent!r} is not a committed snapshot")
            d = self.root / sid
            spare = self._take_spare() if kind == KIND_ACTIVE else None
            if spare is not None:
                os.rename(spare, d)
            else:
                (d / "fs").mkdir(parents=True)
                os.chmod(d / "fs", 0o755)
                if kind == KIND_ACTIVE:
                    (d / "work").mkdir()
            link = self._new_link()
            os.symlink(f"../{sid}/fs", self.root / "l" / link)
            meta[key] = {"id": sid, "kind": kind, "parent": parent, "created": time.time(), "size": 0, "link": link}
            info = self._info(meta, key)
            return self._mounts(meta, info)

    def _mounts(self, meta: dict[str, dict[str, Any]], info: SnapshotInfo) -> builtins.list[Mount]:
        d = self.root / info.id
        lowers = self._chain_of(meta, info.parent) if info.parent else []
        if info.kind == KIND_COMMITTED:
            lowers = self._chain_of(meta, info.key)
            info = SnapshotInfo(**{**info.__dict__, "kind": KIND_VIEW})
        if info.kind == KIND_VIEW:
            if len(lowers) == 1:
                return [Mount("bind", str(self.root / lowers[0].id / "fs"), ["ro", "rbind"])]
            return [Mount("overlay", "overlay", [self._lowerdir(lowers)])]
        if not lowers:
            return [Mount("bind", str(d / "fs"), ["rw", "rbind"])]
        return [
            Mount(
                "overlay",
                "overlay",
                [f"workdir={d / 'work'}", f"upperdir={d / 'fs'}", self._lowerdir(lowers)],
            )
        ]

    def _lowerdir(self, lowers: Sequence[SnapshotInfo]) -> str:
        return "lowerdir=" + ":".join(str(self.root / "l" / i.link) for i in lowers)

    # A container's create should not wait for three mkdirs (about 0.75 ms each on the ext4 we
    # measured): its snapshot's directories are made ahead, on a thread, as tmp-<pid>-spare-<n>,
    # which _clean sweeps like any temp dir of a process that has gone.
    SPARES = 2

    def _take_spare(self) -> Path | None:
        with self._spares_lock:
            spare = self._spares.pop() if self._spares else None
            if not self._refilling:
                self._refilling = True
                threading.Thread(target=self._refill, daemon=True).start()
        return spare

    def _refill(self) -> None:
        try:
            while True:
                with self._spares_lock:
                    if len(self._spares) >= self.SPARES:
                        return
                d = self.root / f"tmp-{os.getpid()}-spare-{secrets.token_hex(6)}"
                (d / "fs").mkdir(parents=True)
                os.chmod(d / "fs", 0o755)
                (d / "work").mkdir()
                with self._spares_lock:
                    self._spares.append(d)
        except OSError:
            pass  # the root went away (tests), or is full: prepare makes its own
        finally:
            with self._spares_lock:
                self._refilling = False

    def _new_link(self) -> str:
        while True:
            link = "".join(secrets.choice(_LINK_ALPHABET) for _ in range(LINK_LEN))
            if not os.path.lexists(self.root / "l" / link):
                return link

    def _delete_files(self, info: SnapshotInfo, purge: bool = True) -> Path | None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "l" / info.link).unlink()
        src = self.root / info.id
        trash = self.root / f"trash-{os.getpid()}-{info.id}"
        try:
            os.rename(src, trash)
        except FileNotFoundError:
            return None
        if not purge:
            return trash
        _remove_path(trash)
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_path(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # Overlay's work/work dir is mode 000; as root rmtree copes, otherwise make it writable first.
        def onerror(func: Any, p: str, exc: Any) -> None:
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)

        shutil.rmtree(path, onerror=onerror)
    else:
        os.unlink(path)


# --- mounting (the runtime calls this in its own child process) --------------------------------------

def overlay_mount_data(mount: Mount) -> tuple[str | None, str]:
    """(directory to chdir to or None, the data string for mount(2)) that fits in one page."""
    data = mount.data()
    if mount.type != "overlay" or len(data) < PAGE_SIZE:
        return None, data
    options = list(mount.options)
    for i, opt in enumerate(options):
        if opt.startswith("lowerdir="):
            dirs = opt[len("lowerdir=") :].split(":")
            parents = {os.path.dirname(d) for d in dirs}
            if len(parents) != 1:
                break
            cwd = parents.pop()
            options[i] = "lowerdir=" + ":".join(os.path.basename(d) for d in dirs)
            compact = ",".join(o for o in options if o not in _FLAG_OPTIONS)
            if len(compact) >= PAGE_SIZE:
                break
            return cwd, compact
    raise ImageError(f"overlay mount options are {len(data)} bytes, over the kernel's {PAGE_SIZE}-byte limit")


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount the descriptions on ``target`` in order (containerd's mount.All)."""
    from agent.runtime import syscalls

    for m in mounts:
        if m.type == "bind":
            flags = syscalls.MS_BIND | (syscalls.MS_REC if "rbind" in m.options else 0)
            syscalls.mount(m.source, target, None, flags, None)
            if "ro" in m.options:
                syscalls.mount(None, target, None, flags | syscalls.MS_REMOUNT | syscalls.MS_RDONLY, None)
            continue
        cwd, data = overlay_mount_data(m)
        flags = syscalls.MS_RDONLY if "ro" in m.options else 0
        if cwd is None:
            syscalls.mount(m.source, target, m.type, flags, data)
        else:
            _mount_in(cwd, m.source, os.path.abspath(target), m.type, flags, data)


def _mount_in(cwd: str, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2) from a forked child whose cwd is ``cwd``, so relative lowerdirs resolve there."""
    from agent.runtime import syscalls

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            os.chdir(cwd)
            syscalls.mount(source, target, fstype, flags, data)
        except OSError as e:
            code = e.errno or 1
        finally:
            os.write(w, str(code).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        result = f.read()
    os.waitpid(pid, 0)
    code = int(result or "1")
    if code:
        raise OSError(code, f"mount {fstype} on {target}: {os.strerror(code)}", target)
