"""Snapshotter: containerd's model (prepare/view/commit/mounts/remove), real overlay mounts (root),
diff with whiteouts, applying that diff on a fresh base gives the same tree, 100+ layer stacks."""

from __future__ import annotations

import io
import os
import pickle
import stat
import tarfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.images import (
    ImageError,
    ImageInUse,
    Mount,
    SnapshotExists,
    Snapshotter,
    mount_all,
    overlay_mount_data,
)
from agent.images.snapshotter import PAGE_SIZE
from tests.images import make_tar, tar_names

root = pytest.mark.root
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay mounts, whiteouts)")


def in_private_mount_ns(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a forked child with its own mount namespace: whatever it mounts is gone when the
    child exits, even if it fails half-way (it also unmounts what it can itself)."""
    from agent.runtime import syscalls

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException:
            payload = pickle.dumps(("err", traceback.format_exc()))
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status != "ok":
        raise AssertionError("in the mount namespace child:\n" + value)
    return value


def listing(top: Path) -> dict[str, tuple[Any, ...]]:
    """A comparable description of a tree: type, mode, owner, content or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, f.read())
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid)
            else:
                out[rel] = ("other", st.st_mode, st.st_rdev)
    return out


def tar_listing(data: bytes) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            if m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = ("file", m.mode, m.uid, f.read())
            elif m.issym():
                out[m.name] = ("link", m.linkname)
            elif m.isdir():
                out[m.name] = ("dir", m.mode, m.uid)
    return out


BASE = make_tar(
    ("file", "keep", b"k"),
    ("file", "gone", b"g"),
    ("dir", "d"),
    ("file", "d/old", b"o"),
    ("dir", "e"),
    ("file", "e/x", b"x"),
    ("file", "e/y", b"y"),
    ("dir", "bin"),
    ("file", "bin/tool", b"#!/bin/sh\n", 0o4755),
)


@pytest.fixture
def snaps(tmp_path: Path) -> Snapshotter:
    return Snapshotter(tmp_path / "a" / "snapshots")


def _upper(mounts: list[Mount]) -> Path:
    opt = next(o for o in mounts[0].options if o.startswith("upperdir="))
    return Path(opt.removeprefix("upperdir="))


def test_model(snaps: Snapshotter) -> None:
    base, _ = snaps.apply("", io.BytesIO(BASE))
    mounts = snaps.prepare("c1", base)
    assert len(mounts) == 1 and mounts[0].type == "overlay"
    opts = mounts[0].options
    assert opts[0].startswith("workdir=") and opts[1].startswith("upperdir=") and opts[2].startswith("lowerdir=")
    assert snaps.mounts("c1") == mounts
    with pytest.raises(SnapshotExists):
        snaps.prepare("c1", base)
    with pytest.raises(ImageInUse, match="has children"):
        snaps.remove(base)
    # Scratch: a plain bind of the upper dir. A view of one layer: a read-only bind.
    (scratch,) = snaps.prepare("s", "")
    assert scratch.type == "bind" and "rw" in scratch.options
    (view,) = snaps.view("v", base)
    assert view.type == "bind" and "ro" in view.options
    with pytest.raises(ImageError, match="only an active snapshot"):
        snaps.commit("v")
    # Writing into the upper dir without mounting (what a container's writes end up as). The
    # layer's tar records mtimes in whole seconds: both writes get one, or under load the second
    # could fall in the next second and make another layer.
    (_upper(mounts) / "new").write_bytes(b"n")
    os.utime(_upper(mounts) / "new", (1_700_000_000, 1_700_000_000))
    assert snaps.usage("c1") == 1
    diff = io.BytesIO()
    diff_id = snaps.diff("c1", diff)
    assert tar_names(diff.getvalue()) == ["new"]
    assert snaps.commit("c1") == diff_id
    assert not snaps.exists("c1")
    from agent.images import chain_id

    top = chain_id([base, diff_id])
    info = snaps.stat(top)
    assert info.kind == "committed" and info.parent == base
    (two,) = snaps.view("v2", top)
    assert two.type == "overlay" and two.options[0].startswith("lowerdir=") and two.options[0].count(":") == 1
    # Committing the same change again gives the same layer, stored once.
    m2 = snaps.prepare("c2", base)
    (_upper(m2) / "new").write_bytes(b"n")
    os.utime(_upper(m2) / "new", (1_700_000_000, 1_700_000_000))
    assert snaps.commit("c2") == diff_id
    assert [s.key for s in snaps.list() if s.kind == "committed"].count(top) == 1
    # Children before parents.
    with pytest.raises(ImageInUse):
        snaps.remove(base)
    for key in ("v2", "v", "s", top, base):
        snaps.remove(key)
    assert snaps.list() == []
    assert list((snaps.root / "l").iterdir()) == []


