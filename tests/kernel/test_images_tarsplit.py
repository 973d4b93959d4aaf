"""A layer's tar made again from its unpacked directory (agent/images/tarsplit.py): byte for byte
the tar that was applied, whatever it held (the same name twice, a directory replaced by a file,
hardlinks, whiteouts, PAX/GNU long names, compression), checked against the diff_id as it is read;
and an image costs its size once on disk through import, load, commit and save."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.images import ImageStore, InvalidArchive
from agent.images.layers import apply_layer
from agent.images.tarsplit import INLINE, SPLIT, open_layer_tar

pytestmark = pytest.mark.root


def _tar(entries: list[tuple[Any, ...]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            data = None
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _round_trip(tmp: Path, data: bytes, plain: bytes | None = None) -> tuple[bytes, Path]:
    """Apply ``data`` (maybe compressed) with a tar-split; the tar made again, and the directory."""
    d = tmp / f"layer-{hashlib.sha256(data).hexdigest()[:12]}-{os.urandom(3).hex()}"
    (d / "fs").mkdir(parents=True)
    stats = apply_layer(io.BytesIO(data), d / "fs", split=d)
    plain = data if plain is None else plain
    assert stats.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    with open_layer_tar(d, stats.diff_id, stats.tar_size) as f:
        return f.read(), d


CASES: dict[str, list[tuple[Any, ...]]] = {
    "files and a long name": [("dir", "a"), ("file", "a/x", b"1" * 5000), ("file", "b" * 200, b"long" * 999)],
    "the same name twice": [("file", "x", b"first" * 100), ("file", "x", b"second"), ("file", "e", b"")],
    "a directory replaced by a file": [("dir", "d"), ("file", "d/1", b"one" * 3000), ("file", "d", b"now a file")],
    "a hardlink, then its target replaced": [("file", "t", b"tgt" * 400), ("link", "h", "t"), ("file", "t", b"new")],
    "whiteouts, one with data": [("file", ".wh.gone", b"data in a whiteout"), ("dir", "o"),
                                 ("file", "o/.wh..wh..opq", b""), ("sym", "ln", "/etc/passwd")],
    "non-ASCII names": [("file", "x\u00e9\u4e2d", b"unicode" * 10), ("dir", "\u00fc"), ("file", "\u00fc/f", b"f")],
    "a big file": [("file", "big", os.urandom(3 << 20)), ("file", "after", b"a")],
    "empty": [],
}


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_tar_comes_back_byte_for_byte(tmp_path: Path, case: str, fmt: int) -> None:
    data = _tar(CASES[case], fmt)
    again, d = _round_trip(tmp_path, data)
    assert again == data
    contents = sum(len(e[2]) for e in CASES[case] if e[0] == "file")
    # The tar-split holds the headers (compressed), not the contents.
    assert (d / SPLIT).stat().st_size < 4096 + len(data) - contents
    # A content the layer replaced is kept aside (it is not in fs any more); nothing else is.
    replaced = case in ("the same name twice", "a directory replaced by a file", "a hardlink, then its target replaced")
    assert (d / INLINE).exists() == replaced


@pytest.mark.parametrize("compress", [lambda b: gzip.compress(b, mtime=0), zstandard.compress], ids=["gzip", "zstd"])
def test_a_compressed_layer_comes_back_as_its_plain_tar(tmp_path: Path, compress: Any) -> None:
    data = _tar(CASES["files and a long name"])
    again, _ = _round_trip(tmp_path, compress(data), plain=data)
    assert again == data


def test_a_changed_layer_is_refused_naming_it(tmp_path: Path) -> None:
    data = _tar([("file", "f", b"x" * 10_000), ("file", "g", b"y")])
    d = tmp_path / "l"
    (d / "fs").mkdir(parents=True)
    stats = apply_layer(io.BytesIO(data), d / "fs", split=d)
    (d / "fs" / "f").chmod(0o644)
    with open(d / "fs" / "f", "r+b") as f:
        f.write(b"z")  # same size, other bytes
    with pytest.raises(InvalidArchive, match=r"layer sha256:.*: the unpacked layer no longer makes its tar"), \
            open_layer_tar(d, stats.diff_id, stats.tar_size, f"layer {stats.diff_id}") as f:
        f.read()
    os.unlink(d / "fs" / "g")
    with pytest.raises(FileNotFoundError), open_layer_tar(d, stats.diff_id, stats.tar_size) as f:
        f.read()


NAMES = ["a", "a/b", "b", "a/b/c", ".wh.a", "a/.wh.b"]


def _entry() -> st.SearchStrategy[tuple[Any, ...]]:
    name = st.sampled_from(NAMES)
    return st.one_of(
        st.tuples(st.just("dir"), name),
        st.tuples(st.just("file"), name, st.binary(max_size=3000)),
        st.tuples(st.just("sym"), name, st.sampled_from(["a", "/x", "b/c"])),
        st.tuples(st.just("link"), name, st.sampled_from(["a", "a/b", "b"])),
    )


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_entry(), max_size=12), fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_every_layer_the_applier_accepts_comes_back_byte_for_byte(tmp_path: Path, entries: list[tuple[Any, ...]],
                                                                  fmt: int) -> None:
    data = _tar(entries, fmt)
    try:
        again, _ = _round_trip(tmp_path, data)
    except InvalidArchive:
        return  # refused by the applier (a link to what is not there, a path through a file...)
    assert again == data


def _disk(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_an_image_costs_its_size_once_through_import_commit_save_and_load(tmp_path: Path) -> None:
    payload = os.urandom(4 << 20)
    data = _tar([("dir", "bin"), ("file", "bin/blob", payload), ("file", "etc", b"x")])
    store = ImageStore(tmp_path / "store")
    image = store.import_tar(io.BytesIO(gzip.compress(data, compresslevel=1)), "one:1")
    assert store.content.total_size() < 16 << 10  # config and manifest only: no layer blob
    assert len(payload) <= _disk(tmp_path / "store") < len(payload) + (64 << 10)
    for fmt in ("docker", "oci"):
        out = io.BytesIO()
        store.save(["one:1"], out, fmt)
        store.remove("one:1")
        assert _disk(tmp_path / "store") < 64 << 10
        [loaded] = store.load(io.BytesIO(out.getvalue()))
        assert loaded.id == image.id and loaded.repo_tags == ["one:1"]
        assert len(payload) <= _disk(tmp_path / "store") < len(payload) + (64 << 10)
        # The layer in the archive is the tar that was imported, made again.
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
            name = {"docker": f"{image.diff_ids[0].removeprefix('sha256:')}.tar",
                    "oci": f"blobs/sha256/{image.diff_ids[0].removeprefix('sha256:')}"}[fmt]
            member = tf.extractfile(name)
            assert member is not None and member.read() == data
