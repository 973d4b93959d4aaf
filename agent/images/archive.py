"""save and load: docker-archive (manifest.json, repositories, <layer>.tar) and OCI image layout
(oci-layout, index.json, blobs/sha256/...), both ways.

``load`` accepts what ``docker save`` (20.10 and 25+), ``skopeo copy ... docker-archive:`` and
``oci-archive:`` write, plain or gzip/zstd compressed. The archive is read once, as it streams:
a member that is a layer tar (plain or compressed) is unpacked as it passes into a temp dir of the
snapshotter (layers.py, the one unpack path), hashing it; the other members (JSON) go to a private
temp dir (regular files and directories only; symlinks, which docker save uses for repeated layers,
are kept as a table and resolved inside the archive, never on disk). Everything is checked before a
layer becomes a snapshot: JSON shapes, that every named file or blob exists, digests and sizes of
blobs, and each layer's diff_id against the config. A failed load removes the layers it added.

``save`` streams each layer into the archive: a blob as stored, or the tar made again from the
snapshot by its tar-split (tarsplit.py), checked against the diff_id as it goes.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from . import reference as refs
from .config import (
    LAYER_MEDIA_TYPES,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    Image,
    ImageConfig,
    chain_ids,
    host_architecture,
    load_json,
)
from .errors import ImageError, ImageNotFound, InvalidArchive, InvalidReference
from .layers import (
    CHUNK,
    Budget,
    HashingReader,
    LayerStats,
    MemberReader,
    TarReader,
    compression_of,
    decompressed,
    member_parts,
    reading_errors,
)
from .safefs import Root, UnsafePath
from .store import check_digest, sha256_bytes
from .tarsplit import tar_member

if TYPE_CHECKING:
    from .imagestore import ImageStore, LocalLayer
    from .snapshotter import Snapshotter

MAX_JSON = 16 << 20  # manifests and configs larger than this are refused
# A plain layer member up to this size is read into memory and hashed before anything of it is
# unpacked: one this host has already (a base image under most archives) is then not unpacked a
# second time and thrown away, which was a third of the agent's CPU for a load of a 50 MB image on
# busybox (ext4 takes ~100 us per file created here). A bigger member is unpacked as it streams.
SPOOL = 16 << 20


# --- reading an archive as it streams --------------------------------------------------------------------

@dataclass
class _Unpacked:
    """A member of the archive that is a layer tar (plain or compressed), unpacked as it streamed
    past into a temp dir of the snapshotter, before any manifest said where it goes."""

    dir: Path
    stats: LayerStats
    digest: str  # sha256 of the member as it is in the archive (an OCI layer blob's digest)
    size: int
    error: InvalidArchive | None = None
    chain: str = ""  # the snapshot it became, once installed (or that holds it already: ``known``)
    known: bool = False  # the layer was here before this load: nothing of it unpacked


@dataclass
class _Archive:
    root: Path
    symlinks: dict[str, str] = field(default_factory=dict)
    hardlinks: dict[str, str] = field(default_factory=dict)
    layers: dict[str, _Unpacked] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)  # diff_id -> chain of the layers here already

    def resolve(self, name: str, what: str) -> str:
        """The member an archive path names, following the archive's links inside it."""
        parts = _clean(name, what)
        for _ in range(40):
            for i in range(1, len(parts) + 1):
                prefix = "/".join(parts[:i])
                if prefix in self.symlinks:
                    target = self.symlinks[prefix]
                    base = [] if target.startswith("/") else parts[: i - 1]
                    parts = _clean("/".join([*base, target, *parts[i:]]), what)
                    break
                if i == len(parts) and prefix in self.hardlinks:
                    parts = _clean(self.hardlinks[prefix], what)
                    break
            else:
                member = "/".join(parts)
                if member in self.layers:
                    return member
                path = self.root.joinpath(*parts) if parts else self.root
                if not path.is_file() or path.is_symlink():
                    raise InvalidArchive(f"{what}: names {name!r}, which is not in the archive")
                return member
        raise InvalidArchive(f"{what}: too many levels of links resolving {name!r}")

    def exists(self, name: str) -> bool:
        try:
            self.resolve(name, "archive")
            return True
        except InvalidArchive:
            return False

    def size(self, member: str) -> int:
        layer = self.layers.get(member)
        return layer.size if layer is not None else self.root.joinpath(member).stat().st_size

    def read_bytes(self, name: str, what: str) -> bytes:
        member = self.resolve(name, what)
        if member in self.layers:
            raise InvalidArchive(f"{what}: {name} is a layer tar, not JSON")
        path = self.root.joinpath(member)
        if path.stat().st_size > MAX_JSON:
            raise InvalidArchive(f"{what}: {name} is larger than {MAX_JSON} bytes")
        return path.read_bytes()

    def read_json(self, name: str, what: str) -> Any:
        return load_json(self.read_bytes(name, what), f"{what}: {name}")

    def discard(self, snapshotter: Snapshotter) -> None:
        for layer in self.layers.values():
            snapshotter.discard(layer.dir)