def test_fill_makes_a_layer_the_snapshots_own_changes(snaps: Snapshotter) -> None:
    """A moved container's diff goes into its new snapshot's upper dir: diff() gives all of it back
    (so the next move carries it), where a layer below a fresh upper would have dropped out."""
    base, _ = snaps.apply("", io.BytesIO(BASE))
    first = io.BytesIO()
    m = snaps.prepare("c1", base)
    (_upper(m) / "moved").write_bytes(b"m")
    snaps.diff("c1", first)
    snaps.prepare("c2", base)
    snaps.fill("c2", io.BytesIO(first.getvalue()), "rootfs-diff.tar")
    again = io.BytesIO()
    snaps.diff("c2", again)
    assert tar_names(again.getvalue()) == ["moved"]
    with pytest.raises(ImageError, match="has changes of its own"):
        snaps.fill("c2", io.BytesIO(first.getvalue()))
    with pytest.raises(ImageError, match="only an active snapshot can be filled"):
        snaps.fill(base, io.BytesIO(first.getvalue()))
    for key in ("c1", "c2", base):
        snaps.remove(key)


def test_layers_are_unpacked_once(snaps: Snapshotter) -> None:
    a, _ = snaps.apply("", io.BytesIO(BASE))
    b, _ = snaps.apply("", io.BytesIO(BASE))
    assert a == b and len(snaps.list()) == 1


def test_interrupted_work_is_cleaned_on_open(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path / "snapshots")
    base, _ = s.apply("", io.BytesIO(BASE))
    dead = 2**22 + 12345  # above pid_max's default range: no such process
    (s.root / f"tmp-{dead}-abc" / "fs").mkdir(parents=True)
    (s.root / "orphan-dir").mkdir()
    os.symlink("../nowhere/fs", s.root / "l" / "ORPHANLINK")
    s2 = Snapshotter(tmp_path / "snapshots")
    names = sorted(p.name for p in s2.root.iterdir())
    assert names == sorted(["l", "lock", "metadata.json", s2.stat(base).id])
    assert [p.name for p in (s2.root / "l").iterdir()] == [s2.stat(base).link]


def _deep_stack(snaps: Snapshotter, n: int) -> str:
    parent = ""
    for i in range(n):
        parent, _ = snaps.apply(parent, io.BytesIO(make_tar(("file", f"layer{i:03d}", str(i).encode()))))
    return parent


def test_mount_options_fit_in_a_page_with_many_layers(tmp_path: Path) -> None:
    # A long root path on purpose: the page limit must hold however deep the store lives.
    deep_root = tmp_path / ("x" * 100) / ("y" * 100) / "snapshots"
    snaps = Snapshotter(deep_root)
    top = _deep_stack(snaps, 150)
    (m,) = snaps.prepare("c", top)
    assert len(m.data()) > PAGE_SIZE  # absolute paths alone would not fit...
    cwd, data = overlay_mount_data(m)
    assert cwd == str(deep_root / "l")
    assert len(data) < PAGE_SIZE  # ...the compacted form does
    assert data.count(":") == 149


@root
@needs_root
def test_overlay_with_120_layers_mounts_for_real(tmp_path: Path) -> None:
    snaps = Snapshotter(tmp_path / ("z" * 120) / "snapshots")
    top = _deep_stack(snaps, 120)
    mounts = snaps.prepare("c", top)
    target = tmp_path / "rootfs"
    target.mkdir()

    def child() -> tuple[bytes, bytes, int]:
        from agent.runtime import syscalls

        mount_all(mounts, str(target))
        try:
            (target / "written").write_bytes(b"w")
            return (target / "layer000").read_bytes(), (target / "layer119").read_bytes(), len(os.listdir(target))
        finally:
            syscalls.umount(str(target), syscalls.MNT_DETACH)

    assert in_private_mount_ns(child) == (b"0", b"119", 121)
    assert (_upper(mounts) / "written").read_bytes() == b"w"
    assert not os.path.ismount(target)


