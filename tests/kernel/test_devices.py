"""Host devices and containers: docker's default device rules, --device, --privileged.

As root on the real kernel, through the CLI and a real agent (cgroup v1 here). A container's root
holds CAP_MKNOD, as with docker, so it can make a node for any device: the devices cgroup is what
stops it opening one.
"""

from __future__ import annotations

import os

import pytest

from tests.agent_harness import AgentProcess

pytestmark = pytest.mark.root

# A host block device and a character device outside docker's default list (tun/tap).
BLOCK = ("b", 7, 0)    # /dev/loop0
CHAR = ("c", 10, 200)  # /dev/net/tun


def _host_opens(kind: str, major: int, minor: int) -> None:
    """The control: the host itself opens a node of that device (so a refusal in a container is the
    container's rules, not a missing driver)."""
    path = f"/dev/.dockyard-test-{os.getpid()}-{kind}{major}-{minor}"
    os.mknod(path, 0o600 | (0o060000 if kind == "b" else 0o020000), os.makedev(major, minor))
    try:
        os.close(os.open(path, os.O_RDWR))
    finally:
        os.unlink(path)


def _try(kind: str, major: int, minor: int, how: str) -> str:
    """A shell line that mknods the device and opens it (how: 'r' reads a byte, 'w' opens for writing)."""
    op = "head -c1 /tmp/node >/dev/null" if how == "r" else "true >/tmp/node"
    return f"mknod /tmp/node {kind} {major} {minor} && {op} && echo opened || echo refused"


@pytest.mark.parametrize("device", [BLOCK, CHAR], ids=["block", "char"])
@pytest.mark.parametrize("how", ["r", "w"])
def test_default_container_cannot_open_host_devices_even_after_mknod(
        clean_agent: AgentProcess, device: tuple[str, int, int], how: str) -> None:
    _host_opens(*device)
    r = clean_agent.cli("run", "--rm", "--network", "none", "busybox", "sh", "-c", _try(*device, how))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "refused\n", r.stdout + r.stderr
    assert "Operation not permitted" in r.stderr


def test_default_devices_still_work(clean_agent: AgentProcess) -> None:
    """null, zero, full, random, urandom, tty's node, ptmx and pts: what docker allows."""
    script = ("head -c4 /dev/zero | wc -c; head -c4 /dev/urandom | wc -c; head -c4 /dev/random | wc -c;"
              "echo x >/dev/null && echo null; echo x >/dev/full 2>/dev/null || echo full;"
              "mknod /tmp/z c 1 5 && head -c2 /tmp/z | wc -c")
    r = clean_agent.cli("run", "--rm", "--network", "none", "busybox", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["4", "4", "4", "null", "full", "2"]
    r = clean_agent.cli("run", "--rm", "-t", "--network", "none", "busybox", "sh", "-c", "tty")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().startswith("/dev/pts/")


def test_exec_is_held_to_the_same_device_rules(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("--network", "none", "busybox", "sleep", "60")
    r = clean_agent.cli("exec", cid, "sh", "-c", _try(*BLOCK, "r"))
    assert r.stdout == "refused\n", r.stdout + r.stderr


def test_container_cgroups_are_made_ahead_and_named_after_it(clean_agent: AgentProcess) -> None:
    """The pre-cloned init waits in a spare cgroup of every controller, devices included; its
    container takes it over by name (shim.SpareCgroup), and the next spare is there again."""
    cid = clean_agent.run_detached("--network", "none", "busybox", "sleep", "60")
    pid = clean_agent.inspect(cid)["State"]["Pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        mine = {ctrl: path for _, ctrl, path in (line.strip().split(":", 2) for line in f)}
    for ctrl in ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer", "devices"):
        assert mine[ctrl].endswith(f"/{clean_agent.cgroup_parent}/{cid}"), (ctrl, mine[ctrl])
    devices = f"/sys/fs/cgroup/devices/{clean_agent.cgroup_parent}"
    clean_agent.wait_for(lambda: any(n.startswith(".spare-") for n in os.listdir(devices)), what="a spare")