def _clean(name: str, what: str) -> list[str]:
    """Resolve ``.`` and ``..`` lexically; climbing above the archive root is refused."""
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise InvalidArchive(f"{what}: path {name!r} escapes the archive")
            out.pop()
        else:
            out.append(part)
    return out


def _looks_like_layer(head: bytes, size: int) -> bool:
    """A tar (ustar or GNU magic, or an empty tar's zero blocks) or a compressed stream."""
    if compression_of(head):
        return True
    if len(head) >= 263 and head[257:262] == b"ustar":
        return True
    return size >= 1024 and len(head) >= 512 and head[:512] == bytes(512)


def _stream_archive(store: ImageStore, fileobj: IO[bytes], dest: Path, budget: Budget) -> _Archive:
    """Read the archive once: every member that is a layer is unpacked as it passes (through the
    one unpack path, layers.py) unless this host has it already, the rest (JSON, small) written
    below ``dest``; links kept as tables. Nothing of a layer is written twice, and nothing is read back."""
    archive = _Archive(dest, known=store.layer_chains())
    reader = TarReader(fileobj, "archive", hashed=False)
    try:
        with Root(dest) as root:
            for tf, m in reader.members():
                with reading_errors("archive", m.name):
                    _stream_member(store, root, archive, tf, m, budget)
    except BaseException:
        archive.discard(store.snapshotter)
        raise
    return archive


def _stream_member(store: ImageStore, root: Root, archive: _Archive, tf: tarfile.TarFile, m: tarfile.TarInfo,
                   budget: Budget) -> None:
    """Directories and regular files go to disk below the root (safefs: never through a link), layer
    tars into the snapshotter's temp dirs; links only into the archive's tables."""
    parts = member_parts(m.name, "archive")
    if not parts:
        return
    name = "/".join(parts)
    if m.issym():
        base = [] if m.linkname.startswith("/") else parts[:-1]
        _clean("/".join([*base, m.linkname]), f"archive: symlink {m.name!r}")
        archive.symlinks[name] = m.linkname
        return
    if m.islnk():
        archive.hardlinks[name] = "/".join(member_parts(m.linkname, "archive"))
        return
    if not (m.isdir() or m.isreg()):
        raise InvalidArchive(f"archive: member {m.name!r} has a type ({m.type!r}) an image archive never has")
    try:
        parent = root.opendir(parts[:-1], create=True)
    except UnsafePath as e:
        raise InvalidArchive(f"archive: member {m.name!r}: {e.where!r} is not a directory") from None
    try:
        try:
            st: os.stat_result | None = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if m.isdir():
            if name in archive.layers:
                raise InvalidArchive(f"archive: member {m.name!r} would replace a file")
            if st is None:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            elif not stat.S_ISDIR(st.st_mode):
                raise InvalidArchive(f"archive: member {m.name!r} would replace a file")
            return
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise InvalidArchive(f"archive: member {m.name!r} would replace a directory")
            os.unlink(parts[-1], dir_fd=parent)
        old = archive.layers.pop(name, None)
        if old is not None:  # the last member of a name wins, as on disk
            store.snapshotter.discard(old.dir)
        src = io.BufferedReader(MemberReader(tf, m), CHUNK)
        head = src.peek(512)[:512]
        if _looks_like_layer(head, m.size):
            plain = not compression_of(head)
            if plain and archive.known and m.size <= SPOOL:
                archive.layers[name] = _spooled_layer(store, archive, src, m, budget)
            else:
                archive.layers[name] = _unpack_layer(store, src, m, budget, plain=plain)
            return
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(src, f, CHUNK)
            if f.tell() != m.size:
                raise InvalidArchive(f"archive: member {m.name!r} is truncated")
    finally:
        os.close(parent)


