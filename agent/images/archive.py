"""save and load: docker-archive (manifest.json, repositories, <layer>.tar) and OCI image layout
(oci-layout, index.json, blobs/sha256/...), both ways.

``load`` accepts what ``docker save`` (20.10 and 25+), ``skopeo copy ... docker-archive:`` and
``oci-archive:`` write, plain or gzip/zstd compressed. The archive is unpacked into a private temp
dir first (regular files and directories only; symlinks, which docker save uses for repeated
layers, are kept as a table and resolved inside the archive, never on disk). Everything is
checked before any layer is unpacked: JSON shapes, that every named file or blob exists, digests
and sizes of blobs, and each layer's diff_id against the config. A failed load removes the blobs
and layers it added.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

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
from .errors import ImageError, InvalidArchive, InvalidReference
from .layers import CHUNK, HashingReader, TarReader, decompressed, member_parts, reading_errors
from .safefs import Root, UnsafePath
from .store import Tee, check_digest, sha256_bytes

if TYPE_CHECKING:
    from .imagestore import ImageStore

MAX_JSON = 16 << 20  # manifests and configs larger than this are refused


# --- unpacking an archive safely ---------------------------------------------------------------------

@dataclass
class _Archive:
    root: Path
    symlinks: dict[str, str] = field(default_factory=dict)
    hardlinks: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str, what: str) -> Path:
        """The extracted file an archive path names, following the archive's links inside it."""
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
                path = self.root.joinpath(*parts) if parts else self.root
                if not path.is_file() or path.is_symlink():
                    raise InvalidArchive(f"{what}: names {name!r}, which is not in the archive")
                return path
        raise InvalidArchive(f"{what}: too many levels of links resolving {name!r}")

    def exists(self, name: str) -> bool:
        try:
            self.resolve(name, "archive")
            return True
        except InvalidArchive:
            return False

    def read_json(self, name: str, what: str) -> Any:
        path = self.resolve(name, what)
        if path.stat().st_size > MAX_JSON:
            raise InvalidArchive(f"{what}: {name} is larger than {MAX_JSON} bytes")
        return load_json(path.read_bytes(), f"{what}: {name}")


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


def _unpack(fileobj: IO[bytes], dest: Path) -> _Archive:
    archive = _Archive(dest)
    reader = TarReader(fileobj, "archive")
    with Root(dest) as root:
        for tf, m in reader.members():
            with reading_errors("archive", m.name):
                _unpack_member(root, archive, tf, m)
    return archive


