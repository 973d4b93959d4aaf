"""The rest of `docker run`'s HostConfig and the /volumes endpoints through Docker's Engine API,
driven by the real docker CLI: each option is checked inside the container, not only in inspect."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker as dockerpy
import pytest

from tests.agent_harness import AgentProcess
from tests.kernel.test_dockerapi import da, dconf, denv, docker  # noqa: F401  (fixtures)

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


@pytest.mark.slow
def test_user_networks_names_aliases_links_and_isolation(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    docker(da, dconf, "network", "create", "--label", "app=t", "dyn1")
    docker(da, dconf, "network", "create", "dyn2")
    try:
        net = json.loads(docker(da, dconf, "network", "inspect", "dyn1").stdout)[0]
        assert (net["Driver"], net["Scope"], net["Labels"]) == ("bridge", "local", {"app": "t"})
        subnet = net["IPAM"]["Config"][0]["Subnet"]
        assert subnet.endswith("/24")
        names = docker(da, dconf, "network", "ls", "--filter", "type=custom", "--format", "{{.Name}}").stdout.split()
        assert sorted(names) == ["dyn1", "dyn2"]
        docker(da, dconf, "run", "-d", "--name", "db1", "--network", "dyn1", "--network-alias", "database",
               "busybox", "sleep", "60")
        docker(da, dconf, "run", "-d", "--name", "other2", "--network", "dyn2", "busybox", "sleep", "60")
        db = json.loads(docker(da, dconf, "inspect", "db1").stdout)[0]
        ip = db["NetworkSettings"]["Networks"]["dyn1"]["IPAddress"]
        assert ip and db["NetworkSettings"]["Networks"]["dyn1"]["Aliases"][0] == "database"
        other_ip = json.loads(docker(da, dconf, "inspect", "other2").stdout)[0]["NetworkSettings"]["Networks"][
            "dyn2"]["IPAddress"]
        # by name, by alias and by short id at 127.0.0.11; another network is not reachable, nor named
        out = docker(da, dconf, "run", "--rm", "--network", "dyn1", "busybox", "sh", "-c",
                     f"cat /etc/resolv.conf; nslookup db1; nslookup database; nslookup {db['Id'][:12]}; "
                     f"ping -c1 -W2 db1 >/dev/null && echo ping-ok; nslookup other2 >/dev/null 2>&1 || echo no-other; "
                     f"ping -c1 -W1 {other_ip} >/dev/null 2>&1 || echo isolated").stdout
        assert "nameserver 127.0.0.11" in out and out.count(f"Address: {ip}") >= 3, out
        assert "ping-ok" in out and "no-other" in out and "isolated" in out, out
        # --link on the user network: /etc/hosts
        out = docker(da, dconf, "run", "--rm", "--network", "dyn1", "--link", "db1:thedb", "busybox", "grep",
                     "thedb", "/etc/hosts").stdout
        assert out.split()[:2] == [ip, "thedb"]
        r = docker(da, dconf, "network", "rm", "dyn1", check=False)
        assert r.returncode != 0 and "has active endpoints" in r.stderr
        # a created container is connected anew (a running one too: tests/kernel/test_network_connect.py)
        cid = docker(da, dconf, "create", "--network", "dyn2", "busybox", "true").stdout.strip()
        docker(da, dconf, "network", "disconnect", "dyn2", cid)
        docker(da, dconf, "network", "connect", "--alias", "late", "dyn1", cid)
        nets = json.loads(docker(da, dconf, "inspect", cid).stdout)[0]["NetworkSettings"]["Networks"]
        assert list(nets) == ["dyn1"] and nets["dyn1"]["Aliases"][0] == "late"
        docker(da, dconf, "rm", cid)
        r = docker(da, dconf, "network", "connect", "dyn1", "db1", check=False)
        assert r.returncode != 0 and "already exists in network dyn1" in r.stderr
        # (through docker-py: the CLI answers a 404 at create with a pull, as it does with dockerd)
        with dockerpy.APIClient(base_url=f"unix://{da.docker_socket}", version="1.45") as c, \
                pytest.raises(dockerpy.errors.NotFound, match="network nosuchnet not found"):
            c.create_container("busybox", "true", host_config=c.create_host_config(network_mode="nosuchnet"))
        r = docker(da, dconf, "network", "create", "-d", "macvlan", "dyn3", check=False)
        assert r.returncode != 0 and "plugin not found" in r.stderr
    finally:
        docker(da, dconf, "rm", "-f", "db1", "other2", check=False)
        docker(da, dconf, "network", "rm", "dyn1", "dyn2", check=False)
    assert docker(da, dconf, "network", "ls", "--filter", "type=custom", "-q").stdout == ""
    bridges = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    assert not any(n["Id"][:12] in bridges for n in [net])


@pytest.mark.slow
def test_docker_compose_with_networks_and_a_named_volume(da: AgentProcess, dconf: Path,  # noqa: F811
                                                          tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose (Debian's 1.29) is not installed")
    (tmp_path / "docker-compose.yml").write_text(
        'version: "3"\nservices:\n'
        '  db:\n    image: busybox\n    command: sh -c "echo from-the-volume > /data/index.html; httpd -f -p 80 -h /data"\n'
        '    volumes: ["dbdata:/data"]\n    networks: [back]\n'
        '  web:\n    image: busybox\n    command: sleep 300\n    networks: [back]\n    depends_on: [db]\n'
        '  worker:\n    image: busybox\n    command: sh -c "echo worker up; sleep 300"\n'
        'networks:\n  back: {}\nvolumes:\n  dbdata: {}\n')
    env = denv(da, dconf)

    def dc(*args: str, check: bool = True) -> str:
        r = subprocess.run([compose, "-p", "dyc", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 or not check, f"docker-compose {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    try:
        dc("up", "-d")
        ps = dc("ps")
        assert ps.count(" Up ") == 3, ps
        nets = docker(da, dconf, "network", "ls", "--format", "{{.Name}}").stdout.split()
        assert "dyc_back" in nets and "dyc_default" in nets
        assert "dyc_dbdata" in docker(da, dconf, "volume", "ls", "-q").stdout.split()
        # web finds db by its service name on their network, and reads what db wrote into the volume
        out = ""
        for _ in range(50):
            out = dc("exec", "-T", "web", "wget", "-qO-", "http://db/", check=False)
            if "from-the-volume" in out:
                break
            time.sleep(0.1)
        assert "from-the-volume" in out, out
        # the worker, on the project's default network, does not see db
        # (nslookup: busybox-static's getaddrinfo crashes on a name nobody knows, under dockerd too)
        r = docker(da, dconf, "exec", "dyc_worker_1", "nslookup", "db", check=False)
        assert r.returncode != 0 and "Address" not in r.stdout.partition("Name:")[2], r
        da.wait_for(lambda: "worker up" in dc("logs", "worker"), what="the worker's log")
    finally:
        dc("down", "-v", "-t", "1", check=False)
    assert docker(da, dconf, "ps", "-aq").stdout == ""
    assert "dyc_dbdata" not in docker(da, dconf, "volume", "ls", "-q").stdout
    assert not [n for n in docker(da, dconf, "network", "ls", "--format", "{{.Name}}").stdout.split()
                if n.startswith("dyc_")]


@pytest.mark.slow
def test_attach_over_a_websocket(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    import socket

    import websocket

    def ws(cid: str, query: str) -> websocket.WebSocket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(da.docker_socket))
        return websocket.create_connection(f"ws://localhost/v1.45/containers/{cid}/attach/ws?{query}", socket=s,
                                           timeout=10)

    # before the start, as docker-py's test does: the first output arrives whole, unframed, binary
    cid = docker(da, dconf, "create", "busybox", "printf", "hi there").stdout.strip()
    conn = ws(cid, "stdout=1&stream=1&logs=1")
    docker(da, dconf, "start", cid)
    op, data = conn.recv_data()
    assert (op, data) == (websocket.ABNF.OPCODE_BINARY, b"hi there")
    conn.close()
    # stdin through the websocket; the container's exit closes it
    cid = docker(da, dconf, "run", "-d", "-i", "busybox", "sh", "-c", "read x; echo got-$x").stdout.strip()
    conn = ws(cid, "stdin=1&stdout=1&stream=1")
    conn.send_binary(b"hello\n")
    got = b""
    with contextlib.suppress(websocket.WebSocketConnectionClosedException):
        while b"got-hello" not in got:
            got += conn.recv_data()[1]
    assert b"got-hello\n" in got
    conn.close()
    docker(da, dconf, "rm", "-f", cid)
    # an old client (API 1.41) gets text messages, as docker's
    cid = docker(da, dconf, "create", "busybox", "printf", "old").stdout.strip()
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(da.docker_socket))
    conn = websocket.create_connection(f"ws://localhost/v1.41/containers/{cid}/attach/ws?stdout=1&stream=1",
                                       socket=s, timeout=10)
    docker(da, dconf, "start", cid)
    assert conn.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"old")
    conn.close()


@pytest.mark.slow
def test_hostile_mounts_names_and_handshakes(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    import socket

    with dockerpy.APIClient(base_url=f"unix://{da.docker_socket}", version="1.45") as c:
        for hc, error in (({"binds": ["/etc/../etc:/x"]}, "has a '..' in it"),
                          ({"mounts": [dockerpy.types.Mount("/", "dyv", type="volume")]}, "the target cannot be /"),
                          ({"mounts": [dockerpy.types.Mount("/x/../..", "dyv")]}, "the target cannot be /"),
                          ({"binds": ["../dyv:/x"]}, "relative"),
                          ({"tmpfs": {"/t": "size=1m,exec=/bin/sh"}}, "unknown tmpfs option"),
                          ({"volumes_from": ["nosuch-dy"]}, "No such container: nosuch-dy")):
            with pytest.raises(dockerpy.errors.APIError) as e:
                c.create_container("busybox", "true", host_config=c.create_host_config(**hc))
            assert e.value.status_code in (400, 404) and error in str(e.value.explanation), (hc, e.value.explanation)
        for name, error in (("../x", "invalid volume name"), ("a" * 300, "invalid volume name")):
            with pytest.raises(dockerpy.errors.APIError, match=error):
                c.create_volume(name)
        with pytest.raises(dockerpy.errors.APIError, match="invalid network name"):
            c.create_network("a/b")
        with pytest.raises(dockerpy.errors.APIError, match="network with name bridge already exists"):
            c.create_network("bridge")
        assert c.volumes()["Volumes"] in (None, []) and not [n for n in c.networks() if n["Name"] == "a/b"]
        assert not os.path.exists("/x") and c.containers(all=True) == []
    # a websocket handshake without its key is refused, not half-opened
    cid = docker(da, dconf, "create", "busybox", "true").stdout.strip()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(da.docker_socket))
        s.sendall(f"GET /containers/{cid}/attach/ws?stream=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  "Upgrade: websocket\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    docker(da, dconf, "rm", cid)


@pytest.mark.slow
def test_a_fixed_address_on_a_user_network(da: AgentProcess, dconf: Path) -> None:  # noqa: F811
    import random

    net = f"10.223.{random.randrange(256)}"   # (a subnet of its own: other runs may be beside this one)
    docker(da, dconf, "network", "create", "--subnet", f"{net}.0/24", "dyip")
    try:
        docker(da, dconf, "run", "-d", "--name", "fixed", "--network", "dyip", "--ip", f"{net}.50", "busybox",
               "sleep", "60")
        ep = json.loads(docker(da, dconf, "inspect", "fixed").stdout)[0]["NetworkSettings"]["Networks"]["dyip"]
        assert ep["IPAddress"] == f"{net}.50" and ep["IPAMConfig"] == {"IPv4Address": f"{net}.50"}
        out = docker(da, dconf, "exec", "fixed", "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"{net}.50/24" in out
        for args, error in ((["--network", "dyip", "--ip", f"{net}.50"], "already in use"),
                            (["--network", "dyip", "--ip", "10.9.9.9"], "not an address of network dyip"),
                            (["--ip", "172.29.0.9"], "user defined networks only"),
                            (["--network", "dyip", "--dns", "10.0.0.1"], "not supported by dockyard yet")):
            r = docker(da, dconf, "run", "--rm", *args, "busybox", "true", check=False)
            assert r.returncode == 125 and error in r.stderr, (args, r.stderr)
    finally:
        docker(da, dconf, "rm", "-f", "fixed", check=False)
        docker(da, dconf, "network", "rm", "dyip", check=False)