def _spooled_layer(store: ImageStore, archive: _Archive, src: IO[bytes], m: tarfile.TarInfo,
                   budget: Budget) -> _Unpacked:
    """A small plain layer: read whole and hashed first; one this host has is only noted (its
    digest is its diff_id), any other is unpacked from memory."""
    data = src.read(m.size + 1)
    if len(data) != m.size:
        raise InvalidArchive(f"archive: member {m.name!r} is truncated")
    diff_id = sha256_bytes(data)
    chain = archive.known.get(diff_id)
    if chain is None:
        return _unpack_layer(store, io.BufferedReader(io.BytesIO(data)), m, budget, plain=True)
    budget.spend(len(data))  # counted as if unpacked: an install on another parent makes it again
    return _Unpacked(Path("/nonexistent"), LayerStats(diff_id=diff_id, tar_size=len(data)), diff_id, len(data),
                     chain=chain, known=True)


def _unpack_layer(store: ImageStore, src: IO[bytes], m: tarfile.TarInfo, budget: Budget, plain: bool) -> _Unpacked:
    what = f"layer {m.name}"
    # A plain tar's digest is its diff_id, which the unpack computes: hashed once, not twice.
    raw = HashingReader(src, None, what, hashed=not plain)
    try:
        # the reader itself (it has peek), not a BufferedReader around it: one copy of the layer fewer
        tmp, stats = store.snapshotter.unpack(cast("IO[bytes]", raw), what, budget.bound())
    except InvalidArchive as e:
        # Kept as this member's error: it matters only if a manifest names it as a layer. Past the
        # agent's bounds, nothing more is read, whatever it is.
        if "expands to more than" in str(e):
            raise
        raw.finish()
        return _Unpacked(Path("/nonexistent"), LayerStats(), raw.digest(), raw.size, error=e)
    raw.finish()
    digest = stats.diff_id if plain else raw.digest()
    budget.spend(stats.tar_size)
    if raw.size != m.size:
        store.snapshotter.discard(tmp)
        raise InvalidArchive(f"archive: member {m.name!r} is truncated")
    return _Unpacked(tmp, stats, digest, raw.size)


# --- load -----------------------------------------------------------------------------------------------

@dataclass
class _LayerSource:
    member: str  # the archive member holding the layer
    diff_id: str
    media_type: str = MEDIA_OCI_LAYER
    digest: str = ""  # OCI: the blob digest (compressed or not); docker-archive: unknown until read
    size: int = -1
    what: str = "layer"


@dataclass
class _Pending:
    config_bytes: bytes
    layers: list[_LayerSource]
    names: list[str]
    manifest_bytes: bytes | None = None
    what: str = ""


