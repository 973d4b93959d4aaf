"""An agent whose disk fills (agent/diskspace.py): its state directory on a small tmpfs of the
test's own, filled to ~97 % with one file. New work is refused with a reason naming the disk, what
runs goes on and stays readable, and once the file is gone the agent takes work again."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess, import_busybox

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def small_disk_agent(tmp_path: Path, busybox_tar_path: Path) -> Iterator[AgentProcess]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    a = AgentProcess(tmp_path / "agent")
    a.root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0711", "dy-test-disk", str(a.root)], check=True)
    try:
        a.start()
        import_busybox(a, busybox_tar_path)
        yield a
    finally:
        try:
            a.destroy()
        finally:
            subprocess.run(["umount", "-l", str(a.root)], check=False, capture_output=True)  # if destroy() left it


def fill(root: Path, leave_percent: float) -> Path:
    st = os.statvfs(root)
    size = st.f_bavail * st.f_frsize - int(leave_percent / 100 * st.f_blocks * st.f_frsize)
    path = root / "filler"
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    return path


def test_a_full_disk_refuses_new_work_and_recovers(small_disk_agent: AgentProcess) -> None:
    a = small_disk_agent
    a.cli("run", "-d", "--name", "before", "busybox", "sh", "-c", "echo kept > /data; sleep 600", check=True)
    filler = fill(a.root, leave_percent=3)
    for argv in (["run", "--rm", "busybox", "true"], ["create", "busybox", "true"]):
        r = a.cli(*argv)
        assert r.returncode != 0, f"{argv} ran with the disk 97 % full"
        assert "cannot create a container: disk almost full: " + str(a.root) in r.stderr, r.stderr
        assert "below the 5 % this agent keeps free (--min-free-disk)" in r.stderr, r.stderr
    # what runs goes on, and its state on disk is intact
    assert json.loads(a.cli("inspect", "before", check=True).stdout)[0]["State"]["Running"] is True
    assert a.cli("exec", "before", "cat", "/data", check=True).stdout.strip() == "kept"
    assert len(a.cli("ps", "-aq", check=True).stdout.split()) == 1  # nothing half-made is left
    filler.unlink()
    assert a.cli("run", "--rm", "busybox", "echo", "room again", check=True).stdout.strip() == "room again"
    a.cli("rm", "-f", "before", check=True)


def test_min_free_disk_zero_turns_the_check_off(small_disk_agent: AgentProcess) -> None:
    a = small_disk_agent
    a.stop()
    a.extra_args = ["--min-free-disk", "0"]
    a.start()
    filler = fill(a.root, leave_percent=3)
    try:
        assert a.cli("run", "--rm", "busybox", "echo", "ok", check=True).stdout.strip() == "ok"
    finally:
        filler.unlink()


def test_min_free_disk_out_of_range_is_refused_by_name(tmp_path: Path) -> None:
    from tests.agent_harness import CLI, REPO, _env

    r = subprocess.run([*CLI, "agent", "--root", str(tmp_path), "--min-free-disk", "150"], capture_output=True,
                       text=True, env=_env(), cwd=REPO, timeout=30)
    assert r.returncode == 2 and "--min-free-disk" in r.stderr and "150" in r.stderr, r.stderr
