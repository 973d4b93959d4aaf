"""The image store: images (config + manifest in the content store, layers in the snapshotter) and
the references that name them, with docker's import, tag, rm, save, load and export semantics.

Layout under ``root``: ``blobs/`` and ``ingest/`` (content store), ``snapshots/`` (snapshotter),
``images.json`` (image records and references, rewritten atomically under ``images.lock``) and
``tmp/`` (scratch space for load and save, emptied on start).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import reference as _ref
from .config import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    Image,
    ImageConfig,
    apply_changes,
    build_oci_config,
    canonical_json,
    chain_id,
    chain_ids,
    parse_time,
)
from .errors import ImageError, ImageInUse, ImageNotFound, InvalidArchive, InvalidReference
from .layers import Limits
from .pipes import piped
from .registryconfig import RegistryConfig
from .snapshotter import KIND_COMMITTED, Snapshotter
from .store import ContentStore, check_digest

_RUNNING_STATES = ("(running)", "(paused)", "(restarting)")


@dataclass(frozen=True)
class LocalLayer:
    """Where one layer of an image can be read on this host: its blob as the manifest names it, or,
    when the blob is not kept (every layer unpacked with a tar-split), its tar made again from the
    snapshot: uncompressed, digest = diff_id."""

    digest: str
    size: int
    media_type: str
    diff_id: str
    chain: str
    from_blob: bool


@dataclass
class _Records:
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.content = ContentStore(self.root)
        self.snapshotter = Snapshotter(self.root / "snapshots")
        # How far layers may expand on import, load, pull and restore (the agent's
        # --max-layer-size / --max-image-size; none by default, as docker).
        self.limits = Limits()
        self.registries = RegistryConfig()   # mirrors and insecure registries, for pulls (registry.py)
        self._lock_path = self.root / "images.lock"
        self._lock_path.touch(exist_ok=True)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(exist_ok=True)
        for entry in self.tmp.iterdir():
            pid = entry.name.split("-")[1] if entry.name.count("-") >= 1 else ""
            if pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        self._configs: dict[str, dict[str, Any]] = {}
        self._shared: tuple[bytes, _Records] | None = None

    # --- records ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Records]:
        with open(self._lock_path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read()
            before = self._dump(records)
            yield records
            if self._dump(records) != before:
                tmp = self.root / f"images.json.{os.getpid()}.tmp"
                tmp.write_text(self._dump(records))
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.rename(tmp, self.root / "images.json")

    @staticmethod
    def _dump(records: _Records) -> str:
        return json.dumps({"images": records.images, "refs": records.refs}, sort_keys=True, indent=1)

    def _read(self) -> _Records:
        try:
            data = json.loads((self.root / "images.json").read_text())
        except FileNotFoundError:
            return _Records()
        return _Records(images=data.get("images", {}), refs=data.get("refs", {}))

    def _read_shared(self) -> _Records:
        """The records for reading only, parsed again only when images.json changed: a container's
        create looks its image up here, and parsing is most of a lookup's cost."""
        try:
            raw = (self.root / "images.json").read_bytes()
        except FileNotFoundError:
            return _Records()
        if self._shared is None or self._shared[0] != raw:
            data = json.loads(raw)
            self._shared = (raw, _Records(images=data.get("images", {}), refs=data.get("refs", {})))
        return self._shared[1]

    def _config_json(self, image_id: str) -> dict[str, Any]:
        cached = self._configs.get(image_id)
        if cached is None:
            cached = json.loads(self.content.read_bytes(image_id))
            self._configs[image_id] = cached
        return cached

    def _image(self, records: _Records, image_id: str) -> Image:
        rec = records.images[image_id]
        cfg = self._config_json(image_id)
        diff_ids = list(cfg.get("rootfs", {}).get("diff_ids", []))
        tags = sorted(_ref.parse(r).familiar() for r, i in records.refs.items() if i == image_id and "@" not in r)
        digests = sorted(_ref.parse(r).familiar() for r, i in records.refs.items() if i == image_id and "@" in r)
        digests = sorted(set(digests) | set(rec.get("repo_digests", [])))
        return Image(
            id=image_id,
            repo_tags=tags,
            repo_digests=digests,
            config=ImageConfig.from_oci(cfg.get("config")),
            created=parse_time(cfg.get("created")) or rec.get("created", 0.0),
            size=int(rec.get("size", 0)),
            diff_ids=diff_ids,
            chain_id=chain_id(diff_ids),
            history=list(cfg.get("history", [])),
            architecture=str(cfg.get("architecture", "")),
            os=str(cfg.get("os", "")),
            manifest_digest=rec.get("manifest", ""),
            layer_digests=list(rec.get("layers", [])),
            container=str(cfg.get("container") or ""),
            container_config=dict(cfg["container_config"]) if isinstance(cfg.get("container_config"), dict) else {},
        )

    def _resolve(self, records: _Records, ref: str) -> tuple[str, str | None]:
        """(image id, the normalised reference when ``ref`` named a tag or digest) or ImageNotFound."""
        if not ref:
            raise ImageNotFound("No such image: (empty reference)")
        if ref.startswith("sha256:"):
            return self._by_prefix(records, ref[len("sha256:") :], ref), None
        named: str | None = None
        with contextlib.suppress(InvalidReference):
            named = str(_ref.parse(ref))
        if named is not None and named in records.refs:
            return records.refs[named], named
        if all(c in "0123456789abcdef" for c in ref) and ref:
            return self._by_prefix(records, ref, ref), None
        if named is None:
            _ref.parse(ref)  # raise the reference error itself
        raise ImageNotFound(f"No such image: {ref}")

    @staticmethod
    def _by_prefix(records: _Records, prefix: str, ref: str) -> str:
        matches = [i for i in records.images if i[len("sha256:") :].startswith(prefix)]
        if not matches or not prefix:
            raise ImageNotFound(f"No such image: {ref}")
        if len(matches) > 1:
            raise ImageNotFound(f"image id prefix {ref!r} is ambiguous ({len(matches)} images match)")
        return matches[0]

    # --- public interface ----------------------------------------------------------------------------

    def config_of(self, image_id: str) -> ImageConfig:
        """The run configuration of an image known by its full id: a container's start needs only
        this, and an id names immutable content, so no read of the store is needed after the first."""
        return ImageConfig.from_oci(self._config_json(image_id).get("config"))

    def get(self, ref: str) -> Image:
        records = self._read_shared()
        image_id, _ = self._resolve(records, ref)
        return self._image(records, image_id)

    def list(self, all: bool = False) -> builtins.list[Image]:
        """Images, newest first. As docker, untagged images that are the parent of another image
        (build steps) are left out unless ``all``."""
        records = self._read()
        parents = {rec.get("parent", "") for rec in records.images.values()}
        tagged = set(records.refs.values())
        ids = [i for i in records.images if all or i in tagged or i not in parents]
        images = [self._image(records, i) for i in ids]
        return sorted(images, key=lambda im: (-im.created, im.id))

    def tag(self, source: str, target: str) -> None:
        ref = _ref.parse(target)
        if ref.digest:
            raise InvalidReference(f"refusing to create a tag with a digest reference: {target}")
        with self._locked() as records:
            image_id, _ = self._resolve(records, source)
            records.refs[str(ref)] = image_id

    def import_tar(
        self,
        fileobj: BinaryIO,
        reference: str | None = None,
        changes: Sequence[str] = (),
        message: str = "",
    ) -> Image:
        """docker import: one layer from a plain/gzip/zstd tar, a config from ``changes``."""
        named = str(_ref.parse(reference)) if reference else None
        if named and _ref.parse(reference or "").digest:
            raise InvalidReference(f"import needs a name:tag, not a digest reference: {reference}")
        config = apply_changes(ImageConfig(), changes)
        created = time.time()
        # The layer is unpacked once; its tar is not kept, a tar-split makes it again (tarsplit.py).
        _, stats = self.snapshotter.apply("", fileobj, what="import", bound=self.limits.budget().bound())
        history = [{"created": _rfc3339(created), "comment": message or "Imported from -"}]
        return self._commit_image(
            config=config,
            diff_ids=[stats.diff_id],
            layers=[(stats.diff_id, stats.tar_size, MEDIA_OCI_LAYER)],
            history=history,
            created=created,
            names=[named] if named else [],
        )

    def commit(
        self,
        snapshot_key: str,
        base: str | None = None,
        reference: str | None = None,
        changes: Sequence[str] = (),
        message: str = "",
        created_by: str = "",
        container: str = "",
        container_config: dict[str, Any] | None = None,
    ) -> Image:
        """docker commit: a new image = ``base`` + the snapshot's changes as one more layer.
        ``container`` and ``container_config``: the committed container's id and config, kept in the
        image config as docker's ``container`` and ``container_config`` (image inspect shows them).

        The container's snapshot is left as it is (its diff is unpacked again as a committed layer),
        so it keeps running; ``base`` must be the image the snapshot was prepared from (None for
        scratch). Used by build steps and cold migration too.
        """
        named = str(_ref.parse(reference)) if reference else None
        base_image = self.get(base) if base else None
        parent_chain = base_image.chain_id if base_image else ""
        info = self.snapshotter.stat(snapshot_key)
        if info.parent != parent_chain:
            raise ImageError(
                f"snapshot {snapshot_key!r} is not on top of {base or 'scratch'} "
                f"(its parent layer is {info.parent or 'none'})"
            )
        config = apply_changes(base_image.config if base_image else ImageConfig(), changes)
        created = time.time()
        # The diff is unpacked as a committed layer as it is written (no blob, no temporary file).
        with piped(lambda out: self.snapshotter.diff(snapshot_key, out), "diff") as (tar, written):
            chain, stats = self.snapshotter.apply(parent_chain, tar, what=f"diff of {snapshot_key}")
        diff_id = written.result()
        try:
            if stats.diff_id != diff_id:
                raise ImageError(f"diff of {snapshot_key}: unpacked as {stats.diff_id}, written as {diff_id}")
            entry: dict[str, Any] = {"created": _rfc3339(created), "created_by": created_by}
            if message:
                entry["comment"] = message
            history = [*(base_image.history if base_image else []), entry]
            layers = [*(self._layer_descriptors(base_image) if base_image else []),
                      (diff_id, stats.tar_size, MEDIA_OCI_LAYER)]
            return self._commit_image(
                config=config,
                diff_ids=[*(base_image.diff_ids if base_image else []), diff_id],
                layers=layers,
                history=history,
                created=created,
                names=[named] if named else [],
                architecture=base_image.architecture if base_image else None,
                parent=base_image.id if base_image else "",
                origin={"container": container, "container_config": container_config} if container else None,
            )
        except BaseException:
            self._forget_new([], [chain] if stats.unpacked else [])
            raise

    def derive(
        self,
        base: str | None,
        config: ImageConfig,
        created_by: str,
        reference: str | None = None,
    ) -> Image:
        """A build step that changes only the config (ENV, CMD...): ``base``'s layers, a new config and
        one more history entry marked ``empty_layer``, as docker records such steps."""
        named = str(_ref.parse(reference)) if reference else None
        base_image = self.get(base) if base else None
        created = time.time()
        entry: dict[str, Any] = {"created": _rfc3339(created), "created_by": created_by, "empty_layer": True}
        return self._commit_image(
            config=config,
            diff_ids=base_image.diff_ids if base_image else [],
            layers=self._layer_descriptors(base_image) if base_image else [],
            history=[*(base_image.history if base_image else []), entry],
            created=created,
            names=[named] if named else [],
            architecture=base_image.architecture if base_image else None,
            parent=base_image.id if base_image else "",
        )

    def parent(self, ref: str) -> str:
        """The image a build step or commit was made from ("" when unknown or none)."""
        records = self._read()
        image_id, _ = self._resolve(records, ref)
        return str(records.images[image_id].get("parent", ""))

    def history(self, ref: str) -> builtins.list[dict[str, Any]]:
        """docker history: one row per history entry, newest first, with the id of the local image
        made by that step (or "<missing>") and the size of the layer it added."""
        records = self._read()
        image_id, _ = self._resolve(records, ref)
        image = self._image(records, image_id)
        chains = chain_ids(image.diff_ids)
        # Walk the parent chain: the image whose history has n entries made entry n-1.
        ids_by_len: dict[int, str] = {}
        cur = image_id
        while cur and cur in records.images:
            n = len(self._config_json(cur).get("history", []))
            ids_by_len.setdefault(n, cur)
            cur = str(records.images[cur].get("parent", ""))
        rows: builtins.list[dict[str, Any]] = []
        layer = 0
        for i, entry in enumerate(image.history):
            empty = bool(entry.get("empty_layer"))
            size = 0
            if not empty and layer < len(chains):
                with contextlib.suppress(ImageNotFound):
                    size = self.snapshotter.stat(chains[layer]).size
                layer += 1
            rows.append({
                "id": ids_by_len.get(i + 1, "<missing>"),
                "created": parse_time(entry.get("created")),
                "created_by": str(entry.get("created_by", "")),
                "size": size,
                "comment": str(entry.get("comment", "")),
                "empty_layer": empty,
            })
        if not image.history:
            for chain in chains:
                rows.append({"id": "<missing>", "created": image.created, "created_by": "", "comment": "",
                             "size": self.snapshotter.stat(chain).size, "empty_layer": False})
            if rows:
                rows[-1]["id"] = image_id
        return list(reversed(rows))

    def prune(
        self,
        all: bool = False,
        in_use: Callable[[str], builtins.list[str]] = lambda image_id: [],
    ) -> tuple[builtins.list[str], builtins.list[str], int]:
        """docker image prune: remove dangling images (untagged, nothing built on them) and, as they
        go, the build steps below them; with ``all`` every image no container uses. Then drop the
        blobs and layers nothing references. Returns (untagged, deleted, bytes reclaimed)."""
        before = self.content.total_size() + sum(s.size for s in self.snapshotter.list() if s.kind == "committed")
        untagged: builtins.list[str] = []
        deleted: builtins.list[str] = []
        changed = True
        while changed:
            changed = False
            records = self._read()
            parents = {rec.get("parent", "") for rec in records.images.values()}
            tagged = set(records.refs.values())
            for image_id in sorted(records.images):
                if image_id in parents or in_use(image_id):
                    continue
                if image_id in tagged and not all:
                    continue
                if image_id in tagged:
                    for r in sorted(r for r, i in records.refs.items() if i == image_id):
                        u, d = self.remove(r, force=True, in_use=in_use)
                        untagged += u
                        deleted += d
                else:
                    u, d = self.remove(image_id, force=False, in_use=in_use)
                    untagged += u
                    deleted += d
                changed = True
                break
        deleted += [d for d in self.gc() if d not in deleted]
        after = self.content.total_size() + sum(s.size for s in self.snapshotter.list() if s.kind == "committed")
        return untagged, deleted, max(0, before - after)

    def layer_chains(self) -> dict[str, str]:
        """diff_id -> chain id of a committed snapshot of this host that holds that layer and can
        make its tar again (a tar-split): what a load need not unpack a second time."""
        records = self._read_shared()
        snapshots = {s.key: s for s in self.snapshotter.list()}
        out: dict[str, str] = {}
        for image_id in records.images:
            with contextlib.suppress(OSError, ValueError, ImageError):
                diff_ids = list(self._config_json(image_id).get("rootfs", {}).get("diff_ids", []))
                for diff_id, chain in zip(diff_ids, chain_ids(diff_ids), strict=True):
                    info = snapshots.get(chain)
                    if info is not None and info.kind == KIND_COMMITTED and info.tar_size >= 0:
                        out.setdefault(diff_id, chain)
        return out

    def local_layers(self, image: Image) -> builtins.list[LocalLayer]:
        out = []
        for (digest, size, media), diff_id, chain in zip(self._layer_descriptors(image), image.diff_ids,
                                                          chain_ids(image.diff_ids), strict=True):
            if self.content.exists(digest):
                out.append(LocalLayer(digest, size, media, diff_id, chain, True))
                continue
            try:
                info = self.snapshotter.stat(chain)
            except ImageNotFound:
                info = None
            if info is None or info.tar_size < 0:
                raise ImageError(f"image {_short(image.id)}: layer {digest} has neither its blob nor its "
                                 "unpacked layer with a tar-split on this host")
            out.append(LocalLayer(diff_id, info.tar_size, MEDIA_OCI_LAYER, diff_id, chain, False))
        return out

    def open_layer(self, layer: LocalLayer) -> BinaryIO:
        """The layer's bytes as ``layer`` describes them (checked against its digest as read when
        made again from the snapshot)."""
        if layer.from_blob:
            return self.content.open(layer.digest)
        f = self.snapshotter.open_tar(layer.chain, layer.diff_id, what=f"layer {layer.diff_id}")
        if f is None:
            raise ImageError(f"layer {layer.diff_id}: no tar-split beside its unpacked layer")
        return f

    def manifest_for(self, image: Image, layers: Sequence[LocalLayer]) -> bytes:
        """The image's manifest as stored, or, when some of its layers are read from their snapshots,
        the same manifest naming those uncompressed (its digest then differs, as docker's does after
        a pull and a push)."""
        stored = self.content.read_bytes(image.manifest_digest)
        if all(la.from_blob for la in layers):
            return stored
        manifest = json.loads(stored)
        manifest["layers"] = [{"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in layers]
        if manifest.get("mediaType") == "application/vnd.docker.distribution.manifest.v2+json":
            manifest["mediaType"] = MEDIA_OCI_MANIFEST
            manifest["config"]["mediaType"] = MEDIA_OCI_CONFIG
        return canonical_json(manifest)

    def _layer_descriptors(self, image: Image) -> builtins.list[tuple[str, int, str]]:
        manifest = json.loads(self.content.read_bytes(image.manifest_digest))
        return [(d["digest"], int(d["size"]), str(d.get("mediaType", MEDIA_OCI_LAYER))) for d in manifest["layers"]]

    def _commit_image(
        self,
        config: ImageConfig,
        diff_ids: Sequence[str],
        layers: Sequence[tuple[str, int, str]],
        history: Sequence[dict[str, Any]],
        created: float,
        names: Sequence[str],
        architecture: str | None = None,
        parent: str = "",
        origin: dict[str, Any] | None = None,
    ) -> Image:
        cfg = {**build_oci_config(config, diff_ids, history, created, architecture), **(origin or {})}
        return self._record_image(canonical_json(cfg), layers, names, parent=parent)

    def _record_image(
        self,
        config_bytes: bytes,
        layers: Sequence[tuple[str, int, str]],
        names: Sequence[str],
        manifest_bytes: bytes | None = None,
        repo_digests: Sequence[str] = (),
        parent: str = "",
    ) -> Image:
        """Store config and manifest blobs and the image record; the layers must be unpacked already."""
        image_id = self.content.write_bytes(config_bytes, what="image config")
        cfg = json.loads(config_bytes)
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        if manifest_bytes is None:
            manifest = {
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": image_id, "size": len(config_bytes)},
                "layers": [{"mediaType": mt, "digest": d, "size": s} for d, s, mt in layers],
            }
            manifest_bytes = canonical_json(manifest)
        manifest_digest = self.content.write_bytes(manifest_bytes, what="image manifest")
        size = sum(self.snapshotter.stat(c).size for c in chain_ids(diff_ids))
        with self._locked() as records:
            rec = records.images.get(image_id, {})
            rec.update(
                {
                    "manifest": manifest_digest,
                    "layers": [d for d, _, _ in layers],
                    "created": parse_time(cfg.get("created")) or time.time(),
                    "size": size,
                    "repo_digests": sorted(set(rec.get("repo_digests", [])) | set(repo_digests)),
                }
            )
            if parent:
                rec["parent"] = parent
            records.images[image_id] = rec
            for name in names:
                records.refs[name] = image_id
            return self._image(records, image_id)

    def remove(
        self,
        ref: str,
        force: bool = False,
        in_use: Callable[[str], builtins.list[str]] = lambda image_id: [],
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """docker rmi. Returns (untagged references, deleted image and layer ids).

        ``in_use(image_id)`` names the containers using the image, each optionally followed by its
        state ("web (running)"); a running (or paused/restarting) container blocks even ``force``,
        as in docker, and a stopped one blocks unless ``force``. Removing one of several tags only
        untags; removing by id with tags in several repositories needs ``force``.
        """
        untagged: builtins.list[str] = []
        deleted: builtins.list[str] = []
        with self._locked() as records:
            image_id, named = self._resolve(records, ref)
            users: builtins.list[str] = [str(u) for u in in_use(image_id)]
            running = [u for u in users if u.rstrip().endswith(_RUNNING_STATES)]
            image_refs = sorted(r for r, i in records.refs.items() if i == image_id)
            single = _is_single_reference(image_refs)
            if named is not None:
                # A reference was given: untag it first.
                if not force and single and users:
                    raise ImageInUse(
                        f"image {_ref.parse(named).familiar()} is in use by {_containers(users)}"
                    )
                del records.refs[named]
                untagged.append(_ref.parse(named).familiar())
                parsed = _ref.parse(named)
                if not parsed.digest:
                    # Tag removed: if only digest references of that repository remain, drop them too.
                    rest = [r for r, i in records.refs.items() if i == image_id]
                    if not any(_ref.parse(r).name == parsed.name and "@" not in r for r in rest):
                        for r in rest:
                            if "@" in r and _ref.parse(r).name == parsed.name:
                                del records.refs[r]
                                untagged.append(_ref.parse(r).familiar())
                if any(i == image_id for i in records.refs.values()):
                    return untagged, deleted
                if users and (running or not force):
                    # Now dangling but still used: docker keeps it quietly.
                    return untagged, deleted
            else:
                if running:
                    raise ImageInUse(
                        f"image {_short(image_id)} is in use by {_containers(running)} and cannot be forced"
                    )
                if users and not force:
                    raise ImageInUse(
                        f"image {_short(image_id)} is in use by {_containers(users)} (must be forced)"
                    )
                if image_refs and not single and not force:
                    raise ImageInUse(
                        f"unable to delete {_short(image_id)} (must be forced) - image is referenced in "
                        f"multiple repositories: {', '.join(_ref.parse(r).familiar() for r in image_refs)}"
                    )
                for r in image_refs:
                    del records.refs[r]
                    untagged.append(_ref.parse(r).familiar())
            rec = records.images.pop(image_id)
            deleted.append(image_id)
            diff_ids = self._config_json(image_id).get("rootfs", {}).get("diff_ids", [])
            keep_blobs, keep_chains = self._referenced(records)
            for blob in [image_id, rec.get("manifest", ""), *rec.get("layers", [])]:
                if blob and blob not in keep_blobs:
                    self.content.delete(blob)
            for chain in reversed(chain_ids(diff_ids)):
                if chain in keep_chains or not self.snapshotter.exists(chain):
                    break
                if self.snapshotter.children(chain):
                    break  # a container (forced removal) or another layer still stands on it
                self.snapshotter.remove(chain)
                deleted.append(chain)
            self._configs.pop(image_id, None)
        # As docker's rmi: build steps below the removed image go too, while untagged and unused.
        parent = str(rec.get("parent", ""))
        if parent:
            records = self._read()
            if (parent in records.images and parent not in records.refs.values() and not in_use(parent)
                    and not any(r.get("parent") == parent for r in records.images.values())):
                with contextlib.suppress(ImageError):
                    deleted += self.remove(parent, in_use=in_use)[1]
        return untagged, deleted

    def _referenced(self, records: _Records) -> tuple[set[str], set[str]]:
        blobs: set[str] = set()
        chains: set[str] = set()
        for image_id, rec in records.images.items():
            blobs.update([image_id, rec.get("manifest", ""), *rec.get("layers", [])])
            chains.update(chain_ids(self._config_json(image_id).get("rootfs", {}).get("diff_ids", [])))
        return blobs, chains

    def gc(self) -> builtins.list[str]:
        """Remove blobs and unpacked layers no image references and nothing stands on (image prune's
        second half, and the cleanup after a forced removal once its containers are gone)."""
        removed: builtins.list[str] = []
        with self._locked() as records:
            keep_blobs, keep_chains = self._referenced(records)
            for blob in list(self.content.list()):
                if blob not in keep_blobs and self.content.delete(blob):
                    removed.append(blob)
            changed = True
            while changed:
                changed = False
                for info in self.snapshotter.list():
                    if (
                        info.kind == "committed"
                        and info.key not in keep_chains
                        and not self.snapshotter.children(info.key)
                    ):
                        self.snapshotter.remove(info.key)
                        removed.append(info.key)
                        changed = True
        return removed

    def _forget_new(self, blobs: Sequence[str], chains: Sequence[str]) -> None:
        """After a failed load/import: drop what it created that no image references."""
        with self._locked() as records:
            keep_blobs, keep_chains = self._referenced(records)
            for chain in reversed(chains):
                if chain not in keep_chains and self.snapshotter.exists(chain) and not self.snapshotter.children(chain):
                    self.snapshotter.remove(chain)
            for blob in blobs:
                if blob not in keep_blobs:
                    self.content.delete(blob)

    def save(self, refs: Sequence[str], out: BinaryIO, format: str = "docker") -> None:
        """docker save: a docker-archive, or with format="oci" an OCI image layout, as a tar."""
        from .archive import save

        save(self, refs, out, format)

    def load(self, fileobj: BinaryIO, named: builtins.list[str] | None = None) -> builtins.list[Image]:
        from .archive import load

        return load(self, fileobj, named)

    def export_container(self, snapshot_key: str, out: BinaryIO) -> None:
        """docker export: the flattened filesystem of a container's snapshot."""
        self.snapshotter.export(snapshot_key, out)

    def disk_usage(self) -> dict[str, Any]:
        records = self._read()
        images = [self._image(records, i) for i in records.images]
        layer_users: dict[str, int] = {}
        for im in images:
            for c in chain_ids(im.diff_ids):
                layer_users[c] = layer_users.get(c, 0) + 1
        snaps = self.snapshotter.list()
        sizes = {s.key: s.size for s in snaps if s.kind == "committed"}
        containers = [s for s in snaps if s.kind == "active"]
        active_parents = set()
        for s in containers:
            key = s.parent
            while key:
                active_parents.add(key)
                key = next((x.parent for x in snaps if x.key == key), "")
        per_image = []
        for im in images:
            chains = chain_ids(im.diff_ids)
            shared = sum(sizes.get(c, 0) for c in chains if layer_users.get(c, 0) > 1)
            per_image.append(
                {
                    "id": im.id,
                    "repo_tags": im.repo_tags,
                    "size": im.size,
                    "shared_size": shared,
                    "unique_size": im.size - shared,
                    "in_use": bool(im.chain_id and im.chain_id in active_parents),
                }
            )
        layers_size = sum(sizes.values())
        reclaimable = sum(v for k, v in sizes.items() if k not in active_parents)
        return {
            "images": {"count": len(images), "size": layers_size, "reclaimable": reclaimable, "items": per_image},
            "containers": {
                "count": len(containers),
                "size": sum(self.snapshotter.usage(s.key) for s in containers),
                "items": [{"key": s.key, "size": self.snapshotter.usage(s.key)} for s in containers],
            },
            "content_size": self.content.total_size(),
        }


def _is_single_reference(image_refs: Sequence[str]) -> bool:
    """docker's isSingleReference: at most one tag, and digest references only of that repository."""
    if len(image_refs) <= 1:
        return len(image_refs) == 1
    tags = [r for r in image_refs if "@" not in r]
    if len(tags) > 1:
        return False
    names = {_ref.parse(r).name for r in image_refs}
    return len(names) == 1


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _containers(users: Sequence[str]) -> str:
    return ("container " if len(users) == 1 else "containers ") + ", ".join(users)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rfc3339(ts: float) -> str:
    from .config import format_time

    return format_time(ts)


def check_image_id(image_id: str) -> str:
    return check_digest(image_id, "image id")


__all__ = ["ImageError", "ImageStore", "InvalidArchive"]
