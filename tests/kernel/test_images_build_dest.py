"""build: COPY/ADD destinations under symlinked directories of the base image are followed inside
the image's root, as docker does (a merged-/usr base keeps /lib -> usr/lib), never replaced and
never followed on the host; and the build context's odd inputs (a non-UTF-8 Dockerfile, a unix
socket) answer with a clear error or docker's warning, no traceback."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from agent.images import ImageStore
from agent.images.build import Builder, BuildOptions
from agent.images.tree import MergedTree
from tests.agent_harness import AgentProcess

pytestmark = pytest.mark.root


def _base(store: ImageStore, host_dir: Path) -> None:
    """A merged-/usr base: /usr/lib a directory (0750, owner 7), /lib -> usr/lib, /abs -> /usr/lib,
    /hostlink -> an absolute host path (which inside the image means the image's own path)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, target in (("usr", "d", ""), ("usr/lib", "d", ""), ("lib", "s", "usr/lib"),
                                   ("abs", "s", "/usr/lib"), ("hostlink", "s", str(host_dir)),
                                   ("usr/lib/old", "f", "")):
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o750 if name == "usr/lib" else 0o755
                info.uid = info.gid = 7 if name == "usr/lib" else 0
                tf.addfile(info)
            elif kind == "s":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
            else:
                info.size = 3
                tf.addfile(info, io.BytesIO(b"old"))
    store.import_tar(io.BytesIO(buf.getvalue()), "merged:1")


def _build(store: ImageStore, ctx: Path, dockerfile: str) -> MergedTree:
    async def run() -> str:
        image_id = ""
        async for ev in Builder(store).build(ctx, BuildOptions(dockerfile=dockerfile)):
            image_id = ev.image_id or image_id
        return image_id

    image = store.get(asyncio.run(run()))
    return MergedTree(store.snapshotter.layer_dirs(image.chain_id))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ImageStore, Path, Path]:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    store = ImageStore(tmp_path / "images")
    _base(store, host_dir)
    ctx = tmp_path / "ctx"
    (ctx / "tree" / "lib" / "sub").mkdir(parents=True)
    (ctx / "tree" / "lib" / "sub" / "deep").write_text("deep")
    (ctx / "tree" / "lib" / "top").write_text("top")
    (ctx / "f").write_text("f")
    return store, ctx, host_dir


def _is_link(tree: MergedTree, path: str, target: str) -> None:
    found = tree.lookup(path.split("/"))
    assert found is not None and stat.S_ISLNK(found[1].st_mode), f"/{path} is no longer a symlink"
    assert os.readlink(found[0]) == target


def test_copy_under_a_symlinked_dir_follows_it_inside_the_root(setup: tuple[ImageStore, Path, Path]) -> None:
    store, ctx, host_dir = setup
    tree = _build(store, ctx, "FROM merged:1\nCOPY f /lib/f\nCOPY f /abs/g\nCOPY f /lib/new/h\n"
                              "COPY tree/ /\nCOPY f /hostlink/x\n")
    _is_link(tree, "lib", "usr/lib")
    _is_link(tree, "abs", "/usr/lib")
    for name, data in (("f", "f"), ("g", "f"), ("new/h", "f"), ("sub/deep", "deep"), ("top", "top"),
                       ("old", "old")):
        found = tree.lookup(["usr", "lib", *name.split("/")])
        assert found is not None, f"/usr/lib/{name} missing"
        assert found[0].read_text() == data
    # An absolute link names the image's path, never the host's.
    assert list(host_dir.iterdir()) == []
    assert tree.lookup([*str(host_dir).strip("/").split("/"), "x"]) is not None


def test_copy_over_a_file_under_a_symlinked_dir_keeps_the_link_and_copies_up(setup: tuple[ImageStore, Path, Path]) -> None:
    store, ctx, _ = setup
    tree = _build(store, ctx, "FROM merged:1\nCOPY f /usr/lib/old2\nCOPY f /lib/old\n")
    found = tree.lookup(["usr", "lib", "old"])
    assert found is not None and found[0].read_text() == "f"
    _is_link(tree, "lib", "usr/lib")
    # The copied-up /usr/lib keeps the base's attributes.
    found = tree.lookup(["usr", "lib"])
    assert found is not None and (stat.S_IMODE(found[1].st_mode), found[1].st_uid) == (0o750, 7)


@pytest.mark.slow
def test_build_context_with_a_socket_warns_and_builds(clean_agent: AgentProcess, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\n")
    (ctx / "keep").write_text("k")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(ctx / "agent.sock"))
        r = clean_agent.cli("build", "-q", "-t", "socky:1", str(ctx))
    finally:
        s.close()
    assert r.returncode == 0, r.stderr
    assert "WARNING: archive: skipping" in r.stderr and "agent.sock" in r.stderr and "since it is a socket" in r.stderr
    assert "Traceback" not in r.stderr
    out = clean_agent.cli("run", "--rm", "socky:1", "ls", "/ctx", check=True).stdout.split()
    assert out == ["Dockerfile", "keep"]
    clean_agent.cli("rmi", "socky:1", check=True)


@pytest.mark.slow
def test_non_utf8_dockerfile_is_a_clear_error(clean_agent: AgentProcess, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_bytes(b"FROM busybox\nLABEL name=caf\xe9\n")
    r = clean_agent.cli("build", str(ctx))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "line 2: not valid UTF-8 (byte 0xe9" in r.stderr
