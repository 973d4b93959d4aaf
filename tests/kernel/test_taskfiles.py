"""A task's secrets on a real tmpfs (agent/taskfiles.py): written with their owners and modes, never
on the disk below, unmounted and gone on remove and on prune, nothing left by a failed write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.model import InvalidArgument, TaskFile
from agent.taskfiles import TaskFiles, check

pytestmark = [pytest.mark.root]


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) and line.split()[2] == "tmpfs"
               for line in Path("/proc/mounts").read_text().splitlines())


@pytest.fixture
def files(tmp_path: Path) -> TaskFiles:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    tf = TaskFiles(tmp_path / "taskfiles")
    yield tf
    tf.prune(set())


def test_write_mounts_a_tmpfs_with_each_files_owner_and_mode(files: TaskFiles) -> None:
    refs = [TaskFile("secret", "pw", "/run/secrets/pw", 1000, 1001, 0o400),
            TaskFile("secret", "pw", "/etc/pw", 0, 0, 0o444),  # the same secret twice: two files
            TaskFile("config", "app", "/etc/app.conf", 0, 0, 0o440)]
    files.write("c1", refs, {("secret", "pw"): b"hunter2", ("config", "app"): b"conf"})
    d = files.dir("c1")
    assert _mounted(d)
    assert os.stat(d).st_mode & 0o777 == 0o700
    st = [os.stat(d / str(i)) for i in range(3)]
    assert [(s.st_uid, s.st_gid, s.st_mode & 0o7777) for s in st] == [(1000, 1001, 0o400), (0, 0, 0o444), (0, 0, 0o440)]
    assert (d / "0").read_bytes() == b"hunter2" and (d / "2").read_bytes() == b"conf"
    mounts = files.mounts("c1", refs)
    assert [(m.source, m.target, m.readonly) for m in mounts] == [
        (str(d / "0"), "/run/secrets/pw", True), (str(d / "1"), "/etc/pw", True), (str(d / "2"), "/etc/app.conf", True)]
    files.remove("c1")
    assert not _mounted(d) and not d.exists()


def test_a_failed_write_leaves_nothing(files: TaskFiles) -> None:
    with pytest.raises(InvalidArgument, match="no data for secret missing"):
        files.write("c2", [TaskFile("secret", "missing", "/run/secrets/missing")], {})
    assert not files.dir("c2").exists()
    from agent.taskfiles import TMPFS_SIZE

    with pytest.raises(OSError):  # more than the tmpfs holds (ENOSPC): after the mount, so it is undone
        files.write("c3", [TaskFile("secret", "pw", "/x")], {("secret", "pw"): b"x" * (TMPFS_SIZE + 4096)})
    assert not _mounted(files.dir("c3")) and not files.dir("c3").exists()


def test_prune_keeps_only_live_containers(files: TaskFiles) -> None:
    for cid in ("keep", "stale"):
        files.write(cid, [TaskFile("secret", "pw", "/run/secrets/pw")], {("secret", "pw"): b"x"})
    assert files.prune({"keep"}) == ["stale"]
    assert _mounted(files.dir("keep")) and not files.dir("stale").exists()


@pytest.mark.parametrize("ref, problem", [
    (TaskFile("volume", "pw", "/x"), "kind 'volume'"),
    (TaskFile("secret", "a/b", "/x"), "invalid secret name"),
    (TaskFile("secret", "pw", "rel"), "not a clean absolute path"),
    (TaskFile("secret", "pw", "/a/../b"), "not a clean absolute path"),
    (TaskFile("secret", "pw", "/x", mode=0o10000), "out of range"),
])
def test_check_refuses_bad_files(ref: TaskFile, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        check([ref])
    with pytest.raises(InvalidArgument, match="two files at /x"):
        check([TaskFile("secret", "a", "/x"), TaskFile("config", "b", "/x")])