def _change_rootfs(target: Path) -> None:
    """What a container does: add, modify, delete a file, replace a directory, delete in a dir."""
    (target / "newfile").write_bytes(b"new")
    (target / "keep").write_bytes(b"modified")
    (target / "gone").unlink()
    (target / "d" / "old").unlink()
    (target / "d").rmdir()
    (target / "d").mkdir()  # overlay makes it opaque: d/old must not come back
    (target / "d" / "fresh").write_bytes(b"f")
    (target / "e" / "x").unlink()
    (target / "m" / "n").mkdir(parents=True)
    os.symlink("/bin/tool", target / "m" / "n" / "link")
    os.chmod(target / "bin" / "tool", 0o4711)  # copy-up with a mode change, setuid kept


@root
@needs_root
def test_prepare_mount_change_diff_apply_matches(tmp_path: Path) -> None:
    from agent.runtime import syscalls

    snaps = Snapshotter(tmp_path / "a" / "snapshots")
    base, _ = snaps.apply("", io.BytesIO(BASE))
    mounts = snaps.prepare("c1", base)
    target = tmp_path / "rootfs"
    target.mkdir()

    def change() -> dict[str, tuple[Any, ...]]:
        mount_all(mounts, str(target))
        try:
            _change_rootfs(target)
            return listing(target)
        finally:
            syscalls.umount(str(target), syscalls.MNT_DETACH)

    merged = in_private_mount_ns(change)
    assert not os.path.ismount(target)
    assert "gone" not in merged and "d/old" not in merged and "e/x" not in merged
    assert merged["keep"][3] == b"modified" and merged["bin/tool"][1] == 0o4711

    diff = io.BytesIO()
    diff_id = snaps.diff("c1", diff)
    names = set(tar_names(diff.getvalue()))
    assert {".wh.gone", "d/.wh..wh..opq", "e/.wh.x", "newfile", "keep", "d/fresh", "m/n/link", "bin/tool"} <= names
    assert "e/y" not in names  # unchanged files are not in the diff

    # docker export of the container (no mount needed) shows the same tree as the mount did.
    flat = io.BytesIO()
    snaps.export("c1", flat)
    assert tar_listing(flat.getvalue()) == merged

    # Apply the diff as a layer on the same base in another store: the result is the same tree.
    other = Snapshotter(tmp_path / "b" / "snapshots")
    base2, _ = other.apply("", io.BytesIO(BASE))
    top2, stats = other.apply(base2, io.BytesIO(diff.getvalue()), expected_diff_id=diff_id)
    assert stats.whiteouts == 3
    view = other.view("v", top2)
    target2 = tmp_path / "rootfs2"
    target2.mkdir()

    def look() -> dict[str, tuple[Any, ...]]:
        mount_all(view, str(target2))
        try:
            return listing(target2)
        finally:
            syscalls.umount(str(target2), syscalls.MNT_DETACH)

    assert in_private_mount_ns(look) == merged
    # Committing the container gives the same layer id the other store computed.
    assert snaps.commit("c1") == diff_id
    assert snaps.exists(top2)


@root
@needs_root
def test_volatile_mounts_of_a_container_that_goes_with_its_exit(snaps: Snapshotter, tmp_path: Path) -> None:
    """`run --rm`'s rootfs: overlay with `volatile` (its umount does not sync the host's filesystem
    below); any other container's, and views, without."""
    from agent.images.snapshotter import mount_all, overlay_has_volatile

    if not overlay_has_volatile():
        pytest.skip("overlayfs here predates volatile (Linux 5.10)")
    base, _ = snaps.apply("", io.BytesIO(BASE))
    snaps.prepare("rm-me", base)
    snaps.prepare("keep-me", base)
    volatile = snaps.mounts("rm-me", volatile=True)
    assert volatile[0].options[-1] == "volatile"
    assert "volatile" not in snaps.mounts("keep-me")[0].options
    snaps.view("v", base)
    assert all("volatile" not in m.options for m in snaps.mounts("v", volatile=True))
    target = tmp_path / "mnt"
    target.mkdir()

    def mounted() -> str:
        mount_all(volatile, str(target))
        (target / "written").write_bytes(b"x")
        line = next(ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                    if ln.split()[4] == str(target))
        return line.split(" - ", 1)[1]

    super_options = in_private_mount_ns(mounted)
    shown = super_options.split()[-1].split(",")  # newer kernels show it as fsync=volatile
    assert super_options.startswith("overlay ") and ("volatile" in shown or "fsync=volatile" in shown)
    assert (_upper(snaps.mounts("rm-me")) / "written").read_bytes() == b"x"
