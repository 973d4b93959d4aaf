"""Image store: docker import with --change, references, tag/list/get, rmi semantics with the in-use
refusal, commit, save/load round trips in both formats, hostile archives, export."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

import tests.images as _images
from agent.images import (
    Image,
    ImageError,
    ImageInUse,
    ImageNotFound,
    ImageStore,
    InvalidArchive,
    InvalidChange,
    InvalidReference,
)
from tests.images import make_tar, tar_names

# The shared fixtures, bound here so pytest finds them by name.
busybox_tar_path = _images.busybox_tar_path
busybox_store = _images.busybox_store


def _state(store: ImageStore) -> tuple[Any, ...]:
    """Everything on disk that a failed operation must leave as it was."""
    return (
        sorted(store.content.list()),
        sorted(p.name for p in (store.root / "ingest").iterdir()),
        sorted(s.key for s in store.snapshotter.list()),
        sorted(p.name for p in store.snapshotter.root.iterdir()),
        sorted(p.name for p in store.tmp.iterdir()),
        [i.id for i in store.list()],
    )


LAYER = make_tar(("dir", "etc"), ("file", "etc/hello", b"hi\n"), ("file", "bin/app", b"#!/bin/sh\n", 0o755))


def test_import_with_changes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    image = store.import_tar(
        io.BytesIO(gzip.compress(LAYER)),
        "example.com:5000/team/app:1",
        changes=[
            'CMD ["-p", "80"]',
            'ENTRYPOINT ["/bin/app"]',
            "ENV A=1 B=2",
            "WORKDIR /srv",
            "USER nobody",
            "EXPOSE 80",
            'LABEL org.example.v="1.0"',
            "STOPSIGNAL SIGQUIT",
        ],
        message="from a test",
    )
    assert image.repo_tags == ["example.com:5000/team/app:1"]
    c = image.config
    assert (c.cmd, c.entrypoint, c.env, c.workdir, c.user) == (["-p", "80"], ["/bin/app"], ["A=1", "B=2"], "/srv", "nobody")
    assert (c.exposed_ports, c.labels, c.stop_signal) == (["80/tcp"], {"org.example.v": "1.0"}, "SIGQUIT")
    assert image.diff_ids == ["sha256:" + hashlib.sha256(LAYER).hexdigest()]
    assert image.chain_id == image.diff_ids[0]
    assert image.history[0]["comment"] == "from a test"
    assert image.os == "linux" and image.architecture
    # The id is the digest of the config blob, which follows the OCI image spec.
    raw = store.content.read_bytes(image.id)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image.id
    cfg = json.loads(raw)
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}
    assert cfg["config"]["ExposedPorts"] == {"80/tcp": {}} and cfg["config"]["StopSignal"] == "SIGQUIT"
    assert image.size == len(b"hi\n") + len(b"#!/bin/sh\n")


def test_import_failures_leave_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    before = _state(store)
    with pytest.raises(InvalidArchive, match="escapes the root"):
        store.import_tar(io.BytesIO(make_tar(("file", "ok", b"1"), ("file", "../x", b"2"))), "bad:1")
    with pytest.raises(InvalidArchive):
        store.import_tar(io.BytesIO(gzip.compress(LAYER)[:-30]), "bad:2")
    with pytest.raises(InvalidChange):
        store.import_tar(io.BytesIO(LAYER), "bad:3", changes=["RUN rm -rf /"])
    with pytest.raises(InvalidReference):
        store.import_tar(io.BytesIO(LAYER), "Bad:4")
    assert _state(store) == before
    assert not (tmp_path.parent / "x").exists()


def test_references_resolve(busybox_store: tuple[ImageStore, Image]) -> None:
    store, image = busybox_store
    for ref in ("busybox", "busybox:latest", "docker.io/library/busybox:latest", "library/busybox",
                image.id, image.id[7:], image.id[7:19], image.id[:19]):
        assert store.get(ref).id == image.id, ref
    assert image.repo_tags == ["busybox:latest"]
    for missing in ("busybox:1", "other", "0" * 12, "sha256:" + "0" * 64):
        with pytest.raises(ImageNotFound, match="No such image"):
            store.get(missing)
    with pytest.raises(InvalidReference):
        store.get("Busy Box")


def test_tag_and_list(busybox_store: tuple[ImageStore, Image]) -> None:
    store, image = busybox_store
    store.tag("busybox", "localhost:5000/bb:v1")
    store.tag(image.id[7:19], "mine")
    assert store.get("mine:latest").repo_tags == ["busybox:latest", "localhost:5000/bb:v1", "mine:latest"]
    with pytest.raises(InvalidReference, match="digest"):
        store.tag("busybox", "x@sha256:" + "a" * 64)
    with pytest.raises(ImageNotFound):
        store.tag("nothing", "x")
    assert [i.id for i in store.list()] == [image.id]


def test_rm_semantics(busybox_store: tuple[ImageStore, Image]) -> None:
    store, image = busybox_store
    web = lambda _id: ["web (running)"]  # noqa: E731
    stopped = lambda _id: ["db (exited)"]  # noqa: E731
    # The last tag of an image a container uses: refused, naming the container.
    with pytest.raises(ImageInUse, match=r"image busybox:latest is in use by container web \(running\)"):
        store.remove("busybox", in_use=web)
    # One of two tags: just untagged, even while in use.
    store.tag("busybox", "bb:2")
    assert store.remove("bb:2", in_use=web) == (["bb:2"], [])
    # By id while a container runs: refused even with force (docker: "cannot be forced").
    with pytest.raises(ImageInUse, match="cannot be forced"):
        store.remove(image.id, force=True, in_use=web)
    # By id with a stopped container: refused without force.
    with pytest.raises(ImageInUse, match=r"db \(exited\)"):
        store.remove(image.id[7:19], in_use=stopped)
    # Forced by tag while running: untagged, the image stays (dangling) as docker does.
    assert store.remove("busybox", force=True, in_use=web) == (["busybox:latest"], [])
    assert store.get(image.id).repo_tags == []
    # Forced by id with a stopped container: deleted.
    untagged, deleted = store.remove(image.id, force=True, in_use=stopped)
    assert untagged == [] and deleted == [image.id, image.chain_id]
    with pytest.raises(ImageNotFound):
        store.get(image.id)
    assert list(store.content.list()) == [] and store.snapshotter.list() == []


def test_rm_by_id_with_several_tags(busybox_store: tuple[ImageStore, Image]) -> None:
    store, image = busybox_store
    store.tag("busybox", "other:1")
    with pytest.raises(ImageInUse, match="must be forced"):
        store.remove(image.id)
    untagged, deleted = store.remove(image.id, force=True)
    assert sorted(untagged) == ["busybox:latest", "other:1"] and deleted[0] == image.id


def test_shared_layers_and_container_keep_layers(busybox_store: tuple[ImageStore, Image], busybox_tar_path: Path) -> None:
    store, image = busybox_store
    with open(busybox_tar_path, "rb") as f:
        other = store.import_tar(f, "busybox:sh", changes=['CMD ["/bin/sh", "-l"]'])
    assert other.id != image.id and other.chain_id == image.chain_id
    assert [s.key for s in store.snapshotter.list()] == [image.chain_id]  # unpacked once
    store.snapshotter.prepare("ctr", image.chain_id)
    # Remove both images (forced, the container is stopped): the container's layer survives.
    store.remove("busybox:latest", force=True, in_use=lambda _id: ["ctr (exited)"])
    _, deleted = store.remove("busybox:sh")
    assert deleted == [other.id]
    assert store.snapshotter.exists(image.chain_id)
    store.snapshotter.remove("ctr")
    assert image.chain_id in store.gc()
    assert store.snapshotter.list() == []


def test_commit_export_and_history(busybox_store: tuple[ImageStore, Image]) -> None:
    store, image = busybox_store
    mounts = store.snapshotter.prepare("c1", image.chain_id)
    upper = Path(next(o for o in mounts[0].options if o.startswith("upperdir="))[len("upperdir="):])
    (upper / "etc").mkdir()
    (upper / "etc" / "motd").write_bytes(b"hello\n")
    child = store.commit("c1", base="busybox", reference="web:1", changes=["EXPOSE 8080"], created_by="test")
    assert child.diff_ids[:-1] == image.diff_ids and len(child.diff_ids) == 2
    assert child.config.cmd == ["sh"] and child.config.exposed_ports == ["8080/tcp"]
    assert [h.get("created_by", "") for h in child.history][-1] == "test"
    assert store.snapshotter.exists("c1")  # the container keeps its rootfs
    out = io.BytesIO()
    store.export_container("c1", out)
    names = set(tar_names(out.getvalue()))
    assert {"etc/motd", "bin/busybox", "bin/sh", "etc/passwd", "tmp"} <= names
    usage = store.disk_usage()
    assert usage["images"]["count"] == 2 and usage["containers"]["count"] == 1
    assert usage["containers"]["size"] == len(b"hello\n")


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_load_round_trip(tmp_path: Path, busybox_store: tuple[ImageStore, Image], fmt: str) -> None:
    store, image = busybox_store
    mounts = store.snapshotter.prepare("c1", image.chain_id)
    upper = Path(next(o for o in mounts[0].options if o.startswith("upperdir="))[len("upperdir="):])
    (upper / "www").mkdir()
    (upper / "www" / "index.html").write_bytes(b"<h1>hi</h1>\n")
    web = store.commit("c1", base="busybox", reference="web:1", changes=['CMD ["httpd", "-f", "-h", "/www"]'])
    store.tag("web:1", "localhost:5000/web:latest")
    out = io.BytesIO()
    store.save(["web:1", "localhost:5000/web", "busybox"], out, format=fmt)
    data = out.getvalue()
    names = set(tar_names(data))
    if fmt == "docker":
        assert {"manifest.json", "repositories", f"{image.id[7:]}.json", f"{web.id[7:]}.json"} <= names
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            f = tf.extractfile("manifest.json")
            assert f is not None
            manifest = json.load(f)
        assert manifest[0]["RepoTags"] == ["web:1", "localhost:5000/web:latest"]
        assert len(manifest[0]["Layers"]) == 2 and manifest[0]["Layers"][0] == manifest[1]["Layers"][0]
    else:
        assert {"oci-layout", "index.json", f"blobs/sha256/{web.id[7:]}"} <= names

    other = ImageStore(tmp_path / "other")
    loaded = other.load(io.BytesIO(data))
    assert [i.id for i in loaded] == [web.id, image.id]
    got = other.get("web:1")
    assert got.id == web.id and got.diff_ids == web.diff_ids and got.config == web.config
    assert other.get("localhost:5000/web").id == web.id and other.get("busybox").id == image.id
    assert len(other.snapshotter.list()) == 2  # the shared busybox layer once
    # The loaded layers are the same files.
    flat_a, flat_b = io.BytesIO(), io.BytesIO()
    store.snapshotter.view("va", web.chain_id)
    other.snapshotter.view("vb", got.chain_id)
    store.snapshotter.export("va", flat_a)
    other.snapshotter.export("vb", flat_b)
    assert flat_a.getvalue() == flat_b.getvalue()
    # Saving again from the loaded store gives the same archive (docker format is deterministic).
    again = io.BytesIO()
    other.save(["web:1", "localhost:5000/web", "busybox"], again, format=fmt)
    if fmt == "docker":
        assert again.getvalue() == data
    # Loading twice is idempotent; gzip-compressed archives load too.
    assert [i.id for i in other.load(io.BytesIO(gzip.compress(data)))] == [web.id, image.id]


# --- hostile archives ---------------------------------------------------------------------------------

def _docker_archive(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def _hostile_archives() -> list[tuple[str, bytes, str]]:
    good_diff = "sha256:" + hashlib.sha256(LAYER).hexdigest()
    cfg = _config([good_diff])
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": ["x:1"], "Layers": ["l.tar"]}]).encode()
    bad_layer = make_tar(("file", "../../evil", b"x"))
    evil_symlink = tarfile.TarInfo("l2.tar")
    evil_symlink.type, evil_symlink.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    cases = [
        ("missing layer file", _docker_archive({"manifest.json": manifest, cfg_name: cfg}), "not in the archive"),
        ("missing config", _docker_archive({"manifest.json": manifest, "l.tar": LAYER}), "not in the archive"),
        ("diff_id mismatch", _docker_archive({"manifest.json": manifest, cfg_name: _config(["sha256:" + "1" * 64]), "l.tar": LAYER}), "diff_id mismatch"),
        ("layer count", _docker_archive({"manifest.json": manifest, cfg_name: _config([]), "l.tar": LAYER}), "0 entries for 1 layers"),
        ("hostile layer", _docker_archive({"manifest.json": manifest, cfg_name: _config(["sha256:" + hashlib.sha256(bad_layer).hexdigest()]), "l.tar": bad_layer}), "escapes the root"),
        ("bad json", _docker_archive({"manifest.json": b"{not json"}), "not valid JSON"),
        ("bad tag", _docker_archive({"manifest.json": manifest.replace(b"x:1", b"X Y"), cfg_name: cfg, "l.tar": LAYER}), "RepoTags"),
        ("member escapes", _docker_archive({"../manifest.json": manifest}), "escapes the root"),
        ("absolute member", _docker_archive({"/manifest.json": manifest}), "absolute path"),
        ("symlink out of archive", _docker_archive({"manifest.json": manifest.replace(b"l.tar", b"l2.tar"), cfg_name: cfg}, [evil_symlink]), "escapes the archive"),
        ("neither format", _docker_archive({"hello": b"x"}), "neither manifest.json"),
        ("not a tar", os.urandom(3000), "not a valid tar|invalid tar"),
    ]
    whole = _docker_archive({"manifest.json": manifest, cfg_name: cfg, "l.tar": LAYER})
    cases.append(("truncated archive", whole[:2000], "truncated|not in the archive"))
    return cases


@pytest.mark.parametrize(("name", "data", "message"), _hostile_archives(), ids=[c[0] for c in _hostile_archives()])
def test_hostile_docker_archives(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    store = ImageStore(tmp_path / "store")
    before = _state(store)
    with pytest.raises(InvalidArchive, match=message):
        store.load(io.BytesIO(data))
    assert _state(store) == before
    assert not (tmp_path / "evil").exists()


def _oci_archive(busybox_store: tuple[ImageStore, Image]) -> dict[str, bytes]:
    store, _ = busybox_store
    out = io.BytesIO()
    store.save(["busybox"], out, format="oci")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        for m in tf:
            if m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                files[m.name] = f.read()
    return files


def _pack(files: dict[str, bytes]) -> bytes:
    return _docker_archive(files)


def test_oci_blob_with_wrong_digest(tmp_path: Path, busybox_store: tuple[ImageStore, Image]) -> None:
    _, image = busybox_store
    files = _oci_archive(busybox_store)
    layer = f"blobs/sha256/{image.diff_ids[0][7:]}"
    data = bytearray(files[layer])
    data[5000] ^= 0xFF  # same size, different content
    files[layer] = bytes(data)
    store = ImageStore(tmp_path / "s")
    before = _state(store)
    with pytest.raises(InvalidArchive, match="digest mismatch"):
        store.load(io.BytesIO(_pack(files)))
    assert _state(store) == before


def test_oci_manifest_naming_missing_blob(tmp_path: Path, busybox_store: tuple[ImageStore, Image]) -> None:
    _, image = busybox_store
    files = _oci_archive(busybox_store)
    del files[f"blobs/sha256/{image.diff_ids[0][7:]}"]
    store = ImageStore(tmp_path / "s")
    before = _state(store)
    with pytest.raises(InvalidArchive, match=f"names missing blob {image.diff_ids[0]}"):
        store.load(io.BytesIO(_pack(files)))
    assert _state(store) == before


def test_oci_tampered_manifest(tmp_path: Path, busybox_store: tuple[ImageStore, Image]) -> None:
    _, image = busybox_store
    files = _oci_archive(busybox_store)
    manifest = files[f"blobs/sha256/{image.manifest_digest[7:]}"]
    files[f"blobs/sha256/{image.manifest_digest[7:]}"] = manifest.replace(b"application", b"APPLICATION")
    store = ImageStore(tmp_path / "s")
    with pytest.raises(InvalidArchive, match="fails its digest"):
        store.load(io.BytesIO(_pack(files)))
    assert store.list() == []


def _web_on_busybox(store: ImageStore, image: Image) -> Image:
    mounts = store.snapshotter.prepare("c-known", image.chain_id)
    upper = Path(next(o for o in mounts[0].options if o.startswith("upperdir="))[len("upperdir="):])
    (upper / "www").mkdir()
    (upper / "www" / "index.html").write_bytes(b"<h1>known</h1>\n")
    web = store.commit("c-known", base="busybox", reference="web:1")
    store.snapshotter.remove("c-known")
    return web


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_load_does_not_unpack_a_layer_this_host_has(busybox_store: tuple[ImageStore, Image], fmt: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """As docker: the busybox layer under a loaded image is here already, so only the new layer is
    unpacked; the image is whole, and saving it again gives the same bytes."""
    store, image = busybox_store
    web = _web_on_busybox(store, image)
    out = io.BytesIO()
    store.save(["web:1"], out, format=fmt)
    store.remove("web:1")
    unpacked: list[str] = []
    real = store.snapshotter.unpack

    def counting(stream: Any, what: str = "layer", bound: Any = None) -> Any:
        unpacked.append(what)
        return real(stream, what, bound)

    monkeypatch.setattr(store.snapshotter, "unpack", counting)
    snapshots = {s.key for s in store.snapshotter.list()}
    [loaded] = store.load(io.BytesIO(out.getvalue()))
    assert loaded.id == web.id and store.get("web:1").diff_ids == web.diff_ids
    assert len(unpacked) == 1, unpacked  # the www layer only
    assert {s.key for s in store.snapshotter.list()} == snapshots | {web.chain_id}
    again = io.BytesIO()
    store.save(["web:1"], again, format=fmt)
    assert again.getvalue() == out.getvalue()
    assert list(store.tmp.iterdir()) == []


def test_a_known_layer_on_another_parent_is_made_again_from_the_one_here(
        tmp_path: Path, busybox_store: tuple[ImageStore, Image]) -> None:
    """The host's layer, in the archive on top of a layer it does not have: its snapshot on that new
    parent is made from the tar-split of the one here (the archive's copy was not unpacked)."""
    store, image = busybox_store
    base_tar = make_tar(("file", "base.txt", b"base\n"))
    other = ImageStore(tmp_path / "other")
    base = other.import_tar(io.BytesIO(base_tar), "base:1")
    bb_layer = io.BytesIO()
    with store.open_layer(store.local_layers(image)[0]) as f:
        bb_layer.write(f.read())
    # base + busybox's layer as a second layer, loaded into the store that has busybox alone
    cfg = json.loads(other.content.read_bytes(base.id))
    cfg["rootfs"]["diff_ids"] = [base.diff_ids[0], image.diff_ids[0]]
    config = json.dumps(cfg).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("base.tar", base_tar), ("bb.tar", bb_layer.getvalue()), ("c.json", config),
                           ("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["stack:1"],
                                                          "Layers": ["base.tar", "bb.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    [loaded] = store.load(io.BytesIO(buf.getvalue()))
    assert loaded.diff_ids == [base.diff_ids[0], image.diff_ids[0]]
    store.snapshotter.view("v-stack", loaded.chain_id)
    top = store.snapshotter.layer_dirs("v-stack")[1]
    assert (top / "bin" / "busybox").is_file() and not (top / "base.txt").exists()
    store.snapshotter.remove("v-stack")
    # and that layer's tar made again is the archive's, byte for byte
    layer = store.local_layers(loaded)[1]
    with store.open_layer(layer) as f:
        assert f.read() == bb_layer.getvalue()


def test_a_known_layer_gone_before_the_install_is_named(busybox_store: tuple[ImageStore, Image],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store, image = busybox_store
    _web_on_busybox(store, image)
    out = io.BytesIO()
    store.save(["web:1", "busybox"], out)
    store.remove("web:1")
    store.remove("busybox")
    assert store.list() == []
    # The store still lists busybox's layer as here when the load starts, then it is gone.
    monkeypatch.setattr(store, "layer_chains", lambda: {image.diff_ids[0]: "sha256:" + "0" * 64})
    before = _state(store)
    with pytest.raises(ImageError, match="was removed meanwhile; load the archive again"):
        store.load(io.BytesIO(out.getvalue()))
    assert _state(store) == before


def test_hostile_archives_over_a_layer_this_host_has(busybox_store: tuple[ImageStore, Image]) -> None:
    """The read-whole-first path of a known layer: an archive cut inside that layer, and one whose
    config gives that layer another diff_id, are refused and leave the store as it was."""
    store, image = busybox_store
    web = _web_on_busybox(store, image)
    out = io.BytesIO()
    store.save(["web:1"], out)
    store.remove("web:1")
    data = out.getvalue()
    layer = image.diff_ids[0].removeprefix("sha256:") + ".tar"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        m = tf.getmember(layer)
    before = _state(store)
    with pytest.raises(InvalidArchive, match="truncated"):
        store.load(io.BytesIO(data[: m.offset_data + m.size // 2]))
    assert _state(store) == before
    # the same archive with the config's diff_ids swapped: each layer is there, under the wrong name
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src:
            f = src.extractfile(member)
            content = f.read() if f is not None else b""
            if member.name == f"{web.id.removeprefix('sha256:')}.json":
                cfg = json.loads(content)
                cfg["rootfs"]["diff_ids"].reverse()
                content = json.dumps(cfg).encode()
                member.name = "swapped.json"
            if member.name == "manifest.json":
                content = content.replace(f"{web.id.removeprefix('sha256:')}.json".encode(), b"swapped.json")
            member.size = len(content)
            dst.addfile(member, io.BytesIO(content))
    with pytest.raises(InvalidArchive, match="diff_id mismatch"):
        store.load(io.BytesIO(buf.getvalue()))
    assert _state(store) == before
