"""Volumes, bind mounts, tmpfs and --read-only, end to end through the CLI and a real agent."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def va(clean_agent: AgentProcess) -> Iterator[AgentProcess]:
    """The module's agent; every volume removed after the test."""
    yield clean_agent
    clean_agent.remove_all_containers()
    names = clean_agent.cli("volume", "ls", "-q").stdout.split()
    if names:
        clean_agent.cli("volume", "rm", "-f", *names, check=True)


def _volumes(a: AgentProcess) -> list[str]:
    return a.cli("volume", "ls", "-q", check=True).stdout.split()


def test_named_volume_outlives_its_container_and_is_refused_removal_in_use(va: AgentProcess) -> None:
    assert va.cli("volume", "create", "--label", "app=db", "pgdata", check=True).stdout == "pgdata\n"
    assert "pgdata" in va.cli("volume", "ls", check=True).stdout
    info = json.loads(va.cli("volume", "inspect", "pgdata", check=True).stdout)[0]
    assert (info["Name"], info["Driver"], info["Labels"], info["Scope"]) == ("pgdata", "local", {"app": "db"}, "local")
    va.cli("run", "--name", "w", "-v", "pgdata:/data", "busybox", "sh", "-c", "echo kept > /data/f", check=True)
    r = va.cli("volume", "rm", "pgdata")
    assert r.returncode == 1 and "volume is in use - [w (exited)]" in r.stderr
    va.cli("rm", "w", check=True)
    r = va.cli("run", "--rm", "-v", "pgdata:/data", "busybox", "cat", "/data/f", check=True)
    assert r.stdout == "kept\n"
    assert Path(info["Mountpoint"], "f").read_text() == "kept\n"
    va.cli("volume", "rm", "pgdata", check=True)
    assert "pgdata" not in _volumes(va)
    assert va.cli("volume", "inspect", "pgdata").returncode == 1


def test_new_volume_is_filled_from_the_image_and_an_existing_one_is_not(va: AgentProcess) -> None:
    r = va.cli("run", "--rm", "-v", "binv:/bin", "busybox", "ls", "-l", "/bin/busybox", check=True)
    assert "busybox" in r.stdout
    mountpoint = json.loads(va.cli("volume", "inspect", "binv", check=True).stdout)[0]["Mountpoint"]
    assert os.path.isfile(os.path.join(mountpoint, "busybox"))
    # nocopy: an empty volume stays empty
    r = va.cli("run", "--rm", "-v", "emptyv:/bin:nocopy", "busybox", "ls", "/bin")
    assert r.returncode != 0  # nothing to run: /bin is the empty volume
    assert os.listdir(json.loads(va.cli("volume", "inspect", "emptyv", check=True).stdout)[0]["Mountpoint"]) == []
    # the image's files are not copied again over what a volume already holds
    va.cli("volume", "create", "etcv", check=True)
    mp = json.loads(va.cli("volume", "inspect", "etcv", check=True).stdout)[0]["Mountpoint"]
    Path(mp, "only").write_text("mine\n")
    r = va.cli("run", "--rm", "--entrypoint", "/bin/ls", "-v", "etcv:/etc", "busybox", "/etc", check=True)
    assert r.stdout.split() == ["only"]


def test_bind_mounts_ro_rw_and_missing_sources(va: AgentProcess, tmp_path: Path) -> None:
    src = tmp_path / "conf"
    src.mkdir()
    (src / "app.conf").write_text("x=1\n")
    r = va.cli("run", "--rm", "-v", f"{src}:/etc/app:ro", "busybox", "sh", "-c", "cat /etc/app/app.conf; touch /etc/app/n")
    assert r.stdout == "x=1\n"
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    va.cli("run", "--rm", "-v", f"{src}:/etc/app", "busybox", "touch", "/etc/app/n", check=True)
    assert (src / "n").exists()
    # -v makes a missing host path, as docker does; --mount refuses it
    missing = tmp_path / f"made-{secrets.token_hex(3)}"
    va.cli("run", "--rm", "-v", f"{missing}:/m", "busybox", "touch", "/m/f", check=True)
    assert (missing / "f").exists()
    gone = tmp_path / "never"
    r = va.cli("run", "--rm", "--mount", f"type=bind,src={gone},dst=/m", "busybox", "true")
    assert r.returncode != 0 and f"bind source path does not exist: {gone}" in r.stderr
    assert not gone.exists()
    r = va.cli("run", "--rm", "--mount", f"type=bind,src={src},dst=/m,readonly", "busybox", "touch", "/m/x")
    assert "Read-only file system" in r.stderr
    # a single file
    r = va.cli("run", "--rm", "-v", f"{src / 'app.conf'}:/app.conf:ro", "busybox", "cat", "/app.conf", check=True)
    assert r.stdout == "x=1\n"


