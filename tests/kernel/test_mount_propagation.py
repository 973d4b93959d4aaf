"""Bind mount propagation (-v SRC:DST:rshared|rslave|rprivate..., --mount bind-propagation=...),
applied for real: read from the container's /proc/PID/mountinfo (its peer group or master is the
host source's), and shown by what a mount on one side makes appear on the other."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _optional_fields(mountinfo: str, point: str) -> list[str]:
    """The optional fields (shared:N, master:N) of the last mount at `point`."""
    found: list[str] | None = None
    for line in mountinfo.splitlines():
        head = line.split(" - ")[0].split()
        if head[4] == point:
            found = head[6:]
    assert found is not None, f"no mount at {point}"
    return found


def _is_mount(point: Path, mountinfo: str = "") -> bool:
    text = mountinfo or Path("/proc/self/mountinfo").read_text()
    return any(line.split()[4] == str(point) for line in text.splitlines())


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory that is a shared mount of its own on the host (the host's mounts are private here)."""
    src = tmp_path / "shared-src"
    src.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        yield src
    finally:
        # what the tests mounted below it first, then the bind itself
        for _ in range(6):
            if not _is_mount(src):
                break
            subprocess.run(["umount", "-R", "-l", str(src)], check=False)
        assert not _is_mount(src)


def _container(a: AgentProcess, *args: str) -> tuple[str, str]:
    cid = a.run_detached(*args, "busybox", "sleep", "300")
    pid = a.inspect(cid)["State"]["Pid"]
    return cid, Path(f"/proc/{pid}/mountinfo").read_text()


def test_propagation_modes_are_applied(clean_agent: AgentProcess, shared_dir: Path) -> None:
    a = clean_agent
    host_group = next(f for f in _optional_fields(Path("/proc/self/mountinfo").read_text(), str(shared_dir))
                      if f.startswith("shared:"))
    group = host_group.split(":")[1]
    shared, info = _container(a, "-v", f"{shared_dir}:/mnt:rshared")
    assert f"shared:{group}" in _optional_fields(info, "/mnt")
    slave, info = _container(a, "--mount", f"type=bind,src={shared_dir},dst=/mnt,bind-propagation=rslave")
    fields = _optional_fields(info, "/mnt")
    assert f"master:{group}" in fields and not any(f.startswith("shared:") for f in fields)
    private, info = _container(a, "-v", f"{shared_dir}:/mnt")   # docker's default: rprivate
    assert _optional_fields(info, "/mnt") == []

    # host -> container: seen through shared and slave, not private
    sub = shared_dir / "from-host"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "dyk-prop", str(sub)], check=True)
    (sub / "hello").write_text("hi")
    for cid, seen in ((shared, True), (slave, True), (private, False)):
        r = a.cli("exec", cid, "cat", "/mnt/from-host/hello")
        assert (r.stdout == "hi") is seen, (cid, r.stdout, r.stderr)
    subprocess.run(["umount", str(sub)], check=True)

    # container -> host: from an rshared bind, not from an rslave one
    up, _ = _container(a, "--privileged", "-v", f"{shared_dir}:/mnt:rshared")
    down, _ = _container(a, "--privileged", "-v", f"{shared_dir}:/mnt:rslave")
    for cid, name in ((up, "from-shared"), (down, "from-slave")):
        a.cli("exec", cid, "sh", "-c", f"mkdir -p /mnt/{name} && mount -t tmpfs none /mnt/{name}", check=True)
    assert _is_mount(shared_dir / "from-shared")
    assert not _is_mount(shared_dir / "from-slave")
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(["umount", "-l", str(shared_dir / "from-shared")], check=True)


def test_shared_needs_a_shared_source_and_bad_modes_are_refused(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    plain = tmp_path / "plain"
    plain.mkdir()
    r = a.cli("run", "--rm", "-v", f"{plain}:/mnt:rshared", "busybox", "true")
    assert r.returncode != 0 and "is not a shared mount (make it one: mount --make-shared" in r.stderr, r.stderr
    r = a.cli("run", "--rm", "--mount", f"type=bind,src={plain},dst=/mnt,bind-propagation=slave", "busybox", "true")
    assert r.returncode != 0 and "not a shared or slave mount" in r.stderr, r.stderr
    r = a.cli("run", "--rm", "-v", f"{plain}:/mnt:sideways", "busybox", "true")
    assert r.returncode != 0 and "invalid mode 'sideways'" in r.stderr, r.stderr
    r = a.cli("run", "--rm", "-v", "vol:/mnt:rshared", "busybox", "true")
    assert r.returncode != 0 and "applies to bind mounts only" in r.stderr, r.stderr
    # private works on a plain directory
    assert a.cli("run", "--rm", "-v", f"{plain}:/mnt:private", "busybox", "true").returncode == 0
