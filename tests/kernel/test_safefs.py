"""agent/images/safefs.py on the real kernel: paths resolved below a root never follow a symlink at
any component, with openat2 and with the O_NOFOLLOW walk; the descriptor cache never outlives a
removed directory; attributes never reach through a link."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.images import safefs
from agent.images.safefs import Root, UnsafePath, set_attrs

pytestmark = pytest.mark.root


@pytest.fixture(params=["openat2", "walk"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Root, Path]]:
    safefs.use_openat2(False if request.param == "walk" else None)
    outside = tmp_path / "outside"
    (outside / "q").mkdir(parents=True)
    (outside / "secret").write_text("s")
    r = tmp_path / "root"
    (r / "a" / "b").mkdir(parents=True)
    (r / "file").write_text("f")
    os.symlink(str(outside), r / "abs")
    os.symlink("../outside", r / "a" / "up")
    with Root(r) as fs:
        yield fs, outside
    safefs.use_openat2(None)


def test_no_symlink_is_followed_at_any_component(root: tuple[Root, Path]) -> None:
    fs, outside = root
    for parts, where in ((["abs"], "abs"), (["abs", "q"], "abs"), (["a", "up", "q"], "a/up")):
        with pytest.raises(UnsafePath) as e:
            fs.opendir(parts, create=True)
        assert (e.value.where, e.value.kind) == (where, "symlink")
    assert sorted(os.listdir(outside)) == ["q", "secret"]  # nothing made out there
    with pytest.raises(UnsafePath, match="'file' is not a directory"):
        fs.opendir(["file", "x"])
    with pytest.raises(OSError) as oe:
        fs.open(["abs"], os.O_RDONLY)
    assert oe.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        fs.open(["abs", "secret"], os.O_RDONLY)
    with pytest.raises(ValueError):
        fs.opendir(["a", "..", ".."])


def test_a_cached_directory_replaced_by_a_link_is_not_used(root: tuple[Root, Path]) -> None:
    fs, outside = root
    os.close(fs.opendir(["a", "b"]))  # now cached
    parent = fs.opendir(["a"])
    try:
        fs.remove(parent, "b")
        os.symlink(str(outside), "b", dir_fd=parent)
    finally:
        os.close(parent)
    with pytest.raises(UnsafePath):
        fs.opendir(["a", "b"])
    made = fs.opendir(["a", "new", "deeper"], create=True)
    os.close(made)
    assert (fs.path / "a" / "new" / "deeper").is_dir()


def test_attributes_of_a_symlink_stay_on_the_symlink(root: tuple[Root, Path]) -> None:
    fs, outside = root
    before = os.stat(outside / "secret")
    set_attrs(fs.fd, "abs", None, (4242, 4242), (0, 0), symlink=True)
    st = os.lstat(fs.path / "abs")
    assert stat.S_ISLNK(st.st_mode) and st.st_uid == 4242
    after = os.stat(outside / "secret")
    assert (after.st_uid, after.st_mtime_ns, after.st_ctime_ns) == (before.st_uid, before.st_mtime_ns,
                                                                   before.st_ctime_ns)
    # And anything else is opened O_NOFOLLOW: handing it a symlink fails instead of following it.
    with pytest.raises(OSError) as e:
        set_attrs(fs.fd, "abs", 0o6777, (4242, 4242), None)
    assert e.value.errno == errno.ELOOP
    assert stat.S_IMODE(os.stat(outside).st_mode) != 0o6777