def _unpack_member(root: Root, archive: _Archive, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
    """Directories and regular files go to disk below the root (safefs: never through a link);
    links only into the archive's tables."""
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
            if st is None:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            elif not stat.S_ISDIR(st.st_mode):
                raise InvalidArchive(f"archive: member {m.name!r} would replace a file")
            return
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise InvalidArchive(f"archive: member {m.name!r} would replace a directory")
            os.unlink(parts[-1], dir_fd=parent)
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        with os.fdopen(fd, "wb") as f:
            src = tf.extractfile(m)
            assert src is not None
            shutil.copyfileobj(src, f, CHUNK)
            if f.tell() != m.size:
                raise InvalidArchive(f"archive: member {m.name!r} is truncated")
    finally:
        os.close(parent)


# --- load -----------------------------------------------------------------------------------------------

@dataclass
class _LayerSource:
    path: Path  # file in the unpacked archive
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


def load(store: ImageStore, fileobj: BinaryIO) -> list[Image]:
    tmp = store.tmp / f"load-{os.getpid()}-{secrets.token_hex(6)}"
    tmp.mkdir()
    created_blobs: list[str] = []
    created_chains: list[str] = []
    try:
        archive = _unpack(fileobj, tmp)
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
        images: list[Image] = []
        # Each layer file of the archive is removed once its last user is installed, so the disk
        # holds the archive's layers or the store's copy, not both: load peaks at about the
        # image's size in the store plus one layer, not three times the image.
        uses = Counter(s.path for p in pending for s in p.layers)
        for p in pending:
            images.append(_install(store, p, created_blobs, created_chains, uses))
        return images
    except BaseException:
        store._forget_new(created_blobs, created_chains)
        raise
    finally:
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
        config_path = archive.resolve(entry["Config"], f"{what}.Config")
        config_bytes = config_path.read_bytes()
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


def _blob(archive: _Archive, desc: Any, what: str) -> tuple[Path, str, int, str]:
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
    path = archive.resolve(name, what)
    if path.stat().st_size != size:
        raise InvalidArchive(f"{what}: blob {digest} is {path.stat().st_size} bytes, descriptor says {size}")
    return path, digest, size, str(media_type)


def _verified_json(archive: _Archive, desc: Any, what: str) -> tuple[bytes, Any]:
    path, digest, size, _ = _blob(archive, desc, what)
    if size > MAX_JSON:
        raise InvalidArchive(f"{what}: blob {digest} is larger than {MAX_JSON} bytes")
    data = path.read_bytes()
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
            path, digest, size, lmedia = _blob(archive, ldesc, f"manifest {sha256_bytes(manifest_bytes)} layer {j}")
            if lmedia not in LAYER_MEDIA_TYPES:
                raise InvalidArchive(f"{lwhat}: unsupported layer media type {lmedia!r}")
            sources.append(_LayerSource(path, diff_id, lmedia, digest, size, what=f"{lwhat} ({digest})"))
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


def _install(store: ImageStore, p: _Pending, created_blobs: list[str], created_chains: list[str],
             uses: Counter[Path] | None = None) -> Image:

    diff_ids = [s.diff_id for s in p.layers]
    chains = chain_ids(diff_ids)
    recorded: list[tuple[str, int, str]] = []
    parent = ""
    budget = store.limits.budget()
    for source, chain in zip(p.layers, chains, strict=True):
        bound = budget.bound()
        if source.digest:
            # OCI: keep the blob as it is (compressed or not), verified against its descriptor.
            if not store.content.exists(source.digest):
                if uses is not None and uses[source.path] == 1:
                    # Its last user: verified where it lies and moved into the store, not copied.
                    store.content.adopt(source.path, source.digest, source.size, what=source.what)
                else:
                    with open(source.path, "rb") as f:
                        store.content.ingest(f, source.digest, source.size, what=source.what)
                created_blobs.append(source.digest)
            if not store.snapshotter.exists(chain):
                with store.content.open(source.digest) as f:
                    _, stats = store.snapshotter.apply(parent, f, source.diff_id, what=source.what, bound=bound)
                budget.spend(stats.tar_size)
                created_chains.append(chain)
            recorded.append((source.digest, source.size, source.media_type))
        else:
            # docker-archive: keep the uncompressed tar, whose digest is the diff_id.
            have_blob = store.content.exists(source.diff_id)
            if not store.snapshotter.exists(chain) or not have_blob:
                with store.content.writer() as w, open(source.path, "rb") as f:
                    stream, _ = decompressed(f)
                    tee = _tee(stream, w)
                    if store.snapshotter.exists(chain):
                        with reading_errors(source.what):
                            counted = HashingReader(tee, bound, source.what)  # type: ignore[arg-type]
                            while counted.read(CHUNK):
                                pass
                    else:
                        _, stats = store.snapshotter.apply(parent, tee, source.diff_id,  # type: ignore[arg-type]
                                                           what=source.what, bound=bound)
                        budget.spend(stats.tar_size)
                        created_chains.append(chain)
                    w.commit(source.diff_id, what=source.what)
                    if not have_blob:
                        created_blobs.append(source.diff_id)
            recorded.append((source.diff_id, store.content.size(source.diff_id), MEDIA_OCI_LAYER))
        parent = chain
        if uses is not None:
            uses[source.path] -= 1
            if uses[source.path] == 0:
                with contextlib.suppress(FileNotFoundError):
                    source.path.unlink()
    return store._record_image(p.config_bytes, recorded, p.names, manifest_bytes=p.manifest_bytes)


def _tee(stream: IO[bytes], writer: Any) -> Tee:
    return Tee(stream, writer)


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
        for diff_id, blob in zip(image.diff_ids, _layer_blobs(store, image), strict=True):
            name = f"{diff_id.removeprefix('sha256:')}.tar"
            layer_names.append(name)
            if name in written:
                continue
            if blob == diff_id:
                _add_file(tf, name, store.content.path(blob))
            else:
                # A compressed blob (from an OCI load): docker-archive layers are plain tars.
                plain = tmp / name
                with store.content.open(blob) as src, open(plain, "wb") as dst:
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


def _layer_blobs(store: ImageStore, image: Image) -> list[str]:
    blobs = image.layer_digests or list(image.diff_ids)
    if len(blobs) != len(image.diff_ids):
        raise ImageError(f"image {image.id}: {len(blobs)} layer blobs for {len(image.diff_ids)} diff_ids")
    for b in blobs:
        if not store.content.exists(b):
            raise ImageError(f"image {image.id}: layer blob {b} is missing from the content store")
    return blobs


def _save_oci(store: ImageStore, items: list[tuple[Image, list[str]]], tf: tarfile.TarFile) -> None:
    _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    _add_dir(tf, "blobs")
    _add_dir(tf, "blobs/sha256")
    written: set[str] = set()
    descriptors = []
    for image, names in items:
        _layer_blobs(store, image)
        manifest_digest = image.manifest_digest
        manifest_bytes = store.content.read_bytes(manifest_digest)
        manifest = json.loads(manifest_bytes)
        blobs = [manifest_digest, manifest["config"]["digest"], *[ld["digest"] for ld in manifest["layers"]]]
        for blob in blobs:
            if blob not in written:
                _add_file(tf, "blobs/sha256/" + blob.removeprefix("sha256:"), store.content.path(blob))
                written.add(blob)
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
