"""Docker's Engine API on a real agent (agent/dockerapi), driven by the real docker CLI (28.2, at
/usr/local/bin/docker) and docker-py, as a user drives them with DOCKER_HOST."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import socket
import struct
import subprocess
import tarfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess

pytestmark = pytest.mark.root

DOCKER = os.environ.get("DOCKYARD_TEST_DOCKER_CLI") or shutil.which("docker") or "/usr/local/bin/docker"


@pytest.fixture(scope="module")
def dconf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docker-config")   # the CLI's config dir: not the user's ~/.docker


@pytest.fixture
def da(clean_agent: AgentProcess, dconf: Path) -> Iterator[AgentProcess]:
    if not os.access(DOCKER, os.X_OK):
        pytest.skip("the docker CLI is not installed")
    yield clean_agent


def denv(a: AgentProcess, dconf: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{a.docker_socket}", DOCKER_CONFIG=str(dconf), DOCKER_BUILDKIT="0")
    return env


def docker(a: AgentProcess, dconf: Path, *args: str, input: str | None = None, timeout: float = 30,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([DOCKER, *args], input=input, capture_output=True, text=True, timeout=timeout,
                       env=denv(a, dconf))
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def raw(a: AgentProcess, request: bytes, timeout: float = 5) -> bytes:
    """One request on the socket, the whole answer (the server closes or we stop at a full body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(a.docker_socket))
        s.sendall(request)
        data = b""
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = [int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if (length and len(body) >= length[0]) or head.startswith(b"HEAD") or \
                        (b" 304 " in head.split(b"\r\n")[0]) or request.startswith(b"HEAD"):
                    return data
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def split(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# --- step 1: ping, version, info, versions, errors ------------------------------------------------

def test_ping_version_info_and_errors(da: AgentProcess, dconf: Path) -> None:
    code, h, body = split(raw(da, b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"))
    assert (code, body) == (200, b"OK") and h["api-version"] == "1.45" and h["ostype"] == "linux"
    code, h, body = split(raw(da, b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"))
    assert code == 200 and h["api-version"] == "1.45" and body == b""
    for prefix in ("", "/v1.41", "/v1.45"):
        code, h, body = split(raw(da, f"GET {prefix}/version HTTP/1.1\r\nHost: d\r\n\r\n".encode()))
        v = json.loads(body)
        assert code == 200 and v["ApiVersion"] == "1.45" and v["MinAPIVersion"] == "1.24" and v["Os"] == "linux"
    code, _, body = split(raw(da, b"GET /v1.99/version HTTP/1.1\r\nHost: d\r\n\r\n"))
    assert code == 400 and json.loads(body)["message"] == \
        "client version 1.99 is too new. Maximum supported API version is 1.45"
    code, _, body = split(raw(da, b"GET /v1.12/info HTTP/1.1\r\nHost: d\r\n\r\n"))
    assert code == 400 and "too old" in json.loads(body)["message"]
    code, _, body = split(raw(da, b"GET /containers/nosuch/json HTTP/1.1\r\nHost: d\r\n\r\n"))
    assert code == 404 and json.loads(body) == {"message": "No such container: nosuch"}
    code, _, body = split(raw(da, b"GET /nothing/here HTTP/1.1\r\nHost: d\r\n\r\n"))
    assert code == 404 and "message" in json.loads(body)
    code, _, body = split(raw(da, b"GET /swarm HTTP/1.1\r\nHost: d\r\n\r\n"))
    assert code == 503 and "not a swarm manager" in json.loads(body)["message"]
    code, _, body = split(raw(da, b"POST /session HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"))
    assert code == 501 and "DOCKER_BUILDKIT=0" in json.loads(body)["message"]
    # the real CLI
    v = json.loads(docker(da, dconf, "version", "--format", "{{json .Server}}").stdout)
    assert v["ApiVersion"] == "1.45" and v["Os"] == "linux"
    info = json.loads(docker(da, dconf, "info", "--format", "{{json .}}").stdout)
    assert info["Images"] >= 1 and info["OSType"] == "linux" and info["CgroupVersion"] in ("1", "2")
    # the socket is root's alone: the API is root on this host
    assert os.stat(da.docker_socket).st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_agent_flags_for_the_docker_socket(tmp_path: Path) -> None:
    from tests.agent_harness import CLI, REPO, _env

    r = subprocess.run([*CLI, "agent", "--docker-tcp", "0.0.0.0:2375", "--root", str(tmp_path)],
                       capture_output=True, text=True, env=_env(), cwd=REPO, timeout=30)
    assert r.returncode != 0 and "only a loopback address" in r.stderr
    assert not (tmp_path / "containers").exists()   # refused before anything was made
    # --docker-socket "" serves no socket; --docker-tcp serves loopback TCP
    from tests.agent_harness import free_port

    a = AgentProcess(tmp_path / "agent")
    port = free_port()
    a.extra_args = ["--docker-socket", "", "--docker-tcp", f"127.0.0.1:{port}"]
    try:
        a.start()
        assert not a.docker_socket.exists()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        a.destroy()


# --- step 2: containers with the docker CLI -------------------------------------------------------

@pytest.mark.slow
def test_docker_run_rm_ps_logs(da: AgentProcess, dconf: Path) -> None:
    assert docker(da, dconf, "run", "--rm", "busybox", "echo", "hi").stdout == "hi\n"
    r = docker(da, dconf, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert docker(da, dconf, "run", "--rm", "-i", "busybox", "cat", input="piped\n").stdout == "piped\n"
    assert docker(da, dconf, "ps", "-aq").stdout == ""   # --rm removed them
    cid = docker(da, dconf, "run", "-d", "--name", "web", "-l", "app=x", "busybox", "sh", "-c",
                 "for i in 1 2 3; do echo line $i; sleep 0.2; done; sleep 30").stdout.strip()
    assert len(cid) == 64
    ps = docker(da, dconf, "ps", "--format", "{{.ID}} {{.Names}} {{.Status}}", "--filter", "label=app=x").stdout
    assert ps.startswith(cid[:12] + " web Up")
    da.wait_for(lambda: "line 3" in docker(da, dconf, "logs", "web").stdout, what="the third line")
    # -f follows until the container ends; kill it meanwhile
    follow = subprocess.Popen([DOCKER, "logs", "-f", "-t", "web"], stdout=subprocess.PIPE, text=True,
                              env=denv(da, dconf))
    time.sleep(0.5)
    docker(da, dconf, "kill", "web")
    out, _ = follow.communicate(timeout=15)
    assert follow.returncode == 0 and [ln.split(" ", 1)[1] for ln in out.splitlines()] == \
        ["line 1", "line 2", "line 3"]
    assert out.splitlines()[0][:4].isdigit() and "Z " in out.splitlines()[0]
    assert docker(da, dconf, "logs", "--tail", "1", "web").stdout == "line 3\n"
    doc = json.loads(docker(da, dconf, "inspect", "web").stdout)[0]
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 137
    assert doc["Name"] == "/web" and doc["Config"]["Labels"]["app"] == "x" and doc["HostConfig"]["LogConfig"]["Type"] == "json-file"
    r = docker(da, dconf, "rm", "nosuch", check=False)
    assert r.returncode != 0 and "No such container: nosuch" in r.stderr


@pytest.mark.slow
def test_docker_logs_details_shows_the_log_opts_attrs(da: AgentProcess, dconf: Path) -> None:
    docker(da, dconf, "run", "-d", "--name", "tagged", "-e", "STAGE=prod", "--log-opt", "tag={{.Name}}",
           "--log-opt", "env=STAGE", "busybox", "echo", "hi")
    da.wait_for(lambda: docker(da, dconf, "logs", "tagged").stdout == "hi\n", what="the line")
    assert docker(da, dconf, "logs", "--details", "tagged").stdout == "STAGE=prod,tag=tagged hi\n"
    docker(da, dconf, "rm", "tagged")


def test_docker_run_device_and_privileged(da: AgentProcess, dconf: Path) -> None:
    """docker's --device and --privileged through the Docker API (agent/devices.py does the work)."""
    r = docker(da, dconf, "run", "--rm", "--device", "/dev/loop0:/dev/xloop:r", "busybox", "sh", "-c",
               "head -c1 /dev/xloop >/dev/null && echo read; true >/dev/xloop 2>/dev/null || echo nowrite")
    assert r.stdout.split() == ["read", "nowrite"], r.stdout + r.stderr
    with open("/proc/self/status") as f:
        caps = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    r = docker(da, dconf, "run", "--rm", "--privileged", "busybox", "grep", "CapEff", "/proc/self/status")
    assert r.stdout.split() == ["CapEff:", caps]
    cid = docker(da, dconf, "create", "--privileged", "--device", "/dev/net/tun", "busybox", "true").stdout.strip()
    host = json.loads(docker(da, dconf, "inspect", cid).stdout)[0]["HostConfig"]
    assert host["Privileged"] is True
    assert host["Devices"] == [{"PathOnHost": "/dev/net/tun", "PathInContainer": "/dev/net/tun",
                                "CgroupPermissions": "rwm"}]
    docker(da, dconf, "rm", cid)


def test_refused_with_the_field_named(da: AgentProcess, dconf: Path) -> None:
    r = docker(da, dconf, "run", "--rm", "--device", "/etc/hostname", "busybox", "true", check=False)
    assert r.returncode == 125 and "/etc/hostname is not a device node" in r.stderr
    r = docker(da, dconf, "run", "--rm", "--tmpfs", "/scratch:bogus", "busybox", "true", check=False)
    assert r.returncode == 125 and "unknown tmpfs option 'bogus'" in r.stderr
    r = docker(da, dconf, "run", "--rm", "--log-driver", "syslog", "busybox", "true", check=False)
    assert r.returncode == 125 and "logger: no log driver named 'syslog' is registered" in r.stderr  # docker's words
    r = docker(da, dconf, "run", "--rm", "--cap-add", "NET_WIZARD", "busybox", "true", check=False)
    assert r.returncode == 125 and "--cap-add CAP_NET_WIZARD: unknown capability" in r.stderr
    r = docker(da, dconf, "run", "--rm", "--log-opt", "bogus=x", "busybox", "true", check=False)
    assert r.returncode == 125 and "unknown log opt 'bogus' for json-file log driver" in r.stderr
    assert docker(da, dconf, "ps", "-aq").stdout == ""   # nothing half-made
    # what dockyard has, mapped: --device, --privileged
    out = docker(da, dconf, "run", "--rm", "--device", "/dev/null:/dev/mynull", "busybox", "sh", "-c",
                 "echo x > /dev/mynull && ls -l /dev/mynull").stdout
    assert out.startswith("c") and "1,   3" in out
    assert docker(da, dconf, "run", "--rm", "--privileged", "busybox", "sh", "-c",
                  "grep CapEff /proc/self/status").stdout.split()[1] != "00000000a80425fb"


@pytest.mark.slow
def test_running_container_verbs(da: AgentProcess, dconf: Path) -> None:
    docker(da, dconf, "run", "-d", "--name", "srv", "-p", "127.0.0.1::80", "busybox", "httpd", "-f", "-p", "80",
           "-h", "/etc")
    port = docker(da, dconf, "port", "srv", "80").stdout.strip()
    assert port.startswith("127.0.0.1:")
    import urllib.request

    def fetch() -> str:   # (httpd may not listen yet when `run -d` returns: wait on it, not a sleep)
        try:
            return str(urllib.request.urlopen(f"http://{port}/hostname", timeout=5).read().decode().strip())
        except OSError:
            return ""

    hostname = da.wait_for(fetch, what="httpd in srv")
    cid = docker(da, dconf, "inspect", "-f", "{{.Id}}", "srv").stdout.strip()
    assert hostname == cid[:12]
    assert "httpd -f -p 80" in docker(da, dconf, "top", "srv").stdout
    st = docker(da, dconf, "stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "srv").stdout.split()
    assert st == ["srv", "1"]
    assert docker(da, dconf, "exec", "srv", "cat", "/etc/hostname").stdout.strip() == cid[:12]
    assert docker(da, dconf, "exec", "-i", "srv", "cat", input="to exec\n").stdout == "to exec\n"
    assert docker(da, dconf, "exec", "srv", "sh", "-c", "exit 5", check=False).returncode == 5
    docker(da, dconf, "pause", "srv")
    assert "(Paused)" in docker(da, dconf, "ps", "--format", "{{.Status}}").stdout
    r = docker(da, dconf, "rm", "srv", check=False)
    assert r.returncode != 0 and "Stop the container before attempting removal or force remove" in r.stderr
    docker(da, dconf, "unpause", "srv")
    docker(da, dconf, "rename", "srv", "srv2")
    docker(da, dconf, "restart", "-t", "1", "srv2")
    assert docker(da, dconf, "inspect", "-f", "{{.State.Running}}", "srv2").stdout.strip() == "true"
    docker(da, dconf, "stop", "-t", "1", "srv2")
    code, _, _ = split(raw(da, f"POST /containers/{cid}/stop HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n".encode()))
    assert code == 304
    docker(da, dconf, "rm", "srv2")


def test_export_and_archive(da: AgentProcess, dconf: Path, tmp_path: Path) -> None:
    docker(da, dconf, "run", "--name", "fs", "busybox", "sh", "-c", "mkdir -p /data/d && echo content > /data/d/f")
    docker(da, dconf, "export", "-o", str(tmp_path / "fs.tar"), "fs")
    with tarfile.open(tmp_path / "fs.tar") as t:
        f = t.extractfile("data/d/f")
        assert f is not None and f.read() == b"content\n"
        assert "bin/busybox" in t.getnames()
    docker(da, dconf, "cp", "fs:/data", str(tmp_path / "out"))
    assert (tmp_path / "out" / "d" / "f").read_text() == "content\n"
    r = docker(da, dconf, "cp", "fs:/nope", str(tmp_path / "x"), check=False)
    # (the 28.2 CLI shows the daemon's message; the 20.10 one, Debian's, its own for the same 404)
    assert r.returncode != 0 and ("Could not find the file /nope" in r.stderr
                                  or "No such container:path: fs:/nope" in r.stderr)


# --- terminals ---------------------------------------------------------------------------------------

class Terminal:
    """The docker CLI on the slave side of a pty, as on a person's terminal."""

    def __init__(self, a: AgentProcess, dconf: Path, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([DOCKER, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=denv(a, dconf), start_new_session=True)
        os.close(slave)
        self.screen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; screen was {self.screen[-500:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:
                    break
        return self.screen.decode(errors="replace")

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.killpg(self.proc.pid, 28)  # SIGWINCH, as the terminal emulator would send it

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:
                    pass
        try:
            return self.proc.wait(timeout=1)
        finally:
            os.close(self.master)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
def test_docker_run_it_and_exec_it(da: AgentProcess, dconf: Path) -> None:
    t = Terminal(da, dconf, "run", "-it", "--name", "shell", "busybox", "sh", rows=30, cols=100)
    try:
        t.expect("# ")
        t.type("echo $((6*7)); tty; stty size\n")
        screen = t.expect("30 100")
        assert "42" in screen and "/dev/pts/0" in screen
        t.resize(40, 120)
        time.sleep(0.5)
        t.type("stty size\n")
        t.expect("40 120")
        e = Terminal(da, dconf, "exec", "-it", "shell", "sh", rows=20, cols=70)
        try:
            e.expect("# ")
            e.type("stty size; echo $$\n")
            e.expect("20 70")
            e.type("exit 7\n")
            assert e.wait() == 7
        finally:
            e.kill()
        t.type("\x10\x11")   # Ctrl-P Ctrl-Q: detach, the container goes on
        assert t.wait() == 0
        assert docker(da, dconf, "inspect", "-f", "{{.State.Status}}", "shell").stdout.strip() == "running"
    finally:
        t.kill()
    a = Terminal(da, dconf, "attach", "shell")
    try:
        a.type("\n")
        a.expect("# ")
        a.type("exit 4\n")
        assert a.wait() == 4
    finally:
        a.kill()


# --- docker-py -----------------------------------------------------------------------------------------

@pytest.fixture
def client(da: AgentProcess) -> Iterator[Any]:
    docker_py = pytest.importorskip("docker")
    c = docker_py.DockerClient(base_url=f"unix://{da.docker_socket}", version="auto", timeout=30)
    yield c
    c.close()


def test_docker_py_run_exec_attach_wait(client: Any) -> None:
    import docker as docker_py

    assert client.ping() is True
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"
    with pytest.raises(docker_py.errors.ContainerError) as exc:
        client.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 2"], remove=True)
    assert exc.value.exit_status == 2 and b"bad" in exc.value.stderr
    with pytest.raises(docker_py.errors.ImageNotFound):
        client.containers.create("nosuchimage:1")
    c = client.containers.run("busybox", "sh -c 'echo started; sleep 30'", detach=True, name="pyc",
                              environment={"A": "1"}, labels={"k": "v"}, mem_limit="64m")
    try:
        c.reload()
        assert c.status == "running" and c.attrs["HostConfig"]["Memory"] == 64 << 20
        assert "A=1" in c.attrs["Config"]["Env"] and c.labels == {"k": "v"}
        code, out = c.exec_run("sh -c 'echo $A; echo e >&2; exit 3'", demux=True)
        assert code == 3 and out == (b"1\n", b"e\n")
        assert [x.name for x in client.containers.list(filters={"label": "k=v"})] == ["pyc"]
        sock = client.api.attach_socket(c.id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1})
        c.kill()
        data = b""
        raw_sock = sock._sock
        raw_sock.settimeout(10)
        while chunk := raw_sock.recv(4096):
            data += chunk
        sock.close()
        assert data == b"\x01\x00\x00\x00\x00\x00\x00\x08started\n"
        assert c.wait(timeout=10)["StatusCode"] == 137
        assert c.logs() == b"started\n"
    finally:
        c.remove(force=True)
    with pytest.raises(docker_py.errors.NotFound):
        client.containers.get("pyc")


# --- step 3: images ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_load_and_import_stream_the_body(da: AgentProcess, dconf: Path, tmp_path: Path) -> None:
    """POST /images/load and /images/create?fromSrc=- unpack the body as it arrives: the agent writes
    the layer once, not also the archive into a temporary file first (its write_bytes tell); a
    refused archive is docker's 200 with the error in the stream, which the CLI prints."""
    assert da.proc is not None
    pid = da.proc.pid

    def written() -> int:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        raise AssertionError("no write_bytes")

    size = 8 << 20
    with open(tmp_path / "blob", "wb") as f:
        f.write(os.urandom(size))
    with tarfile.open(tmp_path / "rootfs.tar", "w") as t:
        t.add(tmp_path / "blob", "blob")
    before = written()
    assert docker(da, dconf, "import", str(tmp_path / "rootfs.tar"), "imported:1").stdout.startswith("sha256:")
    assert size <= written() - before < 1.5 * size  # the layer, not a spooled copy as well
    docker(da, dconf, "save", "-o", str(tmp_path / "img.tar"), "imported:1")
    docker(da, dconf, "rmi", "imported:1")
    before = written()
    assert "Loaded image: imported:1" in docker(da, dconf, "load", "-i", str(tmp_path / "img.tar")).stdout
    assert size <= written() - before < 1.5 * size
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 1000)
    r = docker(da, dconf, "load", "-i", str(tmp_path / "junk.tar"), check=False)
    assert r.returncode != 0 and "archive" in r.stderr, r.stderr
    r = docker(da, dconf, "import", str(tmp_path / "junk.tar"), "junk:1", check=False)
    assert r.returncode != 0 and "tar" in r.stderr, r.stderr
    docker(da, dconf, "rmi", "imported:1")


@pytest.mark.slow
def test_images_tag_history_save_load_build_rmi(da: AgentProcess, dconf: Path, tmp_path: Path) -> None:
    docker(da, dconf, "tag", "busybox", "mine:1")
    rows = docker(da, dconf, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert {"busybox:latest", "mine:1"} <= set(rows)
    assert "Imported from -" in docker(da, dconf, "history", "mine:1").stdout
    docker(da, dconf, "save", "-o", str(tmp_path / "img.tar"), "mine:1")
    with tarfile.open(tmp_path / "img.tar") as t:
        assert "manifest.json" in t.getnames()
    assert docker(da, dconf, "rmi", "mine:1").stdout == "Untagged: mine:1\n"
    assert "Loaded image: mine:1" in docker(da, dconf, "load", "-i", str(tmp_path / "img.tar")).stdout
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text('FROM busybox\nARG WHO=nobody\nRUN echo "built by $WHO" > /b\nCMD ["cat", "/b"]\n')
    out = docker(da, dconf, "build", "-t", "app:1", "--build-arg", "WHO=test", str(ctx), timeout=60).stdout
    assert "Step 2/4 : ARG WHO=nobody" in out and "Successfully tagged app:1" in out
    assert docker(da, dconf, "run", "--rm", "app:1").stdout == "built by test\n"
    again = docker(da, dconf, "build", "-t", "app:1", "--build-arg", "WHO=test", str(ctx), timeout=60).stdout
    assert "Using cache" in again
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN exit 3\n")
    r = docker(da, dconf, "build", str(ctx), check=False, timeout=60)
    assert r.returncode != 0 and "exit" in (r.stdout + r.stderr).lower()
    df = docker(da, dconf, "system", "df", "--format", "{{.Type}} {{.TotalCount}}").stdout
    assert "Images" in df
    r = docker(da, dconf, "rmi", "nosuch:9", check=False)
    assert r.returncode != 0 and "No such image: nosuch:9" in r.stderr
    docker(da, dconf, "rmi", "app:1", "mine:1")


def test_events_stream(da: AgentProcess, dconf: Path) -> None:
    since = str(int(time.time()) - 1)
    docker(da, dconf, "run", "--rm", "--name", "evt", "busybox", "true")
    out = docker(da, dconf, "events", "--since", since, "--until", str(int(time.time()) + 1),
                 "--filter", "container=evt", "--format", "{{.Action}}").stdout.split()
    assert out[:1] == ["create"] and "start" in out and "die" in out and out[-1] == "destroy"


def test_builtin_networks(da: AgentProcess, dconf: Path) -> None:
    names = docker(da, dconf, "network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout.split("\n")
    assert {"bridge bridge", "host host", "none null"} <= set(names)
    docker(da, dconf, "run", "-d", "--name", "onnet", "busybox", "sleep", "30")
    net = json.loads(docker(da, dconf, "network", "inspect", "bridge").stdout)[0]
    assert net["IPAM"]["Config"][0]["Subnet"] == da.subnet
    assert [c["Name"] for c in net["Containers"].values()] == ["onnet"]
    # (user-defined networks, now served: test_dockerapi_hostconfig.py)


def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """(name, data or None for a symlink, link target) -> a tar's bytes."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _put(a: AgentProcess, cid: str, path: str, body: bytes) -> tuple[int, bytes]:
    req = (f"PUT /containers/{cid}/archive?path={path}&noOverwriteDirNonDir=true HTTP/1.1\r\nHost: d\r\n"
           f"Content-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    code, _, out = split(raw(a, req))
    return code, out


@pytest.mark.slow
def test_copy_into_containers_running_and_stopped(da: AgentProcess, dconf: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("copied in\n")
    docker(da, dconf, "run", "-d", "--name", "cpr", "busybox", "sleep", "30")
    docker(da, dconf, "cp", str(tmp_path / "in.txt"), "cpr:/tmp/")
    assert docker(da, dconf, "exec", "cpr", "cat", "/tmp/in.txt").stdout == "copied in\n"
    docker(da, dconf, "create", "--name", "cps", "busybox", "cat", "/tmp/in.txt", "/etc/motd")
    r = docker(da, dconf, "cp", str(tmp_path / "in.txt"), "cps:/usr/share/x/", check=False)
    assert r.returncode != 0 and "no such directory" in r.stderr   # the CLI asks HEAD first
    docker(da, dconf, "cp", str(tmp_path / "in.txt"), "cps:/tmp/")
    docker(da, dconf, "cp", str(tmp_path / "in.txt"), "cps:/etc/motd")
    assert docker(da, dconf, "start", "-a", "cps").stdout == "copied in\ncopied in\n"
    st = docker(da, dconf, "exec", "cpr", "stat", "-c", "%a", "/tmp").stdout.strip()
    assert st == "1777"
    assert docker(da, dconf, "run", "--rm", "busybox", "ls", "/tmp").stdout == ""   # the image is untouched
    cid = docker(da, dconf, "inspect", "-f", "{{.Id}}", "cpr").stdout.strip()
    # hostile archives: refused, nothing written outside the container
    code, out = _put(da, cid, "/tmp", _tar([("../../escape", b"x", "")]))
    assert code == 400 and b"escape" in out
    code, out = _put(da, cid, "/tmp", _tar([("link", None, "/"), ("link/etc/evil", b"x", "")]))
    assert code == 400 and b"symlink" in out
    assert not Path("/etc/evil").exists()
    code, out = _put(da, cid, "/tmp", _tar([(".wh.in.txt", b"", "")]))
    assert code == 400 and b"whiteout" in out
    code, out = _put(da, cid, "/", _tar([("tmp", b"not a dir", "")]))
    assert code == 409 and b"cannot overwrite directory" in out
    assert docker(da, dconf, "exec", "cpr", "cat", "/tmp/in.txt").stdout == "copied in\n"


@pytest.mark.slow
@pytest.mark.peer
def test_docker_compose_up_ps_logs_down(da: AgentProcess, dconf: Path, tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose (Debian's 1.29) is not installed")
    (tmp_path / "docker-compose.yml").write_text(
        'version: "3"\nservices:\n'
        '  web:\n    image: busybox\n    command: httpd -f -p 80 -h /etc\n    network_mode: bridge\n'
        '    ports: ["127.0.0.1::80"]\n'
        '  worker:\n    image: busybox\n    command: sh -c "echo worker up; sleep 300"\n    network_mode: bridge\n')
    env = denv(da, dconf)

    def dc(*args: str) -> str:
        r = subprocess.run([compose, "-p", "dyk", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    try:
        dc("up", "-d")
        ps = dc("ps")
        assert "dyk_web_1" in ps and "dyk_worker_1" in ps and ps.count(" Up ") == 2
        port = docker(da, dconf, "port", "dyk_web_1", "80").stdout.strip()
        import urllib.request

        assert urllib.request.urlopen(f"http://{port}/hostname", timeout=5).status == 200
        da.wait_for(lambda: "worker up" in dc("logs", "worker"), what="the worker's log")
    finally:
        dc("down", "-t", "1")
    assert docker(da, dconf, "ps", "-aq").stdout == ""


@pytest.mark.slow
def test_testcontainers_python(da: AgentProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    tc = pytest.importorskip("testcontainers.core.container")
    strategies = pytest.importorskip("testcontainers.core.wait_strategies")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{da.docker_socket}")
    # Ryuk (its reaper) bind-mounts the Docker socket into a container: no bind mounts yet
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    import urllib.request

    c = tc.DockerContainer("busybox").with_command("sh -c 'echo ready; exec httpd -f -p 80 -h /etc'") \
        .with_exposed_ports(80).waiting_for(strategies.LogMessageWaitStrategy("ready"))
    with c:
        port = c.get_exposed_port(80)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=5).status == 200
        out, _err = c.get_logs()
        assert out == b"ready\n"
        cid = c.get_wrapped_container().id
    assert cid not in [x.id for x in da.stub.ListContainers(pb.ListContainersRequest(all=True)).containers]


@pytest.mark.slow
@pytest.mark.peer
def test_login_push_pull_through_a_loopback_registry(da: AgentProcess, dconf: Path, tmp_path: Path) -> None:
    from tests.kernel.test_images_registry import USERS, Registry

    reg = Registry(tmp_path / "registry", "basic", USERS)
    try:
        reg.start()
        ref = f"{reg.host}/team/bb:1"
        docker(da, dconf, "tag", "busybox", ref)
        r = docker(da, dconf, "push", ref, check=False)
        assert r.returncode != 0 and ("unauthorized" in (r.stdout + r.stderr).lower()
                                      or "authentication" in (r.stdout + r.stderr).lower())
        r = docker(da, dconf, "login", "-u", "alice", "--password-stdin", reg.host, input="wrong\n", check=False)
        assert r.returncode != 0
        out = docker(da, dconf, "login", "-u", "alice", "--password-stdin", reg.host, input="s3cret-pw\n").stdout
        assert "Login Succeeded" in out
        out = docker(da, dconf, "push", ref, timeout=60).stdout
        assert "digest: sha256:" in out or "Pushed" in out
        docker(da, dconf, "rmi", ref)
        out = docker(da, dconf, "pull", ref, timeout=60).stdout
        assert ref in out or "Downloaded" in out or "up to date" in out.lower()
        assert docker(da, dconf, "run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"
        docker(da, dconf, "rmi", ref)
    finally:
        reg.stop()


@pytest.mark.slow
def test_healthchecks(da: AgentProcess, dconf: Path) -> None:
    docker(da, dconf, "run", "-d", "--name", "ok", "--health-cmd", "test -e /bin/sh", "--health-interval", "200ms",
           "--health-retries", "1", "busybox", "sleep", "60")
    docker(da, dconf, "run", "-d", "--name", "bad", "--health-cmd", "echo nope; exit 1", "--health-interval",
           "200ms", "--health-retries", "2", "busybox", "sleep", "60")

    def status(name: str) -> str:
        return docker(da, dconf, "inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()

    assert status("ok") in ("starting", "healthy")
    da.wait_for(lambda: status("ok") == "healthy", timeout=20, what="ok to be healthy")
    da.wait_for(lambda: status("bad") == "unhealthy", timeout=20, what="bad to be unhealthy")
    doc = json.loads(docker(da, dconf, "inspect", "bad").stdout)[0]
    assert doc["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "echo nope; exit 1"]
    assert doc["State"]["Health"]["FailingStreak"] >= 2
    assert doc["State"]["Health"]["Log"][-1]["ExitCode"] == 1 and doc["State"]["Health"]["Log"][-1]["Output"] == "nope\n"
    assert "(healthy)" in docker(da, dconf, "ps", "--filter", "name=ok", "--format", "{{.Status}}").stdout
