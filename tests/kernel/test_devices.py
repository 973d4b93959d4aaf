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


@pytest.mark.slow
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


@pytest.mark.slow
def test_device_flag_opens_exactly_that_device(clean_agent: AgentProcess) -> None:
    """--device HOST:CONTAINER:r: the node is there with the host's numbers, it reads but does not
    write; another device (even with the same major) stays closed, after mknod too."""
    _host_opens(*BLOCK)
    script = ("ls -l /dev/xloop | awk '{print $1, $5, $6}';"
              "head -c1 /dev/xloop >/dev/null && echo read || echo noread;"
              "true >/dev/xloop 2>/dev/null && echo wrote || echo nowrite;"
              + _try("b", 7, 1, "r"))
    r = clean_agent.cli("run", "--rm", "--network", "none", "--device", "/dev/loop0:/dev/xloop:r", "busybox",
                        "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["brw------- 7, 0", "read", "nowrite", "refused"], r.stdout + r.stderr
    # the default permissions are rwm, the default path the host's
    _host_opens(*CHAR)
    r = clean_agent.cli("run", "--rm", "--network", "none", "--device", "/dev/net/tun", "busybox",
                        "sh", "-c", "true >/dev/net/tun && echo opened; " + _try(*BLOCK, "r"))
    assert r.stdout == "opened\nrefused\n", r.stdout + r.stderr


@pytest.mark.parametrize(("flag", "message"), [
    ("/dev/nonexistent", 'error gathering device information while adding custom device "/dev/nonexistent": '
                         "no such file or directory"),
    ("/etc/hostname", "/etc/hostname is not a device node"),
    ("/dev/loop0:/xloop", "the path in the container, /xloop, must be a device path under /dev"),
    ("/dev/loop0:/dev/x:rwx", "invalid device mode 'rwx'"),
    ("dev/loop0", "bad format for path: dev/loop0"),
])
def test_bad_device_is_refused_and_leaves_nothing(clean_agent: AgentProcess, flag: str, message: str) -> None:
    r = clean_agent.cli("run", "--rm", "--device", flag, "busybox", "true")
    assert r.returncode in (125, 2), r.returncode  # (2: the CLI's own usage error, as docker's flag errors)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert clean_agent.cli("ps", "-a", "-q").stdout == ""


def _cap_eff(status: str) -> str:
    return next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))


@pytest.mark.slow
def test_privileged_has_every_capability_and_device_no_seccomp_and_writable_sys(clean_agent: AgentProcess) -> None:
    with open("/proc/self/status") as f:
        host_caps = _cap_eff(f.read())  # what the agent holds: a container cannot get more
    script = ("cat /proc/self/status; echo ---;"
              "ls /dev/loop0 >/dev/null && head -c1 /dev/loop0 >/dev/null && echo disk;"
              + _try(*CHAR, "w") + ";"
              "mount -o remount,rw /sys 2>/dev/null; touch /sys/kernel/.x 2>&1 | grep -q 'Read-only' && echo rosys;"
              "grep -q ' /sys sysfs ro' /proc/mounts && echo sys-ro || echo sys-rw;"
              "grep -q ' /proc/sys proc ro' /proc/mounts && echo procsys-ro || echo procsys-rw")
    r = clean_agent.cli("run", "--rm", "--privileged", "--network", "none", "busybox", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    status, _, rest = r.stdout.partition("---\n")
    assert _cap_eff(status) == host_caps
    assert "Seccomp:\t0" in status
    assert rest.split() == ["disk", "opened", "sys-rw", "procsys-rw"], rest + r.stderr
    # and the default container has none of it
    r = clean_agent.cli("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                        "grep -E '^(CapEff|Seccomp):' /proc/self/status; ls /dev/loop0 2>&1 >/dev/null | head -c0;"
                        "grep -q ' /sys sysfs ro' /proc/mounts && echo sys-ro")
    assert r.stdout.split() == ["CapEff:", "00000000a80425fb", "Seccomp:", "2", "sys-ro"], r.stdout


@pytest.mark.slow
def test_privileged_exec_is_privileged_too(clean_agent: AgentProcess) -> None:
    with open("/proc/self/status") as f:
        host_caps = _cap_eff(f.read())
    cid = clean_agent.run_detached("--privileged", "--network", "none", "busybox", "sleep", "60")
    r = clean_agent.cli("exec", cid, "cat", "/proc/self/status")
    assert _cap_eff(r.stdout) == host_caps


def test_privileged_with_userns_remap_is_refused(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--privileged", "--userns", "remap", "busybox", "true")
    assert r.returncode == 125
    assert "privileged mode is incompatible with user namespaces" in r.stderr


def test_update_keeps_the_device_rules_of_device_and_privileged(clean_agent: AgentProcess) -> None:
    """`update -m` rewrites the cgroup's limits, not what the container may open: a --device or
    --privileged container keeps its devices (update() applies every field of the resources)."""
    _host_opens(*CHAR)
    dev = clean_agent.run_detached("--network", "none", "--device", "/dev/net/tun", "busybox", "sleep", "60")
    priv = clean_agent.run_detached("--network", "none", "--privileged", "busybox", "sleep", "60")
    for cid in (dev, priv):
        r = clean_agent.cli("update", "-m", "64m", cid)
        assert r.returncode == 0, r.stderr
    r = clean_agent.cli("exec", dev, "sh", "-c", "true >/dev/net/tun && echo opened; " + _try(*BLOCK, "r"))
    assert r.stdout == "opened\nrefused\n", r.stdout + r.stderr
    r = clean_agent.cli("exec", priv, "sh", "-c", _try(*BLOCK, "r"))
    assert r.stdout == "opened\n", r.stdout + r.stderr