def test_read_only_rootfs_tmpfs_size_and_writable_volumes(va: AgentProcess) -> None:
    script = ("touch /x 2>&1; touch /run/x && echo run-ok; touch /data/x && echo data-ok; "
              "dd if=/dev/zero of=/run/big bs=1k count=2048 2>&1 | grep -o 'No space left on device'; "
              "grep ' /run ' /proc/mounts")
    r = va.cli("run", "--rm", "--read-only", "--tmpfs", "/run:size=1m,mode=1770", "-v", "rov:/data",
               "busybox", "sh", "-c", script, check=True)
    lines = r.stdout.splitlines()
    assert "Read-only file system" in lines[0]
    assert lines[1:4] == ["run-ok", "data-ok", "No space left on device"]
    assert "size=1024k" in lines[4] and "mode=1770" in lines[4] and "noexec" in lines[4]
    r = va.cli("run", "--rm", "--mount", "type=tmpfs,dst=/t,tmpfs-size=2m", "busybox", "df", "-k", "/t", check=True)
    assert r.stdout.splitlines()[1].split()[1] == "2048"


def test_anonymous_volumes_go_with_rm_v_and_with_rm(va: AgentProcess) -> None:
    before = set(_volumes(va))
    cid = va.run_detached("-v", "/scratch", "busybox", "sleep", "60")
    mounts = va.inspect(cid)["Mounts"]
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/scratch")]
    name = mounts[0]["Name"]
    assert set(_volumes(va)) - before == {name}
    va.cli("rm", "-f", cid, check=True)
    assert name in _volumes(va)  # rm without -v keeps it, as docker does
    va.cli("volume", "rm", name, check=True)
    cid = va.run_detached("-v", "/scratch", "busybox", "sleep", "60")
    va.cli("rm", "-f", "-v", cid, check=True)
    assert set(_volumes(va)) == before
    va.cli("run", "--rm", "-v", "/scratch", "-v", "keepme:/k", "busybox", "true", check=True)
    assert set(_volumes(va)) == before | {"keepme"}  # --rm removes the anonymous one only


def test_prune_removes_unused_anonymous_volumes_only_unless_all(va: AgentProcess) -> None:
    va.cli("volume", "create", "named1", check=True)
    va.cli("volume", "create", "--label", "tier=cache", "named2", check=True)
    cid = va.run_detached("-v", "/a", "busybox", "sleep", "60")
    va.cli("run", "-v", "/b", "--name", "gone", "busybox", "true", check=True)
    va.cli("rm", "gone", check=True)
    r = va.cli("volume", "prune", "-f", check=True)
    assert "Deleted Volumes:" in r.stdout and "Total reclaimed space" in r.stdout
    left = set(_volumes(va))
    assert {"named1", "named2"} <= left and len(left) == 3  # named ones, and the one in use
    assert va.cli("volume", "ls", "-q", "--filter", "dangling=false", check=True).stdout.split() == \
        [va.inspect(cid)["Mounts"][0]["Name"]]
    va.cli("volume", "prune", "-f", "-a", "--filter", "label=tier=cache", check=True)
    assert "named2" not in _volumes(va) and "named1" in _volumes(va)


def test_local_driver_options_mount_the_device_while_in_use(va: AgentProcess) -> None:
    va.cli("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=1m,mode=0750", "tv", check=True)
    mp = json.loads(va.cli("volume", "inspect", "tv", check=True).stdout)[0]["Mountpoint"]
    cid = va.run_detached("-v", "tv:/data", "busybox", "sleep", "60")
    assert os.path.ismount(mp)
    r = va.cli("exec", cid, "df", "-k", "/data", check=True)
    assert r.stdout.splitlines()[1].split()[1] == "1024"
    va.cli("rm", "-f", cid, check=True)
    va.wait_for(lambda: not os.path.ismount(mp), what="the volume's tmpfs unmounted after its last user")
    for bad, error in [(("-o", "colour=red"), "invalid option 'colour'"), (("-o", "type=tmpfs"), "need 'device'"),
                       (("-d", "nfs"), "volume driver 'nfs' not found")]:
        r = va.cli("volume", "create", *bad, "badv")
        assert r.returncode == 1 and error in r.stderr, r.stderr
    assert "badv" not in _volumes(va)


