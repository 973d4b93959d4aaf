"""The rest of `docker run`'s HostConfig and the /volumes endpoints through Docker's Engine API,
driven by the real docker CLI: each option is checked inside the container, not only in inspect."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess
from tests.kernel.test_dockerapi import da, dconf, docker  # noqa: F401  (fixtures)

pytestmark = pytest.mark.root


@pytest.mark.slow
def test_volumes_bind_tmpfs_and_read_only(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    # a named volume keeps what one container wrote for the next, and is refused removal while used
    docker(da, dconf, "volume", "create", "--label", "k=v", "dv1")
    docker(da, dconf, "run", "--rm", "-v", "dv1:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert docker(da, dconf, "run", "--rm", "-v", "dv1:/data:ro", "busybox", "cat", "/data/f").stdout == "kept\n"
    vol = json.loads(docker(da, dconf, "volume", "inspect", "dv1").stdout)[0]
    assert (vol["Name"], vol["Driver"], vol["Labels"], vol["Scope"]) == ("dv1", "local", {"k": "v"}, "local")
    assert docker(da, dconf, "volume", "ls", "-q", "--filter", "label=k=v").stdout.split() == ["dv1"]
    cid = docker(da, dconf, "create", "-v", "dv1:/data", "busybox", "true").stdout.strip()
    r = docker(da, dconf, "volume", "rm", "dv1", check=False)
    assert r.returncode != 0 and "volume is in use" in r.stderr
    docker(da, dconf, "rm", cid)
    # a bind mount, read-only; the rootfs read-only with a tmpfs that is not
    host = Path(tempfile.mkdtemp(prefix="dy-bind-"))
    try:
        (host / "hello").write_text("from the host\n")
        out = docker(da, dconf, "run", "--rm", "--read-only", "--tmpfs", "/scratch:size=1m", "-v",
                     f"{host}:/h:ro", "busybox", "sh", "-c",
                     "cat /h/hello; touch /h/x 2>/dev/null || echo bind-ro; touch /x 2>/dev/null || echo root-ro; "
                     "touch /scratch/y && echo tmpfs-rw; grep ' /scratch ' /proc/mounts").stdout
        lines = out.splitlines()
        assert lines[:4] == ["from the host", "bind-ro", "root-ro", "tmpfs-rw"]
        assert lines[4].startswith("tmpfs /scratch tmpfs") and "size=1024k" in lines[4]
        cid = docker(da, dconf, "create", "--mount", f"type=bind,src={host},dst=/h", "--tmpfs", "/t:size=3m",
                     "-v", "dv1:/v", "busybox", "true").stdout.strip()
        doc = json.loads(docker(da, dconf, "inspect", cid).stdout)[0]
        assert doc["HostConfig"]["Tmpfs"] == {"/t": "size=3m"} and doc["HostConfig"]["Binds"] == ["dv1:/v"]
        assert doc["HostConfig"]["Mounts"] == [{"Type": "bind", "Source": str(host), "Target": "/h",
                                                "ReadOnly": False}]
        mounts = {m["Destination"]: m for m in doc["Mounts"]}
        assert mounts["/h"]["Source"] == str(host) and mounts["/h"]["Propagation"] == "rprivate"
        assert mounts["/v"]["Name"] == "dv1" and mounts["/v"]["RW"] is True
        docker(da, dconf, "rm", cid)
    finally:
        for p in host.iterdir():
            p.unlink()
        host.rmdir()
    # --volumes-from copies the other container's volumes, ro when asked
    src = docker(da, dconf, "create", "--name", "vsrc", "-v", "dv1:/data", "busybox", "true").stdout.strip()
    out = docker(da, dconf, "run", "--rm", "--volumes-from", "vsrc:ro", "busybox", "sh", "-c",
                 "cat /data/f; touch /data/g 2>/dev/null || echo ro").stdout
    assert out == "kept\nro\n"
    docker(da, dconf, "rm", src)
    docker(da, dconf, "volume", "rm", "dv1")
    # prune removes anonymous volumes only (docker 23+), unless --all
    docker(da, dconf, "volume", "create", "keepme")
    docker(da, dconf, "run", "--name", "anon", "-v", "/anon", "busybox", "true")
    anon = [m["Name"] for m in json.loads(docker(da, dconf, "inspect", "anon").stdout)[0]["Mounts"]]
    docker(da, dconf, "rm", "anon")
    pruned = docker(da, dconf, "volume", "prune", "-f").stdout
    assert anon[0] in pruned and "keepme" not in pruned
    assert docker(da, dconf, "volume", "ls", "-q").stdout.split() == ["keepme"]
    docker(da, dconf, "volume", "rm", "keepme")
    r = docker(da, dconf, "volume", "inspect", "nosuch", check=False)
    assert r.returncode != 0 and "no such volume" in r.stderr
    r = docker(da, dconf, "volume", "create", "-d", "flocker", "x1", check=False)
    assert r.returncode != 0 and 'plugin "flocker" not found' in r.stderr


@pytest.mark.slow
def test_caps_ulimits_dns_hosts_sysctls_shm_groups(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    script = ("grep CapEff /proc/self/status; ulimit -n; cat /etc/resolv.conf; grep db /etc/hosts; "
              "cat /proc/sys/net/core/somaxconn; df -k /dev/shm | tail -1; id -G")
    out = docker(da, dconf, "run", "--rm", "--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN", "--ulimit",
                 "nofile=123:456", "--dns", "10.9.8.7", "--dns-search", "example.org", "--dns-option", "ndots:3",
                 "--add-host", "db:10.1.2.3", "--sysctl", "net.core.somaxconn=1000", "--shm-size", "2m",
                 "--group-add", "1234", "busybox", "sh", "-c", script).stdout
    lines = out.splitlines()
    caps = int(lines[0].split()[1], 16)
    assert caps & (1 << 12) and not caps & (1 << 0)          # CAP_NET_ADMIN in, CAP_CHOWN out
    assert lines[1] == "123"
    assert "nameserver 10.9.8.7" in lines and "search example.org" in lines and "options ndots:3" in lines
    assert "10.1.2.3\tdb" in lines and "1000" in lines
    assert any(ln.split()[1:2] == ["2048"] for ln in lines if ln.startswith("shm"))
    assert "1234" in lines[-1].split()
    cid = docker(da, dconf, "create", "--cap-add", "NET_ADMIN", "--ulimit", "nofile=123:456", "--dns", "10.9.8.7",
                 "--add-host", "db:10.1.2.3", "--sysctl", "net.core.somaxconn=1000", "--shm-size", "2m",
                 "--group-add", "1234", "--read-only", "--log-opt", "max-size=1m", "--log-opt", "max-file=3",
                 "busybox", "true").stdout.strip()
    hc = json.loads(docker(da, dconf, "inspect", cid).stdout)[0]["HostConfig"]
    assert hc["CapAdd"] == ["CAP_NET_ADMIN"] and hc["Ulimits"] == [{"Name": "nofile", "Soft": 123, "Hard": 456}]
    assert hc["Dns"] == ["10.9.8.7"] and hc["ExtraHosts"] == ["db:10.1.2.3"] and hc["ShmSize"] == 2 << 20
    assert hc["Sysctls"] == {"net.core.somaxconn": "1000"} and hc["GroupAdd"] == ["1234"] and hc["ReadonlyRootfs"]
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}
    docker(da, dconf, "rm", cid)
    # refused by the agent's own checks with the field named (docker-py: the CLI checks some itself)
    import docker as dockerpy

    c = dockerpy.APIClient(base_url=f"unix://{da.docker_socket}", version="1.45")
    try:
        for kw, error in (({"sysctls": {"kernel.panic": "1"}}, "not a namespaced sysctl"),
                          ({"ulimits": [dockerpy.types.Ulimit(name="nofile", soft=9, hard=3)]},
                           "soft limit is above the hard limit"),
                          ({"extra_hosts": {"db": "nowhere"}}, "'nowhere' is not an IP address"),
                          ({"mounts": [dockerpy.types.Mount("/x", "/nonexistent-dy", type="bind")]}, "/nonexistent-dy"),
                          ({"tmpfs": {"/t": "size=lots"}}, "invalid size 'lots'"),
                          ({"cap_add": ["NET_WIZARD"]}, "unknown capability")):
            with pytest.raises(dockerpy.errors.APIError) as e:
                c.create_container("busybox", "true", host_config=c.create_host_config(**kw))
            assert e.value.status_code == 400 and error in str(e.value.explanation), (kw, e.value.explanation)
    finally:
        c.close()
    assert docker(da, dconf, "ps", "-aq").stdout == ""
    assert not os.path.exists("/nonexistent-dy")
