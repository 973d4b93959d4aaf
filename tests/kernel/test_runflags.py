"""The rest of `docker run`: capabilities, seccomp profiles, ulimits, DNS, /etc/hosts, sysctls,
/dev/shm, extra groups, --cidfile and --label-file, read from inside real containers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]

DOCKER_DEFAULT_CAPS = 0xA80425FB  # docker's default set, as `docker run` shows it in CapEff


def _caps(a: AgentProcess, *flags: str) -> tuple[int, int]:
    r = a.cli("run", "--rm", *flags, "busybox", "grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status", check=True)
    got = dict(line.split(":\t") for line in r.stdout.splitlines())
    return int(got["CapEff"], 16), int(got["CapBnd"], 16)


def _host_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapPrm:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapPrm")


def test_capabilities_default_drop_all_add_and_all(clean_agent: AgentProcess) -> None:
    a = clean_agent
    assert _caps(a) == (DOCKER_DEFAULT_CAPS, DOCKER_DEFAULT_CAPS)
    assert _caps(a, "--cap-drop", "ALL") == (0, 0)
    net_admin = 1 << 12
    assert _caps(a, "--cap-add", "NET_ADMIN") == (DOCKER_DEFAULT_CAPS | net_admin,) * 2
    assert _caps(a, "--cap-drop", "all", "--cap-add", "cap_chown") == (1, 1)
    assert _caps(a, "--cap-add", "ALL") == (_host_caps(),) * 2  # every capability this host's root has
    # what the sets mean: without CAP_CHOWN, chown fails; with NET_ADMIN, lo can go down
    r = a.cli("run", "--rm", "--cap-drop", "CHOWN", "busybox", "sh", "-c", "touch /f; chown 5 /f")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    a.cli("run", "--rm", "--cap-add", "NET_ADMIN", "busybox", "ip", "link", "set", "lo", "down", check=True)
    # exec gets the container's sets
    cid = a.run_detached("--cap-drop", "ALL", "busybox", "sleep", "60")
    assert "CapEff:\t0000000000000000" in a.cli("exec", cid, "cat", "/proc/self/status", check=True).stdout
    r = a.cli("run", "--rm", "--cap-add", "WIZARDRY", "busybox", "true")
    assert r.returncode != 0 and "--cap-add WIZARDRY: unknown capability" in r.stderr


def test_seccomp_profile_in_dockers_format(clean_agent: AgentProcess, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    r = clean_agent.cli("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "sh", "-c",
                        "touch /ok && echo touched; mkdir /d")
    assert r.stdout == "touched\n"
    assert r.returncode == 1 and "Operation not permitted" in r.stderr
    # the default filter still refuses what docker's refuses, and unconfined lifts it
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c", "mkdir /d && echo made")
    assert r.stdout == "made\n"
    bad = tmp_path / "bad.json"
    for text, error in [("{", "not JSON"), ('{"defaultAction": "SCMP_ACT_MAYBE"}', "defaultAction 'SCMP_ACT_MAYBE'"),
                        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NOPE"}]}',
                         "syscalls[0]: action 'NOPE'"),
                        ('{"defaultAction": "SCMP_ACT_ALLOW", "colour": 1}', "unknown field 'colour'")]:
        bad.write_text(text)
        r = clean_agent.cli("run", "--rm", "--security-opt", f"seccomp={bad}", "busybox", "true")
        assert r.returncode != 0 and error in r.stderr, (text, r.stderr)
    r = clean_agent.cli("run", "--rm", "--security-opt", f"seccomp={tmp_path / 'missing.json'}", "busybox", "true")
    assert r.returncode != 0 and "opening seccomp profile" in r.stderr


def test_ulimits_in_proc_self_limits(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--ulimit", "nofile=512:1024", "--ulimit", "core=0", "busybox",
                        "cat", "/proc/self/limits", check=True)
    lines = {ln[:26].strip(): ln[26:].split() for ln in r.stdout.splitlines()[1:]}
    assert lines["Max open files"][:2] == ["512", "1024"]
    assert lines["Max core file size"][:2] == ["0", "0"]
    for bad, error in [("nofile=2:1", "the soft limit is above the hard limit"), ("wishes=3", "unknown limit"),
                       ("nofile", "expected NAME=SOFT[:HARD]"), ("nofile=x", "'x' is not a number")]:
        r = clean_agent.cli("run", "--rm", "--ulimit", bad, "busybox", "true")
        assert r.returncode != 0 and error in r.stderr, (bad, r.stderr)


def test_dns_and_extra_hosts(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--dns", "10.0.0.53", "--dns", "10.0.0.54", "--dns-search", "example.com",
                        "--dns-option", "ndots:2", "--add-host", "db:10.1.2.3", "--add-host", "gw:host-gateway",
                        "busybox", "cat", "/etc/resolv.conf", "/etc/hosts", check=True)
    out = r.stdout
    assert "nameserver 10.0.0.53\nnameserver 10.0.0.54\n" in out
    assert "search example.com\n" in out and "options ndots:2\n" in out
    gateway = clean_agent.subnet.rsplit(".", 1)[0] + ".1"
    assert "10.1.2.3\tdb\n" in out and f"{gateway}\tgw\n" in out
    for flags, error in [(("--dns", "resolver"), "not an IP address"), (("--add-host", "db"), "expected NAME:IP"),
                         (("--add-host", "db:nowhere"), "is not an IP address")]:
        r = clean_agent.cli("run", "--rm", *flags, "busybox", "true")
        assert r.returncode != 0 and error in r.stderr, (flags, r.stderr)


def test_sysctls_namespaced_only_shm_size_and_groups(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--sysctl", "net.core.somaxconn=1234", "--sysctl", "kernel.shmmni=2048",
                        "--shm-size", "16m", "--group-add", "4321", "--group-add", "nobody", "busybox", "sh", "-c",
                        "cat /proc/sys/net/core/somaxconn /proc/sys/kernel/shmmni; df -k /dev/shm | tail -1; id -G",
                        check=True)
    lines = r.stdout.splitlines()
    assert lines[:2] == ["1234", "2048"]
    assert lines[2].split()[1] == str(16 * 1024)
    assert set(lines[3].split()) == {"0", "4321", "65534"}
    assert Path("/proc/sys/net/core/somaxconn").read_text().strip() != "1234"  # the host's is its own
    for flags, error in [(("--sysctl", "vm.swappiness=1"), "not a namespaced sysctl"),
                         (("--sysctl", "net.core.somaxconn=1", "--network", "host"), "not allowed with --network host"),
                         (("--group-add", "ghosts"), "unable to find group ghosts")]:
        r = clean_agent.cli("run", "--rm", *flags, "busybox", "true")
        assert r.returncode != 0 and error in r.stderr, (flags, r.stderr)


def test_cidfile_and_label_file(clean_agent: AgentProcess, tmp_path: Path) -> None:
    cidfile = tmp_path / "cid"
    labels = tmp_path / "labels"
    labels.write_text("# team labels\ntier=web\n\nowner=ops\n")
    r = clean_agent.cli("run", "--cidfile", str(cidfile), "--label-file", str(labels), "-l", "owner=dev",
                        "busybox", "echo", "hi", check=True)
    assert r.stdout == "hi\n"
    cid = cidfile.read_text()
    assert clean_agent.inspect(cid)["Config"]["Labels"] == {"tier": "web", "owner": "dev"}
    r = clean_agent.cli("run", "-d", "--cidfile", str(cidfile), "busybox", "true")
    assert r.returncode == 125 and "Container ID file found" in r.stderr
