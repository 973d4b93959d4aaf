"""Compatibility with a real peer: skopeo (containers/image, the library podman and buildah use)
reads what ``save`` writes, and ``load`` takes what skopeo writes, in docker-archive and OCI form.

dockerd is not started here (it leaves state in /etc, /run and cgroups behind); skopeo's
docker-archive writer and reader are the same format ``docker save``/``docker load`` use.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import tests.images as _images
from agent.images import Image, ImageStore

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed"),
]

busybox_tar_path = _images.busybox_tar_path
busybox_store = _images.busybox_store


def skopeo(*args: str) -> str:
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def web(busybox_store: tuple[ImageStore, Image]) -> tuple[ImageStore, Image, Image]:
    """A two-layer image (busybox + a web root) next to busybox."""
    store, base = busybox_store
    mounts = store.snapshotter.prepare("c1", base.chain_id)
    upper = Path(next(o for o in mounts[0].options if o.startswith("upperdir="))[len("upperdir=") :])
    (upper / "www").mkdir()
    (upper / "www" / "index.html").write_bytes(b"<h1>dockyard</h1>\n")
    image = store.commit(
        "c1", base="busybox", reference="web:1", changes=['CMD ["httpd", "-f", "-h", "/www"]', "EXPOSE 80"]
    )
    return store, base, image


def _untar(data: bytes, dest: Path) -> None:
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="data")  # our own output, trusted


def _tar_dir(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return buf.getvalue()


def test_skopeo_reads_our_docker_archive(tmp_path: Path, web: tuple[ImageStore, Image, Image]) -> None:
    store, _, image = web
    archive = tmp_path / "web.tar"
    with open(archive, "wb") as f:
        store.save(["web:1"], f)
    info = json.loads(skopeo("inspect", "--raw", f"docker-archive:{archive}"))
    assert [layer["digest"] for layer in info["layers"]] == image.diff_ids
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{archive}"))
    assert config["config"]["Cmd"] == ["httpd", "-f", "-h", "/www"]
    assert config["rootfs"]["diff_ids"] == image.diff_ids
    # A full copy re-reads every layer and checks its digest.
    skopeo("copy", f"docker-archive:{archive}:web:1", f"oci:{tmp_path / 'oci'}:web")
    # and what skopeo made loads back as the same image. (Converting to OCI, skopeo re-serialises
    # the config, so the id changes; the layers and the settings do not.)
    other = ImageStore(tmp_path / "other")
    (loaded,) = other.load(io.BytesIO(_tar_dir(tmp_path / "oci")))
    assert loaded.diff_ids == image.diff_ids and loaded.config == image.config
    assert loaded.repo_tags == []  # ref.name "web" is a bare tag: it names no repository


def test_skopeo_reads_our_oci_archive(tmp_path: Path, web: tuple[ImageStore, Image, Image]) -> None:
    store, _, image = web
    archive = tmp_path / "web-oci.tar"
    with open(archive, "wb") as f:
        store.save(["web:1"], f, format="oci")
    # ref.name is the tag, as containerd and docker 25 write it.
    config = json.loads(skopeo("inspect", "--config", f"oci-archive:{archive}:1"))
    assert config["rootfs"]["diff_ids"] == image.diff_ids
    out = tmp_path / "from-skopeo.tar"
    skopeo("copy", f"oci-archive:{archive}:1", f"docker-archive:{out}:web:1")
    other = ImageStore(tmp_path / "other")
    with open(out, "rb") as f:
        (loaded,) = other.load(f)
    assert loaded.id == image.id and loaded.repo_tags == ["web:1"]


def test_load_skopeo_docker_archive_of_an_oci_layout(tmp_path: Path, web: tuple[ImageStore, Image, Image]) -> None:
    """The brief's route: an OCI layout we wrote -> `skopeo copy oci:DIR docker-archive:FILE:name:tag`."""
    store, _, image = web
    buf = io.BytesIO()
    store.save(["web:1"], buf, format="oci")
    layout = tmp_path / "layout"
    _untar(buf.getvalue(), layout)
    out = tmp_path / "skopeo.tar"
    skopeo("copy", f"oci:{layout}:1", f"docker-archive:{out}:localhost:5000/team/web:v2")
    with tarfile.open(out) as tf:
        assert "manifest.json" in tf.getnames()
    other = ImageStore(tmp_path / "other")
    with open(out, "rb") as f:
        (loaded,) = other.load(f)
    assert loaded.id == image.id
    assert loaded.repo_tags == ["localhost:5000/team/web:v2"]
    assert loaded.config.cmd == ["httpd", "-f", "-h", "/www"] and loaded.config.exposed_ports == ["80/tcp"]
    view = other.snapshotter.view("v", loaded.chain_id)
    assert view
    flat = io.BytesIO()
    other.snapshotter.export("v", flat)
    with tarfile.open(fileobj=io.BytesIO(flat.getvalue())) as tf:
        member = tf.extractfile("www/index.html")
        assert member is not None and member.read() == b"<h1>dockyard</h1>\n"
        assert tf.getmember("bin/sh").linkname == "/bin/busybox"


def test_load_skopeo_oci_archive_with_gzip_layers(tmp_path: Path, web: tuple[ImageStore, Image, Image]) -> None:
    store, _, image = web
    archive = tmp_path / "web.tar"
    with open(archive, "wb") as f:
        store.save(["web:1"], f)
    out = tmp_path / "gz-oci.tar"
    skopeo("copy", "--dest-compress", "--dest-compress-format", "gzip",
           f"docker-archive:{archive}:web:1", f"oci-archive:{out}:web:1")
    other = ImageStore(tmp_path / "other")
    with open(out, "rb") as f:
        (loaded,) = other.load(f)
    assert loaded.diff_ids == image.diff_ids and loaded.repo_tags == ["web:1"]
    manifest = json.loads(other.content.read_bytes(loaded.manifest_digest))
    assert all(layer["mediaType"].endswith("gzip") for layer in manifest["layers"])
    # And it saves back to a docker-archive with plain layers skopeo accepts.
    again = tmp_path / "again.tar"
    with open(again, "wb") as f:
        other.save(["web:1"], f)
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{again}"))
    assert config["rootfs"]["diff_ids"] == image.diff_ids