def load(store: ImageStore, fileobj: BinaryIO, named: list[str] | None = None) -> list[Image]:
    """Load a docker-archive or OCI layout. The archive is read once, as it comes: each layer is
    unpacked as it passes (the archive's own copy of a layer is never written), and everything is
    checked (JSON shapes, named files, digests, sizes, diff_ids against the configs) before a
    layer becomes a snapshot. A failed load removes what it added. ``named`` gets the names the
    archive itself gives its images, familiar form (docker's load reports those, not every tag)."""
    tmp = store.tmp / f"load-{os.getpid()}-{secrets.token_hex(6)}"
    tmp.mkdir()
    created_chains: list[str] = []
    archive: _Archive | None = None
    try:
        archive = _stream_archive(store, fileobj, tmp, store.limits.budget())
        if archive.exists("manifest.json"):
            pending = _read_docker_archive(archive)
        elif archive.exists("index.json"):
            pending = _read_oci_layout(archive)
        else:
            raise InvalidArchive(
                "archive: neither manifest.json (docker-archive) nor index.json (OCI layout) found"
            )
        if not pending:
            raise InvalidArchive("archive: it holds no images")
        if named is not None:
            named.extend(refs.parse(n).familiar() for p in pending for n in p.names)
        return [_install(store, archive, p, created_chains) for p in pending]
    except BaseException:
        store._forget_new([], created_chains)
        raise
    finally:
        if archive is not None:
            archive.discard(store.snapshotter)
        shutil.rmtree(tmp, ignore_errors=True)


def _as_str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArchive(f"{what}: must be a list of strings")
    return value


def _parse_config(config_bytes: bytes, what: str, layer_count: int) -> list[str]:
    cfg = load_json(config_bytes, what)
    if not isinstance(cfg, dict):
        raise InvalidArchive(f"{what}: must be a JSON object")
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict):
        raise InvalidArchive(f"{what}: rootfs is missing")
    diff_ids = _as_str_list(rootfs.get("diff_ids"), f"{what}: rootfs.diff_ids")
    for d in diff_ids:
        check_digest(d, f"{what}: rootfs.diff_ids")
    if len(diff_ids) != layer_count:
        raise InvalidArchive(f"{what}: rootfs.diff_ids has {len(diff_ids)} entries for {layer_count} layers")
    ImageConfig.from_oci(cfg.get("config"), f"{what}: config")
    return diff_ids


def _read_docker_archive(archive: _Archive) -> list[_Pending]:
    manifest = archive.read_json("manifest.json", "manifest.json")
    if not isinstance(manifest, list):
        raise InvalidArchive("manifest.json: must be a list")
    pending = []
    for i, entry in enumerate(manifest):
        what = f"manifest.json[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise InvalidArchive(f"{what}: Config must be a file name")
        layers = _as_str_list(entry.get("Layers"), f"{what}.Layers")
        tags = _as_str_list(entry.get("RepoTags"), f"{what}.RepoTags")
        config_bytes = archive.read_bytes(entry["Config"], f"{what}.Config")
        diff_ids = _parse_config(config_bytes, f"config {entry['Config']}", len(layers))
        names = []
        for tag in tags:
            try:
                names.append(str(refs.parse(tag)))
            except InvalidReference as e:
                raise InvalidArchive(f"{what}.RepoTags: {e}") from None
        sources = [
            _LayerSource(archive.resolve(layer, f"{what}.Layers"), diff_id, what=f"layer {layer}")
            for layer, diff_id in zip(layers, diff_ids, strict=True)
        ]
        pending.append(_Pending(config_bytes, sources, names, what=what))
    return pending


def _blob(archive: _Archive, desc: Any, what: str) -> tuple[str, str, int, str]:
    if not isinstance(desc, dict):
        raise InvalidArchive(f"{what}: descriptor must be an object")
    digest = desc.get("digest")
    size = desc.get("size")
    media_type = desc.get("mediaType", "")
    digest = check_digest(digest, f"{what}.digest")
    if not isinstance(size, int) or size < 0:
        raise InvalidArchive(f"{what}.size: must be a non-negative integer")
    name = "blobs/sha256/" + digest.removeprefix("sha256:")
    if not archive.exists(name):
        raise InvalidArchive(f"{what} names missing blob {digest}")
    member = archive.resolve(name, what)
    if archive.size(member) != size:
        raise InvalidArchive(f"{what}: blob {digest} is {archive.size(member)} bytes, descriptor says {size}")
    return member, digest, size, str(media_type)


