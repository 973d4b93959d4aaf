"""A bind's propagation across checkpoint and restore (CRIU): after the restore the container's
mount is still in the host source's peer group (rshared: criu alone would make it a group of its
own; agent/checkpoint/sharing.py rejoins it before the tree resumes), a slave of it (rslave), or
private (rprivate)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess
from tests.kernel.test_mount_propagation import _is_mount, _optional_fields, shared_dir  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.slow]


@pytest.mark.parametrize(("mode", "field"), [("rshared", "shared"), ("shared", "shared"),
                                             ("rslave", "master"), ("rprivate", "")])
def test_propagation_survives_checkpoint_and_restore(clean_agent: AgentProcess, shared_dir: Path,  # noqa: F811
                                                     mode: str, field: str) -> None:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("no working criu (deploy/install-criu.sh)")
    a = clean_agent
    group = next(f for f in _optional_fields(Path("/proc/self/mountinfo").read_text(), str(shared_dir))
                 if f.startswith("shared:")).split(":")[1]
    cid = a.run_detached("-v", f"{shared_dir}:/mnt:{mode}", "busybox", "sleep", "300")
    a.cli("checkpoint", cid, check=True)
    a.cli("restore", cid, check=True)
    pid = a.inspect(cid)["State"]["Pid"]
    fields = _optional_fields(Path(f"/proc/{pid}/mountinfo").read_text(), "/mnt")
    assert fields == ([f"{field}:{group}"] if field else []), fields


def _criu_or_skip() -> None:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("no working criu (deploy/install-criu.sh)")


def test_restored_shared_bind_propagates_both_ways(clean_agent: AgentProcess, shared_dir: Path) -> None:  # noqa: F811
    """Not just the peer group's number: a mount made on the host after the restore shows in the
    container, and one the container makes shows on the host."""
    _criu_or_skip()
    a = clean_agent
    cid = a.run_detached("--privileged", "-v", f"{shared_dir}:/mnt:rshared", "busybox", "sleep", "300")
    a.cli("checkpoint", cid, check=True)
    a.cli("restore", cid, check=True)
    sub = shared_dir / "from-host"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "dyk-prop-restored", str(sub)], check=True)
    try:
        (sub / "hello").write_text("after the restore")
        assert a.cli("exec", cid, "cat", "/mnt/from-host/hello", check=True).stdout == "after the restore"
    finally:
        subprocess.run(["umount", str(sub)], check=True)
    a.cli("exec", cid, "sh", "-c", "mkdir -p /mnt/from-ctr && mount -t tmpfs none /mnt/from-ctr", check=True)
    assert _is_mount(shared_dir / "from-ctr")


def test_restore_refuses_a_shared_bind_whose_source_is_no_longer_shared(clean_agent: AgentProcess,
                                                                        shared_dir: Path) -> None:  # noqa: F811
    """The source was made private between checkpoint and restore: the restore is refused naming
    the bind and the fix, before criu runs (as every start checks), rather than running the
    container with a mount that no longer propagates."""
    _criu_or_skip()
    a = clean_agent
    cid = a.run_detached("-v", f"{shared_dir}:/mnt:rshared", "busybox", "sleep", "300")
    a.cli("checkpoint", cid, check=True)
    subprocess.run(["mount", "--make-private", str(shared_dir)], check=True)
    r = a.cli("restore", cid)
    assert r.returncode != 0, r.stdout
    assert f"bind mount {shared_dir}:/mnt: path {shared_dir} is mounted on {shared_dir} but it is not a shared " \
           f"mount (make it one: mount --make-shared {shared_dir})" in r.stderr, r.stderr
    assert not a.inspect(cid)["State"]["Running"]
    subprocess.run(["mount", "--make-shared", str(shared_dir)], check=True)
    a.cli("restore", cid, check=True)  # the checkpoint is still there, and now it comes back
    pid = a.inspect(cid)["State"]["Pid"]
    group = next(f for f in _optional_fields(Path("/proc/self/mountinfo").read_text(), str(shared_dir))
                 if f.startswith("shared:"))
    assert _optional_fields(Path(f"/proc/{pid}/mountinfo").read_text(), "/mnt") == [group]


def test_the_hook_names_a_bind_it_cannot_rejoin(tmp_path: Path) -> None:
    """The hook's own refusal (should the source change between the agent's check and criu's
    post-restore): a private source cannot give a peer group; the error names the bind, and
    the hook exits non-zero so that criu aborts the restore."""
    src = tmp_path / "private-src"
    src.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    child = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"mount --bind {src} /mnt && mount --make-shared /mnt && exec sleep 30"])
    try:
        def shared_in_child() -> bool:
            info = Path(f"/proc/{child.pid}/mountinfo").read_text()
            return any(line.split()[4] == "/mnt" and "shared:" in line for line in info.splitlines())

        deadline = time.monotonic() + 10
        while not shared_in_child():
            assert time.monotonic() < deadline, "the child's /mnt never became shared"
            time.sleep(0.02)
        r = subprocess.run([sys.executable, "-m", "agent.checkpoint.sharing", "/mnt", str(src)],
                           env={**os.environ, "CRTOOLS_INIT_PID": str(child.pid)}, capture_output=True, text=True)
        assert r.returncode == 1, r
        assert f"bind {src} at /mnt: cannot rejoin the host's peer group of {src}" in r.stderr, r.stderr
        r = subprocess.run([sys.executable, "-m", "agent.checkpoint.sharing", "/mnt"], capture_output=True, text=True)
        assert r.returncode == 2 and "usage" in r.stderr, r
    finally:
        child.kill()
        child.wait()
        subprocess.run(["umount", str(src)], check=True)
