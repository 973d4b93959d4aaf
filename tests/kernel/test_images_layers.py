"""Layer tarballs: hostile input is refused with a clear error, nothing is written outside the
store and nothing partial is left in it; OCI whiteouts become overlay whiteouts and back."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from agent.images import InvalidArchive, Snapshotter, write_diff, write_flattened
from agent.images.layers import OPAQUE_XATTR
from tests.images import make_tar, tar_names

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod, trusted.* xattrs) need root")


@pytest.fixture
def snaps(tmp_path: Path) -> Snapshotter:
    return Snapshotter(tmp_path / "store" / "snapshots")


def _assert_clean(snaps: Snapshotter) -> None:
    """Nothing half-applied: no snapshot, no temp dir, no link."""
    assert snaps.list() == []
    leftovers = sorted(p.name for p in snaps.root.iterdir() if p.name not in ("l", "lock", "metadata.json"))
    assert leftovers == []
    assert list((snaps.root / "l").iterdir()) == []


def _apply(snaps: Snapshotter, data: bytes, parent: str = "") -> str:
    chain, _ = snaps.apply(parent, io.BytesIO(data))
    return chain


HOSTILE = [
    ("dotdot", [("file", "../evil", b"x")], "escapes the root"),
    ("dotdot-deep", [("dir", "a"), ("file", "a/../../evil", b"x")], "escapes the root"),
    ("absolute", [("file", "/tmp/evil", b"x")], "absolute path"),
    ("symlink-escape", [("sym", "a/b", "../../../../etc/passwd")], "points outside the root"),
    ("symlink-escape-dotdot", [("sym", "up", "..")], "points outside the root"),
    ("through-symlink", [("sym", "etc", "/etc"), ("file", "etc/evil", b"x")], "goes through symlink 'etc'"),
    ("through-relative-symlink", [("dir", "d"), ("sym", "d/l", "."), ("file", "d/l/x", b"x")], "goes through symlink"),
    ("dir-replaced-by-symlink", [("dir", "a"), ("sym", "a", "/etc"), ("file", "a/evil", b"x")], "goes through symlink 'a'"),
    ("hardlink-dotdot", [("link", "h", "../outside")], "escapes the root"),
    ("hardlink-absolute", [("link", "h", "/etc/passwd")], "absolute path"),
    ("hardlink-missing", [("link", "h", "etc/passwd")], "not in this layer"),
    ("hardlink-through-symlink", [("sym", "s", "/etc"), ("link", "h", "s/passwd")], "not a directory"),
    ("hardlink-to-dir", [("dir", "d"), ("link", "h", "d")], "not a file"),
    ("char-device", [("chr", "dev/null", 1, 3)], "character device 1:3"),
    ("char-device-0-0", [("chr", "x", 0, 0)], "character device 0:0"),
    ("block-device", [("blk", "dev/sda", 8, 0)], "block device 8:0"),
    ("whiteout-dotdot", [("file", ".wh...", b"")], "names nothing"),
]


@pytest.mark.parametrize(("name", "entries", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_members_are_refused(snaps: Snapshotter, tmp_path: Path, name: str, entries: list[Any], message: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cwd = os.getcwd()
    os.chdir(outside)  # a relative escape would land here
    try:
        with pytest.raises(InvalidArchive, match=message):
            _apply(snaps, make_tar(*entries))
    finally:
        os.chdir(cwd)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "store" / "evil").exists()
    _assert_clean(snaps)


def test_symlink_to_outside_dir_then_write_through_it(snaps: Snapshotter, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    with pytest.raises(InvalidArchive, match="goes through symlink"):
        _apply(snaps, make_tar(("sym", "x", str(target)), ("file", "x/pwned", b"x")))
    assert list(target.iterdir()) == []
    _assert_clean(snaps)


def test_absolute_symlinks_are_kept_verbatim(snaps: Snapshotter) -> None:
    chain = _apply(snaps, make_tar(("dir", "bin"), ("file", "bin/busybox", b"\x7fELF", 0o755), ("sym", "bin/sh", "/bin/busybox"), ("sym", "lib", "usr/lib")))
    fs = snaps.layer_dirs(chain)[0]
    assert os.readlink(fs / "bin" / "sh") == "/bin/busybox"
    assert os.readlink(fs / "lib") == "usr/lib"


def test_setuid_kept_inside_root(snaps: Snapshotter) -> None:
    chain = _apply(snaps, make_tar(("file", "bin/su", b"x", 0o4755), ("file", "bin/wall", b"y", 0o2755), ("dir", "tmp", 0o1777)))
    fs = snaps.layer_dirs(chain)[0]
    assert stat.S_IMODE(os.stat(fs / "bin" / "su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(fs / "bin" / "wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.stat(fs / "tmp").st_mode) == 0o1777


def test_fifo_and_hardlink_inside_layer(snaps: Snapshotter) -> None:
    chain = _apply(snaps, make_tar(("file", "a", b"data"), ("link", "b", "a"), ("fifo", "p")))
    fs = snaps.layer_dirs(chain)[0]
    assert os.stat(fs / "a").st_ino == os.stat(fs / "b").st_ino
    assert stat.S_ISFIFO(os.lstat(fs / "p").st_mode)


def test_readonly_dir_gets_its_mode_after_its_children(snaps: Snapshotter) -> None:
    chain = _apply(snaps, make_tar(("dir", "ro", 0o555), ("file", "ro/f", b"x")))
    fs = snaps.layer_dirs(chain)[0]
    assert (fs / "ro" / "f").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(fs / "ro").st_mode) == 0o555


def _good_tar() -> bytes:
    return make_tar(("dir", "d"), *[("file", f"d/f{i}", os.urandom(3000)) for i in range(5)])


@pytest.mark.parametrize("cut", [100, 512, 1024, 3000, 4096, -1536, -1024, -600])
def test_truncated_streams(snaps: Snapshotter, cut: int) -> None:
    data = _good_tar()
    # Python's tarfile pads to 10240; find the real end of the archive (two zero blocks) and cut
    # relative to it, so "-1024" means "the end-of-archive marker is missing".
    end = len(data.rstrip(b"\0"))
    end += (-end) % 512
    cut_at = cut if cut > 0 else end + 1024 + cut
    with pytest.raises(InvalidArchive, match=r"truncated|invalid tar|not a valid tar"):
        _apply(snaps, data[:cut_at])
    _assert_clean(snaps)


def test_one_zero_block_at_the_end_is_accepted(snaps: Snapshotter) -> None:
    """Go's archive/tar accepts a single end block; so do we."""
    data = _good_tar()
    end = len(data.rstrip(b"\0"))
    end += (-end) % 512
    _apply(snaps, data[: end + 512])


