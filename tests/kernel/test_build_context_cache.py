"""Build contexts kept by the digest of their tar (agent/images/build.py ContextCache), and the
context tar the CLI writes (write_context)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from agent.images import build
from agent.images.build import ContextCache
from deploy.buildcontext import write_context

pytestmark = pytest.mark.root  # the unpack sets owners, as a layer's does


def _context(tmp: Path, name: str, text: str) -> tuple[Path, str]:
    src = tmp / f"src-{name}"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text(text)
    (src / "Dockerfile").write_text("FROM busybox\n")
    os.symlink("d/f.txt", src / "link")
    tar = tmp / f"{name}.tar"
    with open(tar, "wb") as f:
        write_context(src, f)
    return tar, hashlib.sha256(tar.read_bytes()).hexdigest()


def test_context_tar_has_plain_members(tmp_path: Path) -> None:
    tar, _ = _context(tmp_path, "a", "hello")
    with tarfile.open(tar) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert sorted(members) == ["Dockerfile", "d", "d/f.txt", "link"]
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and not m.pax_headers for m in members.values())
    assert members["link"].issym() and members["link"].linkname == "d/f.txt"
    assert members["d/f.txt"].mtime == int(os.stat(tmp_path / "src-a" / "d" / "f.txt").st_mtime)


def test_same_context_is_unpacked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ContextCache(tmp_path / "contexts")
    tar, digest = _context(tmp_path, "a", "hello")
    (tmp_path / "w1").mkdir()
    first = cache.acquire(tar, digest, tmp_path / "w1")
    assert (first / "d" / "f.txt").read_text() == "hello" and first.parent == tmp_path / "contexts"
    cache.release(first)

    def no_unpack(*_a: object) -> None:
        raise AssertionError("unpacked again")

    monkeypatch.setattr(build, "unpack_context", no_unpack)
    (tmp_path / "w2").mkdir()
    again = cache.acquire(tar, digest, tmp_path / "w2")
    assert again == first and not (tmp_path / "w2" / "context").exists()
    cache.release(again)


def test_only_the_recent_contexts_are_kept_and_none_in_use(tmp_path: Path) -> None:
    cache = ContextCache(tmp_path / "contexts")
    held = []
    for i, name in enumerate("abcd"):
        tar, digest = _context(tmp_path, name, name * (i + 1))
        (tmp_path / f"w{name}").mkdir()
        held.append(cache.acquire(tar, digest, tmp_path / f"w{name}"))
    # all four in use: none removed
    cache.release(held[3])
    assert all(p.is_dir() for p in held)
    for p in held[:3]:
        cache.release(p)
    left = sorted(p.name for p in (tmp_path / "contexts").iterdir())
    assert len(left) == ContextCache.KEEP
    assert held[0].name not in left


def test_a_big_context_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ContextCache, "MAX_BYTES", 100)
    cache = ContextCache(tmp_path / "contexts")
    tar, digest = _context(tmp_path, "a", "x" * 1000)
    (tmp_path / "w").mkdir()
    got = cache.acquire(tar, digest, tmp_path / "w")
    assert got == tmp_path / "w" / "context" and not (tmp_path / "contexts").exists()
    cache.release(got)


def test_context_tar_names_that_do_not_fit_ustar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src / ("x" * 90) / ("y" * 90)
    deep.mkdir(parents=True)
    (deep / "f").write_text("deep")
    (src / ("z" * 120)).write_text("long")
    (src / "é.txt").write_bytes(b"\0" * 1000)
    os.symlink("l" * 150, src / "dangling")
    tar = tmp_path / "c.tar"
    with open(tar, "wb") as f:
        assert write_context(src, f) == 6
    with tarfile.open(tar) as tf:
        names = {m.name: m for m in tf.getmembers()}
        assert tf.extractfile(f"{'x' * 90}/{'y' * 90}/f").read() == b"deep"  # type: ignore[union-attr]
        assert tf.extractfile("z" * 120).read() == b"long"  # type: ignore[union-attr]
        assert tf.extractfile("é.txt").read() == b"\0" * 1000  # type: ignore[union-attr]
    assert names["dangling"].linkname == "l" * 150
    assert names[f"{'x' * 90}/{'y' * 90}"].isdir()


def test_digests_are_remembered_for_a_kept_context_only(tmp_path: Path) -> None:
    cache = ContextCache(tmp_path / "contexts")
    tar, digest = _context(tmp_path, "a", "hello")
    (tmp_path / "w").mkdir()
    kept = cache.acquire(tar, digest, tmp_path / "w")
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "sha256:x"

    assert cache.digest(kept, ("COPY", (("d", ("d",)),)), compute) == "sha256:x"
    assert cache.digest(kept, ("COPY", (("d", ("d",)),)), compute) == "sha256:x"
    assert len(calls) == 1
    cache.digest(tmp_path / "w", ("COPY", ()), compute)  # not a kept context: computed each time
    cache.digest(tmp_path / "w", ("COPY", ()), compute)
    assert len(calls) == 3
    cache.release(kept)


def test_usage_and_prune_count_the_kept_files_and_spare_one_in_use(tmp_path: Path) -> None:
    """system df's Build Cache row and builder prune: what the kept contexts take, and only what no
    build is using goes."""
    cache = ContextCache(tmp_path / "contexts")
    assert cache.usage() == (0, 0, 0, 0) and cache.prune() == 0
    tar_a, dig_a = _context(tmp_path, "a", "a" * 1000)
    tar_b, dig_b = _context(tmp_path, "b", "b" * 50)
    (tmp_path / "wa").mkdir()
    (tmp_path / "wb").mkdir()
    a = cache.acquire(tar_a, dig_a, tmp_path / "wa")
    b = cache.acquire(tar_b, dig_b, tmp_path / "wb")
    cache.release(b)  # a is still in use by its build
    dockerfile = len(b"FROM busybox\n")
    # regular files' bytes (as an image's size): the symlink and the directories count nothing
    assert cache.usage() == (2, 1, 1000 + 50 + 2 * dockerfile, 50 + dockerfile)
    assert cache.prune() == 50 + dockerfile
    assert not b.exists() and (a / "d" / "f.txt").read_text() == "a" * 1000
    assert cache.usage() == (1, 1, 1000 + dockerfile, 0)
    (tmp_path / "wb2").mkdir()
    again = cache.acquire(tar_b, dig_b, tmp_path / "wb2")  # pruned: unpacked again, whole
    assert (again / "d" / "f.txt").read_text() == "b" * 50
    cache.release(again)
    cache.release(a)
    assert cache.prune() == 1000 + 50 + 2 * dockerfile
    assert list((tmp_path / "contexts").iterdir()) == []