def _verified_json(archive: _Archive, desc: Any, what: str) -> tuple[bytes, Any]:
    member, digest, size, _ = _blob(archive, desc, what)
    if size > MAX_JSON:
        raise InvalidArchive(f"{what}: blob {digest} is larger than {MAX_JSON} bytes")
    data = archive.read_bytes(member, what)
    if sha256_bytes(data) != digest:
        raise InvalidArchive(f"{what}: blob {digest} fails its digest (content is {sha256_bytes(data)})")
    return data, load_json(data, f"{what}: blob {digest}")


def _platform_ok(desc: dict[str, Any]) -> bool:
    plat = desc.get("platform") or {}
    return bool(plat.get("os", "linux") == "linux" and plat.get("architecture", host_architecture()) == host_architecture())


def _read_oci_layout(archive: _Archive) -> list[_Pending]:
    if archive.exists("oci-layout"):
        layout = archive.read_json("oci-layout", "oci-layout")
        if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
            raise InvalidArchive("oci-layout: imageLayoutVersion is missing")
    index = archive.read_json("index.json", "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArchive("index.json: manifests must be a list")
    pending: list[_Pending] = []
    for i, desc in enumerate(index["manifests"]):
        what = f"index.json manifests[{i}]"
        if not isinstance(desc, dict):
            raise InvalidArchive(f"{what}: descriptor must be an object")
        annotations = desc.get("annotations") or {}
        name = _name_from_annotations(annotations, what)
        manifest_bytes, manifest = _verified_json(archive, desc, what)
        media = desc.get("mediaType") or manifest.get("mediaType", "")
        if media in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST) or "manifests" in manifest:
            children = manifest.get("manifests")
            if not isinstance(children, list) or not children:
                raise InvalidArchive(f"{what}: image index {desc['digest']} lists no manifests")
            chosen = [c for c in children if isinstance(c, dict) and _platform_ok(c)]
            if not chosen:
                raise InvalidArchive(
                    f"{what}: image index {desc['digest']} has no manifest for linux/{host_architecture()}"
                )
            what = f"{what} -> {chosen[0].get('digest')}"
            manifest_bytes, manifest = _verified_json(archive, chosen[0], what)
            media = chosen[0].get("mediaType") or manifest.get("mediaType", "")
        if media not in (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, ""):
            raise InvalidArchive(f"{what}: unsupported manifest media type {media!r}")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise InvalidArchive(f"{what}: manifest has no layers list")
        config_bytes, _ = _verified_json(archive, manifest.get("config"), f"{what}: config")
        layer_descs = manifest["layers"]
        diff_ids = _parse_config(config_bytes, f"{what}: config", len(layer_descs))
        sources = []
        for j, (ldesc, diff_id) in enumerate(zip(layer_descs, diff_ids, strict=True)):
            lwhat = f"{what}: layer {j}"
            member, digest, size, lmedia = _blob(archive, ldesc, f"manifest {sha256_bytes(manifest_bytes)} layer {j}")
            if lmedia not in LAYER_MEDIA_TYPES:
                raise InvalidArchive(f"{lwhat}: unsupported layer media type {lmedia!r}")
            sources.append(_LayerSource(member, diff_id, lmedia, digest, size, what=f"{lwhat} ({digest})"))
        pending.append(_Pending(config_bytes, sources, [name] if name else [], manifest_bytes, what))
    return _merge_names(pending)


