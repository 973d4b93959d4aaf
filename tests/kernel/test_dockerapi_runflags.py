"""docker run's cgroup and namespace flags, through the dockyard CLI and through Docker's Engine
API (the real docker CLI) alike: --cpuset-cpus/--cpuset-mems, --memory-swappiness (cgroup v1),
--cgroupns private, --uts host and --device-cgroup-rule, each checked inside the container or in
the kernel's cgroup files, not only in inspect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker as dockerpy
import pytest

from tests.agent_harness import AgentProcess
from tests.kernel.test_dockerapi import da, dconf, docker  # noqa: F401  (fixtures)

pytestmark = pytest.mark.root

# what the container reports of itself: its CPUs, its cgroup paths, its hostname and namespaces
PROBE = ("grep Cpus_allowed_list /proc/self/status; cat /proc/self/cgroup; hostname; "
         "readlink /proc/self/ns/uts; readlink /proc/self/ns/cgroup")


def _probe(out: str) -> dict[str, object]:
    lines = out.splitlines()
    cpus = lines[0].split()[1]
    cgroups = [ln for ln in lines[1:] if ln.count(":") >= 2 and ln[0].isdigit()]
    rest = lines[1 + len(cgroups):]
    return {"cpus": cpus, "cgroups": cgroups, "hostname": rest[0], "uts": rest[1], "cgroupns": rest[2]}


def _host() -> dict[str, str]:
    return {"hostname": os.uname().nodename, "uts": os.readlink("/proc/self/ns/uts"),
            "cgroupns": os.readlink("/proc/self/ns/cgroup")}


def _cgroup_file(a: AgentProcess, controller: str, cid: str, name: str) -> str:
    return (Path("/sys/fs/cgroup") / controller / a.cgroup_parent / cid / name).read_text().strip()


@pytest.mark.slow
def test_cpuset_swappiness_cgroupns_uts_with_both_clis(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    host = _host()
    flags = ["--cpuset-cpus", "0", "--cpuset-mems", "0", "--cgroupns", "private", "--uts", "host"]
    for via in ("dockyard", "docker"):
        if via == "dockyard":
            out = da.cli("run", "--rm", *flags, "busybox", "sh", "-c", PROBE, check=True).stdout
        else:
            out = docker(da, dconf, "run", "--rm", *flags, "busybox", "sh", "-c", PROBE).stdout
        got = _probe(out)
        assert got["cpus"] == "0", (via, out)
        # its own cgroup namespace, rooted at its cgroup: every hierarchy shows "/"
        assert got["cgroups"] and all(ln.endswith(":/") for ln in got["cgroups"]), (via, out)
        assert "0::/" in got["cgroups"], (via, out)
        assert got["cgroupns"] != host["cgroupns"], via
        # the host's UTS namespace and hostname
        assert (got["hostname"], got["uts"]) == (host["hostname"], host["uts"]), via
    # by default: the host's cgroup namespace (docker's default on cgroup v1), a UTS namespace of its own
    got = _probe(da.cli("run", "--rm", "busybox", "sh", "-c", PROBE, check=True).stdout)
    assert got["cgroupns"] == host["cgroupns"] and got["uts"] != host["uts"]
    assert any(da.cgroup_parent in ln for ln in got["cgroups"])
    assert got["cpus"] == Path("/sys/fs/cgroup/cpuset/cpuset.effective_cpus").read_text().strip()

    # the kernel's files: cpuset and memory.swappiness of a running container, and inspect's echo
    cid = da.run_detached("--cpuset-cpus", "1", "--memory-swappiness", "40", "busybox", "sleep", "60")
    assert _cgroup_file(da, "cpuset", cid, "cpuset.cpus") == "1"
    assert _cgroup_file(da, "memory", cid, "memory.swappiness") == "40"
    hc = json.loads(docker(da, dconf, "inspect", cid).stdout)[0]["HostConfig"]
    assert (hc["CpusetCpus"], hc["MemorySwappiness"], hc["CgroupnsMode"], hc["UTSMode"]) == ("1", 40, "host", "")
    assert da.inspect(cid)["HostConfig"]["CpusetCpus"] == "1"
    # exec enters the cgroup namespace too
    cid2 = docker(da, dconf, "run", "-d", "--cgroupns", "private", "busybox", "sleep", "60").stdout.strip()
    cg = docker(da, dconf, "exec", cid2, "cat", "/proc/self/cgroup").stdout.split()
    assert cg and all(ln.endswith(":/") for ln in cg), cg
    hc = json.loads(docker(da, dconf, "inspect", cid2).stdout)[0]["HostConfig"]
    assert hc["CgroupnsMode"] == "private"


@pytest.mark.slow
def test_device_cgroup_rule_lets_only_that_device_open(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    # a node of a device number no driver has: the devices cgroup refuses the open (EPERM) unless a
    # rule allows it, and then the kernel finds no device (ENXIO): the rule alone made the difference
    script = "mknod /tmp/d c 42 42 && cat /tmp/d 2>&1; true"
    denied = da.cli("run", "--rm", "busybox", "sh", "-c", script, check=True).stdout
    assert "Operation not permitted" in denied
    for out in (da.cli("run", "--rm", "--device-cgroup-rule", "c 42:42 rwm", "busybox", "sh", "-c", script,
                       check=True).stdout,
                docker(da, dconf, "run", "--rm", "--device-cgroup-rule", "c 42:* rw", "busybox", "sh", "-c",
                       script).stdout):
        assert "No such device or address" in out, out
    cid = docker(da, dconf, "create", "--device-cgroup-rule", "c 42:42 rwm", "busybox", "true").stdout.strip()
    assert json.loads(docker(da, dconf, "inspect", cid).stdout)[0]["HostConfig"]["DeviceCgroupRules"] == \
        ["c 42:42 rwm"]


@pytest.mark.slow
def test_bad_values_are_refused_by_name(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    for args, words in ((["--cgroupns", "shared"], "--cgroupns shared: must be host or private"),
                        (["--uts", "container:x"], "--uts container:x: must be host"),
                        (["--uts", "host", "--hostname", "h1"], "conflicting options: hostname and the UTS mode"),
                        (["--cpuset-cpus", "0-99"], "cpuset_cpus: requested 0-99 are not available"),
                        (["--cpuset-cpus", "x"], "cpuset_cpus: invalid value 'x'"),
                        (["--memory-swappiness", "101"], "memory swappiness"),
                        (["--device-cgroup-rule", "z 1:2 rwm"], "device type 'z'")):
        r = da.cli("create", *args, "busybox", "true")
        assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
    # through the API: the same checks, as a 400 the docker CLI prints
    r = docker(da, dconf, "create", "--cpuset-cpus", "0-99", "busybox", "true", check=False)
    assert r.returncode != 0 and "requested 0-99 are not available" in r.stderr, r.stderr
    # (the docker CLI checks a rule's form itself: docker-py sends what it is given)
    c = dockerpy.APIClient(base_url=f"unix://{da.docker_socket}", version="1.45")
    try:
        for hc, words in (({"device_cgroup_rules": ["c 1 rwm"]}, "is not a device rule"),
                          ({"cgroupns": "shared"}, "--cgroupns shared: must be host or private"),
                          ({"mem_swappiness": 101}, "memory_swappiness: 101 is outside 0..100")):
            with pytest.raises(dockerpy.errors.APIError) as e:
                c.create_container("busybox", "true", host_config=c.create_host_config(**hc))
            assert e.value.status_code == 400 and words in str(e.value.explanation), (hc, e.value)
    finally:
        c.close()


@pytest.mark.slow
def test_legacy_link_variables_and_rm_link(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    docker(da, dconf, "run", "-d", "--name", "dylsrv", "-e", "FOO=1", "--expose", "5432", "busybox", "sleep", "60")
    ip = json.loads(docker(da, dconf, "inspect", "dylsrv").stdout)[0]["NetworkSettings"]["IPAddress"]
    assert "DB_ENV_FOO=1" in docker(da, dconf, "run", "--rm", "--link", "dylsrv:db", "busybox", "env").stdout
    docker(da, dconf, "run", "-d", "--name", "dylcli", "--link", "dylsrv:db", "busybox", "sleep", "60")
    env = docker(da, dconf, "exec", "dylcli", "env").stdout.splitlines()
    # (exec gets the container's environment, the link variables in it, as docker's)
    assert "DB_NAME=/dylcli/db" in env and "DB_ENV_FOO=1" in env, env
    assert f"DB_PORT=tcp://{ip}:5432" in env and f"DB_PORT_5432_TCP_ADDR={ip}" in env, env
    assert not [e for e in env if e.startswith("DB_ENV_PATH=")]
    assert f"{ip}\tdb dylsrv" in docker(da, dconf, "exec", "dylcli", "cat", "/etc/hosts").stdout
    # docker rm --link PARENT/ALIAS takes it out of the config; the next start has neither
    docker(da, dconf, "rm", "--link", "dylcli/db")
    assert json.loads(docker(da, dconf, "inspect", "dylcli").stdout)[0]["HostConfig"]["Links"] is None
    docker(da, dconf, "restart", "-t", "0", "dylcli")
    assert "DB_NAME" not in docker(da, dconf, "exec", "dylcli", "env").stdout
    r = docker(da, dconf, "rm", "--link", "dylcli/db", check=False)
    assert r.returncode != 0 and "No such container: /dylcli/db" in r.stderr, r.stderr


@pytest.mark.slow
def test_start_returns_with_the_command_running(da: AgentProcess) -> None:  # noqa: F811
    # docker-py's ContainerTest.test_top: top at once after start must show the command, not the
    # init still on its way to execve (start used to answer before the init was let go)
    c = dockerpy.APIClient(base_url=f"unix://{da.docker_socket}", version="1.45")
    try:
        for i in range(8):
            ctr = c.create_container("busybox", ["sleep", "60"], name=f"dytop{i}",
                                     host_config=c.create_host_config(network_mode="none"))
            c.start(ctr)
            procs = c.top(ctr)["Processes"]
            assert [p[-1] for p in procs] == ["sleep 60"], procs
            c.remove_container(ctr, force=True)
    finally:
        c.close()


@pytest.mark.slow
def test_run_rm_of_a_command_that_ends_at_once(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    # `docker run --rm` attaches before it starts; with the start answered only after the execve,
    # `true` is run and removed before the attach's session begins: its output and exit must still
    # reach the client (it used to hang on an attach that looked the container up again)
    for i in range(15):
        r = docker(da, dconf, "run", "--rm", "--network", "none", "busybox", "sh", "-c", f"echo {i}", timeout=20)
        assert r.stdout == f"{i}\n", r
    r = docker(da, dconf, "run", "--rm", "--network", "none", "busybox", "sh", "-c", "exit 7", check=False)
    assert r.returncode == 7