def test_bad_mount_specs_refused_before_anything_is_made(va: AgentProcess, tmp_path: Path) -> None:
    before = set(_volumes(va))
    for args, error in [
        (("-v", "data"), "is not an absolute path"),
        (("-v", "./rel:/x"), "relative"),
        (("-v", "x:/a"), "invalid volume name 'x'"),
        (("--mount", "type=volume,src=okname,dst=/a,volume-driver=flocker"), "volume driver 'flocker' not found"),
        (("--tmpfs", "/t:size=big"), "invalid size"),
        (("-v", "okname:/a", "--tmpfs", "/a"), "duplicate mount point: /a"),
        (("-v", f"{tmp_path}:/a:rshared"), "but it is not a shared mount"),
    ]:
        r = va.cli("run", "--rm", *args, "busybox", "true")
        assert r.returncode != 0 and error in r.stderr, (args, r.stderr)
    assert set(_volumes(va)) == before
    assert va.cli("ps", "-aq").stdout == ""
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.criu
def test_checkpoint_and_restore_with_volumes_binds_and_tmpfs(va: AgentProcess, tmp_path: Path) -> None:
    """CRIU is told the volume and bind mounts are the host's (external), and the restore maps
    them back; the tmpfs content is CRIU's to carry. A file open in the volume stays open."""
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")
    host = tmp_path / "h"
    host.mkdir()
    script = ("echo in-tmpfs > /t/f; exec 3>>/data/log; i=0; "
              "while true; do echo $i >&3; cat /h/conf > /dev/null; i=$((i+1)); sleep 0.05; done")
    (host / "conf").write_text("c\n")
    cid = va.run_detached("-v", "ckv:/data", "-v", f"{host}:/h:ro", "--tmpfs", "/t", "busybox", "sh", "-c", script)
    mp = json.loads(va.cli("volume", "inspect", "ckv", check=True).stdout)[0]["Mountpoint"]
    va.wait_for(lambda: len(Path(mp, "log").read_text().split()) > 3, what="the container writing to its volume")
    va.cli("checkpoint", cid, check=True)
    n = len(Path(mp, "log").read_text().split())
    va.cli("restore", cid, check=True)
    va.wait_for(lambda: len(Path(mp, "log").read_text().split()) > n + 3, what="the restored container writing on")
    seq = [int(x) for x in Path(mp, "log").read_text().split()]
    assert seq == list(range(len(seq)))  # the same process, its counter and its open file kept
    assert va.cli("exec", cid, "cat", "/t/f", check=True).stdout == "in-tmpfs\n"
    r = va.cli("exec", cid, "touch", "/h/x")
    assert "Read-only file system" in r.stderr


def test_an_images_volume_becomes_an_anonymous_volume_filled_from_it(va: AgentProcess, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN mkdir -p /data && echo seed > /data/f\nVOLUME /data\n"
                                    'HEALTHCHECK --interval=5s --retries=2 CMD ["true"]\n')
    va.cli("build", "-t", "withvol", str(ctx), check=True, timeout=120)
    doc = json.loads(va.cli("image", "inspect", "withvol", check=True).stdout)[0]
    assert doc["Config"]["Volumes"] == {"/data": {}}
    assert doc["Config"]["Healthcheck"] == {"Interval": 5_000_000_000, "Retries": 2, "Test": ["CMD", "true"]}
    before = set(_volumes(va))
    cid = va.run_detached("withvol", "sleep", "60")
    (m,) = va.inspect(cid)["Mounts"]
    assert (m["Type"], m["Destination"]) == ("volume", "/data")
    assert va.cli("exec", cid, "cat", "/data/f", check=True).stdout == "seed\n"
    va.cli("rm", "-f", "-v", cid, check=True)
    assert set(_volumes(va)) == before
    # a mount of the run at that path replaces it
    cid = va.run_detached("-v", "mine:/data", "withvol", "sleep", "60")
    assert [x["Name"] for x in va.inspect(cid)["Mounts"]] == ["mine"]
    va.cli("rm", "-f", cid, check=True)
    va.cli("rmi", "withvol", check=True)