def _merge_names(pending: list[_Pending]) -> list[_Pending]:
    """One index entry per name can point at one manifest: install it once with all its names."""
    by_key: dict[tuple[bytes, bytes | None], _Pending] = {}
    for p in pending:
        key = (p.config_bytes, p.manifest_bytes)
        if key in by_key:
            by_key[key].names.extend(n for n in p.names if n not in by_key[key].names)
        else:
            by_key[key] = p
    return list(by_key.values())


def _name_from_annotations(annotations: Any, what: str) -> str:
    if not isinstance(annotations, dict):
        raise InvalidArchive(f"{what}.annotations: must be an object")
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        value = annotations.get(key)
        if not isinstance(value, str) or not value:
            continue
        # A bare tag ("latest", OCI's convention) names no repository; skopeo writes "name:tag".
        if key.endswith("ref.name") and not any(c in value for c in ":/@"):
            continue
        try:
            ref = refs.parse(value)
        except InvalidReference as e:
            raise InvalidArchive(f"{what}: annotation {key}: {e}") from None
        if ref.digest and not ref.tag:
            continue
        return str(ref.with_tag(ref.tag or "latest"))
    return ""


def _install(store: ImageStore, archive: _Archive, p: _Pending, created_chains: list[str]) -> Image:
    """The image's layers, unpacked while the archive streamed, become snapshots in order; then its
    config, manifest and record. No layer blob is kept: a tar-split makes each tar again."""
    diff_ids = [s.diff_id for s in p.layers]
    recorded: list[tuple[str, int, str]] = []
    parent = ""
    for source, chain in zip(p.layers, chain_ids(diff_ids), strict=True):
        layer = archive.layers.get(source.member)
        if layer is None:
            raise InvalidArchive(f"{source.what}: {source.member} is not a layer tar")
        if layer.error is not None:
            raise layer.error
        if source.digest and layer.digest != source.digest:
            raise InvalidArchive(f"{source.what}: digest mismatch: expected {source.digest}, got {layer.digest}")
        if layer.stats.diff_id != source.diff_id:
            raise InvalidArchive(f"{source.what}: diff_id mismatch: config says {source.diff_id}, "
                                 f"content is {layer.stats.diff_id}")
        if not store.snapshotter.exists(chain):
            if not layer.chain:
                layer.chain = store.snapshotter.install(layer.dir, parent, layer.stats)
            else:
                # The same layer on another parent (in this archive, or here before it): its tar
                # again, from the copy there is.
                try:
                    again = store.snapshotter.open_tar(layer.chain, layer.stats.diff_id, source.what)
                except ImageNotFound:
                    again = None
                if again is None:
                    raise ImageError(f"{source.what}: the layer {layer.stats.diff_id} this host had when the load "
                                     "began was removed meanwhile; load the archive again")
                with again:
                    store.snapshotter.apply(parent, again, layer.stats.diff_id, what=source.what)
            created_chains.append(chain)
        if source.digest:
            # OCI: the manifest is kept as it came; its blobs are made again from the layers on save.
            recorded.append((source.digest, source.size, source.media_type))
        else:
            recorded.append((source.diff_id, layer.stats.tar_size, MEDIA_OCI_LAYER))
        parent = chain
    return store._record_image(p.config_bytes, recorded, p.names, manifest_bytes=p.manifest_bytes)


# --- save -------------------------------------------------------------------------------------------------

def _resolve_all(store: ImageStore, refs_: Sequence[str]) -> list[tuple[Image, list[str]]]:
    order: list[str] = []
    names: dict[str, list[str]] = {}
    images: dict[str, Image] = {}
    records = store._read()
    for ref in refs_:
        image_id, named = store._resolve(records, ref)
        if image_id not in images:
            images[image_id] = store._image(records, image_id)
            order.append(image_id)
            names[image_id] = []
        if named and "@" not in named and named not in names[image_id]:
            names[image_id].append(named)
    return [(images[i], names[i]) for i in order]


def _add_file(tf: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    with open(path, "rb") as f:
        tf.addfile(info, f)


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)