def test_garbage_after_members_is_refused(snaps: Snapshotter) -> None:
    data = _good_tar()
    end = len(data.rstrip(b"\0"))
    end += (-end) % 512
    with pytest.raises(InvalidArchive, match="invalid tar header"):
        _apply(snaps, data[:end] + b"garbage!" * 64 + b"\0" * 1024)
    _assert_clean(snaps)


def test_compressed_layers_and_corruption(snaps: Snapshotter) -> None:
    data = _good_tar()
    gz = gzip.compress(data)
    zst = zstandard.ZstdCompressor().compress(data)
    c1, stats = snaps.apply("", io.BytesIO(gz))
    assert stats.compression == "gzip"
    c2, stats2 = snaps.apply("", io.BytesIO(zst))
    assert stats2.compression == "zstd"
    assert c1 == c2 == stats.diff_id  # diff_id is the digest of the uncompressed tar
    snaps.remove(c1)
    for bad in (gz[: len(gz) // 2], gz[:20] + bytes(b ^ 0xFF for b in gz[20:60]) + gz[60:], zst[: len(zst) // 2], b"\x1f\x8b" + os.urandom(200), os.urandom(5000)):
        with pytest.raises(InvalidArchive):
            _apply(snaps, bad)
    _assert_clean(snaps)


def test_diff_id_mismatch_leaves_nothing(snaps: Snapshotter) -> None:
    with pytest.raises(InvalidArchive, match="diff_id mismatch"):
        snaps.apply("", io.BytesIO(_good_tar()), expected_diff_id="sha256:" + "0" * 64)
    _assert_clean(snaps)


# --- whiteouts ------------------------------------------------------------------------------------

def _is_whiteout(p: Path) -> bool:
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@pytest.mark.root
@root_only
def test_oci_whiteouts_become_overlay_whiteouts_and_back(snaps: Snapshotter, tmp_path: Path) -> None:
    base = _apply(snaps, make_tar(("file", "keep", b"k"), ("file", "gone", b"g"), ("dir", "d"), ("file", "d/old", b"o"), ("dir", "e"), ("file", "e/x", b"x")))
    upper_tar = make_tar(
        ("file", ".wh.gone", b""),
        ("dir", "d"),
        ("file", "d/.wh..wh..opq", b""),
        ("file", "d/new", b"n"),
        ("file", "e/.wh.x", b""),
        ("file", "e/x", b"again"),  # same layer re-adds it: the whiteout only hides lower layers
        ("file", "f/.wh.ghost", b""),  # whiteout in a dir the layer never lists
    )
    top = _apply(snaps, upper_tar, base)
    fs = snaps.layer_dirs(top)[0]
    assert _is_whiteout(fs / "gone")
    assert os.getxattr(fs / "d", OPAQUE_XATTR) == b"y"
    assert (fs / "e" / "x").read_bytes() == b"again"
    assert _is_whiteout(fs / "f" / "ghost")

    out = io.BytesIO()
    digest = write_diff(fs, out)
    names = tar_names(out.getvalue())
    assert ".wh.gone" in names and "d/.wh..wh..opq" in names and "f/.wh.ghost" in names and "e/x" in names
    assert digest == write_diff(fs, None)  # deterministic

    flat = io.BytesIO()
    write_flattened(snaps.layer_dirs(top), flat)
    assert sorted(tar_names(flat.getvalue())) == ["d", "d/new", "e", "e/x", "f", "keep"]


@pytest.mark.root
@root_only
def test_directory_replacing_a_whiteout_is_opaque(snaps: Snapshotter) -> None:
    base = _apply(snaps, make_tar(("dir", "d"), ("file", "d/old", b"o")))
    top = _apply(snaps, make_tar(("file", ".wh.d", b""), ("dir", "d"), ("file", "d/new", b"n")), base)
    fs = snaps.layer_dirs(top)[0]
    assert os.getxattr(fs / "d", OPAQUE_XATTR) == b"y"
    flat = io.BytesIO()
    write_flattened(snaps.layer_dirs(top), flat)
    assert sorted(tar_names(flat.getvalue())) == ["d", "d/new"]


@pytest.mark.root
@root_only
def test_layer_cannot_set_trusted_xattrs(snaps: Snapshotter) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.trusted.overlay.opaque": "y"}
        tf.addfile(info)
    chain = _apply(snaps, buf.getvalue())
    fs = snaps.layer_dirs(chain)[0]
    assert os.listxattr(fs / "d") == []