def save(store: ImageStore, refs_: Sequence[str], out: BinaryIO, format: str = "docker") -> None:
    if format not in ("docker", "oci"):
        raise ImageError(f"unknown save format {format!r} (docker or oci)")
    if not refs_:
        raise ImageError("save needs at least one image")
    items = _resolve_all(store, refs_)
    tmp = store.tmp / f"save-{os.getpid()}-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            if format == "docker":
                _save_docker(store, items, tf, tmp)
            else:
                _save_oci(store, items, tf)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _add_layer(store: ImageStore, tf: tarfile.TarFile, name: str, layer: LocalLayer) -> None:
    """One layer streamed into the archive: a blob as stored, or its tar made again from the
    snapshot, whose digest is checked once the last byte is out (a mismatch fails the save)."""
    with store.open_layer(layer) as f:
        tf.addfile(tar_member(name, layer.size), f)
        if f.read(1):
            raise ImageError(f"layer {layer.digest}: longer than its {layer.size} bytes")


def _save_docker(store: ImageStore, items: list[tuple[Image, list[str]]], tf: tarfile.TarFile, tmp: Path) -> None:
    written: set[str] = set()
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    for image, names in items:
        hexid = image.id.removeprefix("sha256:")
        config_name = f"{hexid}.json"
        if config_name not in written:
            _add_file(tf, config_name, store.content.path(image.id))
            written.add(config_name)
        layer_names = []
        for diff_id, layer in zip(image.diff_ids, store.local_layers(image), strict=True):
            name = f"{diff_id.removeprefix('sha256:')}.tar"
            layer_names.append(name)
            if name in written:
                continue
            if layer.digest == diff_id:
                _add_layer(store, tf, name, layer)
            else:
                # A compressed blob (an OCI load by an older agent): docker-archive layers are plain tars.
                plain = tmp / name
                with store.open_layer(layer) as src, open(plain, "wb") as dst:
                    stream, _ = decompressed(src)
                    shutil.copyfileobj(stream, dst, CHUNK)
                _add_file(tf, name, plain)
                plain.unlink()
            written.add(name)
        familiar = [refs.parse(n).familiar() for n in names]
        manifest.append({"Config": config_name, "RepoTags": familiar or None, "Layers": layer_names})
        for n in names:
            r = refs.parse(n)
            repositories.setdefault(r.familiar_name, {})[r.tag] = image.diff_ids[-1].removeprefix("sha256:") if image.diff_ids else ""
    _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
    if repositories:
        _add_bytes(tf, "repositories", json.dumps(repositories).encode())


def _save_oci(store: ImageStore, items: list[tuple[Image, list[str]]], tf: tarfile.TarFile) -> None:
    _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    _add_dir(tf, "blobs")
    _add_dir(tf, "blobs/sha256")
    written: set[str] = set()
    descriptors = []
    for image, names in items:
        layers = store.local_layers(image)
        manifest_bytes = store.manifest_for(image, layers)
        manifest_digest = sha256_bytes(manifest_bytes)
        manifest = json.loads(manifest_bytes)
        for digest, data in ((manifest_digest, manifest_bytes),
                             (image.id, store.content.read_bytes(image.id))):
            if digest not in written:
                _add_bytes(tf, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
                written.add(digest)
        for layer in layers:
            if layer.digest not in written:
                _add_layer(store, tf, "blobs/sha256/" + layer.digest.removeprefix("sha256:"), layer)
                written.add(layer.digest)
        base = {
            "mediaType": manifest.get("mediaType") or MEDIA_OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": image.architecture or host_architecture(), "os": image.os or "linux"},
        }
        if not names:
            descriptors.append(base)
        for n in names:
            r = refs.parse(n)
            descriptors.append(
                {**base, "annotations": {"io.containerd.image.name": str(r), "org.opencontainers.image.ref.name": r.tag}}
            )
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descriptors}
    _add_bytes(tf, "index.json", json.dumps(index).encode())
