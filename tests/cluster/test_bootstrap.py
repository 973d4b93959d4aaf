"""`dockyard cluster up|status|down -i hosts.yaml` (deploy/bootstrap.py).

- The inventory's validation: tables of bad files and the message each one gets (file:line: field).
- Against real OpenSSH: two hosts made of network namespaces (tests/multihost.py, without the
  harness's own agents), each running /usr/sbin/sshd -D with a config, host key, authorized key and
  pid file of this test, on the host's own address. `cluster up --no-install` copies the project
  into a directory per host (the hosts share this machine's filesystem, so the venv is there),
  starts the scheduler on host1 and an agent on each, joined: `dockyard node ls` through the
  scheduler shows both ready. Then: up again changes nothing; status; down stops every process.
  Failures: a host that does not answer, a refused key, an unknown host key, a failing install
  step, a host without dockyard, an agent that cannot start (what the run started is stopped).
- `vagrant validate` of vagrant/Vagrantfile, when vagrant is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy import bootstrap as b
from tests.agent_harness import REPO, _env
from tests.multihost import Cluster, Host, alive, pids_in_netns, sweep_stale, unmount_under, wait_for

SSHD = "/usr/sbin/sshd"
CLI = [sys.executable, "-m", "deploy.cli"]


# ================================================================================================
# Against real sshd in netns hosts
# ================================================================================================

class SshCluster(Cluster):
    """Hosts of tests/multihost.py with no agent of the harness: the bootstrap starts them."""

    def start(self) -> SshCluster:
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            self._make_bridge()
            self.hosts = [Host(self, i) for i in range(1, self.n + 1)]
            for h in self.hosts:
                h.plumb()
        except BaseException:
            self.destroy()
            raise
        return self


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dockyard-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Env:
    c: SshCluster
    tmp: Path
    ports: dict[int, int]
    sshd: dict[int, subprocess.Popen[bytes]]

    def host_dir(self, n: int, sub: str = "") -> Path:
        return self.tmp / f"host{n}" / sub if sub else self.tmp / f"host{n}"

    def inventory(self, name: str = "hosts.yaml", *, agent_extra: dict[int, list[str]] | None = None,
                  host: dict[int, dict[str, Any]] | None = None, install_dir: str = "project",
                  defaults: dict[str, Any] | None = None, only: int = 2, state: str = "state") -> Path:
        """An inventory of the first `only` hosts (the third is for the etcd cluster's test); a TLS
        cluster gets a ``state`` directory of its own (a node's identity and certificate live there)."""
        hosts = []
        for h in self.c:
            if h.n > only:
                continue
            spec: dict[str, Any] = {
                "name": h.name, "address": h.ip, "port": self.ports[h.n],
                "role": "scheduler" if h.n == 1 else "agent", "labels": {"zone": f"z{h.n}"},
                "project_dir": str(self.host_dir(h.n, install_dir)), "state_dir": str(self.host_dir(h.n, state)),
                "socket": str(self.host_dir(h.n, state) / "agent.sock"),
                "agent_args": ["--bridge", h.bridge, "--subnet", h.subnet, "--cgroup-parent", h.cgroup_parent,
                               *(agent_extra or {}).get(h.n, [])]}
            spec.update((host or {}).get(h.n, {}))
            hosts.append(spec)
        d = {"user": "root", "key": "ssh/id_ed25519", "known_hosts": "ssh/known_hosts", "python": sys.executable,
             **(defaults or {})}
        f = self.tmp / name
        f.write_text(json.dumps({"defaults": d, "hosts": hosts}, indent=1))  # JSON is YAML
        return f

    def host_empty(self, h: Host) -> bool:
        return not self.netns_pids(h)

    def netns_pids(self, h: Host) -> set[int]:
        sshd = self.sshd[h.n].pid
        return {p for p in pids_in_netns(os.stat(f"/run/netns/{h.netns}").st_ino) if p != sshd}


def dockyard(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=timeout)


def _sshd_up(e: Env, h: Host) -> bool:
    """sshd answers on the host's address (or has exited: the fixture then shows its log)."""
    if e.sshd[h.n].poll() is not None:
        return True
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((h.ip, e.ports[h.n])) == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("netns hosts need root")
    for tool in ("ip", "nsenter", "ssh-keygen", SSHD):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    sweep_stale()
    tmp = tmp_path_factory.mktemp("bootstrap")
    ssh = tmp / "ssh"
    ssh.mkdir(mode=0o700)
    host_pub = keygen(ssh / "host_key")
    (ssh / "authorized_keys").write_text(keygen(ssh / "id_ed25519") + "\n")
    keygen(ssh / "stranger")  # a key that is not authorized
    made_privsep = not os.path.isdir("/run/sshd")  # sshd wants its privilege separation directory
    if made_privsep:
        os.makedirs("/run/sshd", mode=0o755)
    c = SshCluster(3, tmp / "net").start()
    e = Env(c, tmp, {}, {})
    try:
        known = []
        for h in c:
            port = 20000 + secrets.randbelow(20000)  # a fresh netns: nothing else listens there
            e.ports[h.n] = port
            cfg = tmp / f"sshd_config.{h.n}"
            cfg.write_text(f"""Port {port}
ListenAddress {h.ip}
HostKey {ssh / 'host_key'}
PidFile {tmp / f'sshd.{h.n}.pid'}
AuthorizedKeysFile {ssh / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
            with open(tmp / f"sshd.{h.n}.log", "ab") as log:  # nsenter execs: the pid is sshd's
                e.sshd[h.n] = subprocess.Popen(["nsenter", f"--net=/run/netns/{h.netns}", "--", SSHD, "-D", "-e",
                                                "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
            known.append(f"[{h.ip}]:{port} {host_pub}")
        (ssh / "known_hosts").write_text("\n".join(known) + "\n")
        for h in c:
            wait_for(functools.partial(_sshd_up, e, h), 15, "sshd")
            assert e.sshd[h.n].poll() is None, (tmp / f"sshd.{h.n}.log").read_text()
        yield e
    finally:
        for p in e.sshd.values():  # by PID: the sshd this fixture started
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for h in c:
            unmount_under(tmp / f"host{h.n}")
        c.destroy()  # also kills whatever is left in the hosts' netns (nothing, when down worked)
        if made_privsep:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")
        leftovers = c.leftovers()
        assert not leftovers, leftovers


def status(inv: Path) -> dict[str, Any]:
    r = dockyard("cluster", "status", "-i", str(inv), "--format", "json", timeout=120)
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_up_status_down(env: Env) -> None:
    inv = env.inventory()
    try:
        _up_status_down(env, inv)
    finally:  # whatever failed, the next test finds the hosts empty
        dockyard("cluster", "down", "-i", str(inv))


def _up_status_down(env: Env, inv: Path) -> None:
    t0 = time.monotonic()
    r = dockyard("cluster", "up", "-i", str(inv), "--no-install", "--insecure")
    took = time.monotonic() - t0
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    print(r.stdout)
    for step in ("connect", "copy", "check", "start agent"):
        assert f"host1  {step}" in r.stdout and f"host2  {step}" in r.stdout, r.stdout
    assert "host1  start scheduler" in r.stdout and "host2  start scheduler" not in r.stdout

    # The project was copied into each host's directory and is what runs there. (Compared with the
    # sha256 `up` printed: others may change tracked files of this checkout meanwhile.)
    sent = r.stdout.split("sha256 ")[1].split()[0]
    for h in env.c.hosts[:2]:
        proj = env.host_dir(h.n, "project")
        assert (proj / b.MARKER).read_text().strip().startswith(sent)
        assert (proj / "deploy" / "bootstrap.py").read_bytes() == (REPO / "deploy" / "bootstrap.py").read_bytes()
        assert not (proj / ".venv").exists() and not (proj / ".git").exists()

    # Both nodes registered with the scheduler on host1, reached as any client would.
    sched = f"{env.c[1].ip}:2377"
    nodes = json.loads(dockyard("--scheduler", sched, "node", "ls", "--format", "json").stdout)
    by_name = {n["name"]: n for n in nodes}
    assert set(by_name) == {"host1", "host2"}, nodes
    for h in env.c.hosts[:2]:
        assert by_name[h.name]["status"] == "ready", nodes
        assert by_name[h.name]["address"] == f"{h.ip}:7070"
        assert by_name[h.name]["labels"] == {"zone": f"z{h.n}"}

    # Status: one scheduler on host1, an agent on each, each running inside its host's netns and
    # started from the host's copy of the project.
    st = status(inv)
    assert set(st["host1"]) == {"scheduler", "agent"} and set(st["host2"]) == {"agent"}, st
    pids = {}
    for h in env.c.hosts[:2]:
        for name, p in st[h.name].items():
            assert p["running"], st
            assert p["pid"] in env.netns_pids(h)
            assert os.readlink(f"/proc/{p['pid']}/cwd") == str(env.host_dir(h.n, "project"))
            pids[h.name, name] = p["pid"]
    check = asyncio.run(_check_module(inv))
    assert all(m.startswith(str(env.host_dir(n, "project"))) for n, m in check.items()), check
    table = dockyard("cluster", "status", "-i", str(inv))
    assert table.returncode == 0 and table.stdout.count("running") == 3, table.stdout

    # Up again: nothing sent, nothing started; one scheduler and one agent per host.
    there = (env.host_dir(1, "project") / b.MARKER).read_text().strip()
    unchanged = b.make_bundle().sha256 == there
    r2 = dockyard("cluster", "up", "-i", str(inv), "--no-install", "--insecure")
    assert r2.returncode == 0, f"{r2.stdout}\n{r2.stderr}"
    assert r2.stdout.count("already running") == 3, r2.stdout
    if unchanged and b.make_bundle().sha256 == there:
        assert r2.stdout.count("up to date") == 2, r2.stdout  # (unless the checkout changed meanwhile)
    st2 = status(inv)
    assert {(h, n): p["pid"] for h, procs in st2.items() for n, p in procs.items()} == pids
    assert sum(1 for h in env.c.hosts[:2] for p in env.netns_pids(h)
               if "deploy.cli" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")) == 3

    # Down: agents, then the scheduler (and its etcd), stopped; nothing is left in the hosts.
    r3 = dockyard("cluster", "down", "-i", str(inv))
    assert r3.returncode == 0, f"{r3.stdout}\n{r3.stderr}"
    assert r3.stdout.count("stop agent: stopped") == 2 and r3.stdout.count("stop scheduler: stopped") == 1, r3.stdout
    for pid in pids.values():
        assert not alive(pid)
    for h in env.c.hosts[:2]:
        wait_for(functools.partial(env.host_empty, h), 10, f"{h.name}'s processes to end")
    assert status(inv) == {"host1": {}, "host2": {}}
    r4 = dockyard("cluster", "down", "-i", str(inv))  # down twice is fine too
    assert r4.returncode == 0 and r4.stdout.count("not running") == 3, r4.stdout
    print(f"cluster up of 2 hosts over SSH: {took:.1f} s")


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_up_with_tls(env: Env) -> None:
    """`cluster up` (TLS is the default): the scheduler runs --tls, the agents join by the worker token read on the
    scheduler's host, the operator gets the admin bundle beside the inventory, every node is ready
    over mutual TLS; a plaintext CLI is refused; down stops it all."""
    from common import pki

    inv = env.inventory("tls.yaml", state="state-tls")
    admin = inv.resolve().with_suffix(".admin")
    e = _env()
    e["DOCKYARD_CERT_PATH"] = str(env.tmp / "elsewhere")  # so ~/.dockyard is left alone (the export line is printed)
    try:
        r = subprocess.run([*CLI, "cluster", "up", "-i", str(inv), "--no-install"], capture_output=True,
                           text=True, env=e, cwd=REPO, timeout=240)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
        print(r.stdout)
        assert "host1  admin bundle" in r.stdout and f"export DOCKYARD_CERT_PATH={admin}" in r.stdout, r.stdout
        assert (admin / "key.pem").stat().st_mode & 0o777 == 0o600
        assert pki.subject_of((admin / "cert.pem").read_bytes()).role == "admin"
        sched = f"{env.c[1].ip}:2377"
        e["DOCKYARD_CERT_PATH"] = str(admin)
        got = subprocess.run([*CLI, "--scheduler", sched, "node", "ls", "--format", "json"], capture_output=True,
                             text=True, env=e, cwd=REPO, timeout=60)
        nodes = json.loads(got.stdout)
        assert {n["name"]: n["status"] for n in nodes} == {"host1": "ready", "host2": "ready"}, nodes
        st = status(inv)
        for n in (1, 2):  # the token reached the agents in their environment: `ps` does not show it
            pid = st[f"host{n}"]["agent"]["pid"]
            assert b"DYTKN" not in Path(f"/proc/{pid}/cmdline").read_bytes(), st
            assert not any("DYTKN" in a for a in st[f"host{n}"]["agent"]["argv"]), st
        for h in env.c.hosts[:2]:
            tls = env.host_dir(h.n, "state-tls") / "agent" / "tls"
            assert pki.subject_of((tls / "cert.pem").read_bytes()).role == "agent"
            assert (tls / "key.pem").stat().st_mode & 0o777 == 0o600
        e["DOCKYARD_CERT_PATH"] = str(env.tmp / "none")
        plain = subprocess.run([*CLI, "--scheduler", sched, "node", "ls"], capture_output=True, text=True, env=e,
                               cwd=REPO, timeout=60)
        assert plain.returncode != 0
    finally:
        # The agents keep their node identity after `down` (a restart must find it) in state-tls/,
        # apart from the plaintext tests' state/ (an --insecure agent refuses to start beside one).
        dockyard("cluster", "down", "-i", str(inv))


def _etcd_ssl(bundle: Path | None) -> Any:
    """A client TLS context trusting etcd's own CA (``bundle``'s), showing ``bundle``'s certificate."""
    import ssl

    if bundle is None:
        return None
    ctx = ssl.create_default_context(cafile=str(bundle / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(bundle / "cert.pem"), str(bundle / "key.pem"))
    return ctx


def _etcd_members(ip: str, bundle: Path | None = None) -> list[str]:
    """The member names etcd on this test host lists (its v3 JSON gateway; over TLS with ``bundle``)."""
    import urllib.request

    req = urllib.request.Request(f"{'https' if bundle else 'http'}://{ip}:{b.ETCD_CLIENT_PORT}/v3/cluster/member/list",
                                 data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5, context=_etcd_ssl(bundle)) as r:
        return sorted(m["name"] for m in json.loads(r.read())["members"])


def _etcd_refuses(ip: str, port: int, bundle: Path | None, ca: Path) -> str:
    """How etcd's port refuses a client: plaintext (``bundle`` None, ``ca`` unused) or TLS trusting
    etcd's CA ``ca`` and showing ``bundle`` (another CA's certificate, or an empty dir: none)."""
    import ssl

    if not ca.exists():
        raise AssertionError(f"no {ca}")
    with socket.create_connection((ip, port), timeout=5) as s:
        if bundle is None:
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                return f"plaintext answered with {s.recv(200)[:60]!r}"  # a TLS port: 400, or nothing
            except OSError as e:
                return f"refused: {e}"
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False
        if (bundle / "cert.pem").exists():
            ctx.load_cert_chain(str(bundle / "cert.pem"), str(bundle / "key.pem"))
        try:
            with ctx.wrap_socket(s) as t:
                t.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                got = t.recv(200)
                return f"answered: {got[:60]!r}" if got else "refused: closed without an answer"
        except (ssl.SSLError, OSError) as e:
            return f"refused: {e}"


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_up_of_three_hosts_runs_a_three_member_etcd_that_survives_one(env: Env) -> None:
    """Three hosts, two schedulers, no etcd given: up starts one etcd member per host (one raft
    cluster), both schedulers on all three; one member killed: the control plane answers and
    writes, the nodes stay ready; down stops everything."""
    inv = env.inventory("three.yaml", only=3, host={2: {"role": "scheduler"}}, state="state-3")
    admin = inv.resolve().with_suffix(".admin")
    e = _env()
    e["DOCKYARD_CERT_PATH"] = str(admin)  # ~/.dockyard is left alone

    def dy(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, cwd=REPO, timeout=timeout)

    try:
        r = dy("cluster", "up", "-i", str(inv), "--no-install")  # TLS: the default
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
        print(r.stdout)
        for n in (1, 2, 3):
            assert f"host{n}  start etcd" in r.stdout and f"host{n}  etcd certificates" in r.stdout, r.stdout
        member = {n: env.host_dir(n, "state-3") / "etcd-tls" / "member" for n in (1, 2, 3)}
        assert _etcd_members(env.c[3].ip, member[3]) == ["host1", "host2", "host3"]
        assert (member[1] / "key.pem").stat().st_mode & 0o777 == 0o600
        assert not (env.host_dir(3, "state-3") / "etcd-tls" / "client").exists()  # no scheduler there
        # etcd refuses plaintext, TLS without a client certificate, and the cluster CA's admin
        # certificate, on its client port and (peer TLS) its peer port.
        etcd_ca = member[1] / "ca.pem"
        for port in (b.ETCD_CLIENT_PORT, b.ETCD_PEER_PORT):
            assert "refused" in _etcd_refuses(env.c[1].ip, port, env.tmp / "no-cert", etcd_ca)
            assert "refused" in _etcd_refuses(env.c[1].ip, port, admin, etcd_ca)
            assert b"200 OK" not in _etcd_refuses(env.c[1].ip, port, None, etcd_ca).encode()
        st = status(inv)
        assert set(st["host1"]) == set(st["host2"]) == {"etcd", "scheduler", "agent"}, st
        assert set(st["host3"]) == {"etcd", "agent"}, st
        urls = ",".join(f"https://{env.c[n].ip}:2379" for n in (1, 2, 3))
        for n in (1, 2):
            argv = st[f"host{n}"]["scheduler"]["argv"]
            assert argv[argv.index("--etcd") + 1] == urls, argv
        join = ",".join(f"{env.c[n].ip}:2377" for n in (1, 2))

        def ready() -> set[str]:
            out = dy("--scheduler", join, "node", "ls", "--format", "json", timeout=60)
            return {n["name"] for n in json.loads(out.stdout or "[]") if n["status"] == "ready"}

        wait_for(lambda: ready() == {"host1", "host2", "host3"}, 60, "3 nodes ready")
        # The member next to the first scheduler (the first of every --etcd list) dies.
        os.kill(st["host1"]["etcd"]["pid"], signal.SIGKILL)
        time.sleep(8)  # a few of the nodes' 3 s leases
        assert ready() == {"host1", "host2", "host3"}
        for verb in ("drain", "activate"):  # writes, through the two members left
            w = dy("--scheduler", join, "node", verb, "host3", timeout=60)
            assert w.returncode == 0, w.stdout + w.stderr
    finally:
        d = dockyard("cluster", "down", "-i", str(inv))
    assert d.returncode == 0, d.stdout + d.stderr
    assert d.stdout.count("stop etcd:") == 3, d.stdout
    for h in env.c:
        wait_for(functools.partial(env.host_empty, h), 15, f"{h.name}'s processes to end")


async def _check_module(inv: Path) -> dict[int, str]:
    loaded = b.load_inventory(inv)
    sessions, failed = await b._connect_all(loaded, b.QuietReporter(), b.Options())
    assert not failed
    try:
        return {int(name[-1]): (await s.helper("check", {"op": "check"}, 60))["module"]
                for name, s in sessions.items()}
    finally:
        await b._close_all(sessions)


def _up(inv: Path, **kw: Any) -> list[b.StepFailed]:
    return asyncio.run(b.up(b.load_inventory(inv), b.QuietReporter(), b.Options(**{"install": False, **kw})))


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_host_that_does_not_answer(env: Env) -> None:
    closed = env.ports[2] + 1
    inv = env.inventory("dead.yaml", host={2: {"port": closed}})
    r = dockyard("cluster", "up", "-i", str(inv), "--no-install", "--insecure", "--timeout", "5")
    assert r.returncode == 1
    assert f"host2: connect: root@{env.c[2].ip}:{closed}:" in r.stdout, r.stdout
    assert status(env.inventory()) == {"host1": {}, "host2": {}}  # nothing started on host1 either
    # A whole host gone (no route to it, nobody answers ARP): the timeout names it.
    silent = env.inventory("silent.yaml", host={2: {"address": str(env.c.subnet.network_address + 99)}})
    failed = _up(silent, connect_timeout=2)
    assert [(f.host, f.step) for f in failed] == [("host2", "connect")], failed
    assert any(s in failed[0].message for s in ("no answer", "No route", "unreachable")), failed[0].message


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_bad_credentials_and_unknown_host_key(env: Env) -> None:
    (env.tmp / "ssh" / "other_known_hosts").write_text(
        f"[{env.c[1].ip}]:{env.ports[1]} {(env.tmp / 'ssh' / 'host_key.pub').read_text()}")
    inv = env.inventory("creds.yaml", host={2: {"key": "ssh/stranger"}, 1: {"known_hosts": "ssh/other_known_hosts"}})
    failed = _up(inv)
    assert [(f.host, f.step) for f in failed] == [("host2", "connect")], failed
    assert "bad credentials" in failed[0].message and "stranger" in failed[0].message
    bad_kh = env.inventory("hostkey.yaml", host={2: {"known_hosts": "ssh/other_known_hosts"}})
    failed = _up(bad_kh)
    assert [(f.host, f.step) for f in failed] == [("host2", "connect")], failed
    assert "host key not verified" in failed[0].message
    assert status(env.inventory()) == {"host1": {}, "host2": {}}


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_failed_install_step_starts_nothing(env: Env, tmp_path: Path) -> None:
    # A project whose install.sh fails as apt would; the real one is never run by the tests (it
    # would install packages on this machine, which the netns hosts share).
    fake = tmp_path / "fake"
    (fake / "deploy").mkdir(parents=True)
    (fake / "deploy" / "install.sh").write_text("echo 'E: Unable to locate package etcd-server' >&2\nexit 100\n")
    (fake / b.MANIFEST).write_text("deploy/install.sh\n")
    inv = b.load_inventory(env.inventory("install.yaml", install_dir="fake-project"))
    failed = asyncio.run(b.up(inv, b.QuietReporter(), b.Options(install=True), b.make_bundle(fake)))
    assert sorted((f.host, f.step) for f in failed) == [("host1", "install"), ("host2", "install")], failed
    assert "exited with 100" in failed[0].message and "Unable to locate package" in failed[0].message
    assert status(env.inventory()) == {"host1": {}, "host2": {}}
    # --no-install on a host without dockyard: the check says so.
    nopy = env.inventory("nopy.yaml", host={2: {"python": "/nonexistent/bin/python"}})
    failed = _up(nopy)
    assert [(f.host, f.step) for f in failed] == [("host2", "check")], failed
    assert "run without --no-install" in failed[0].message
    assert status(env.inventory()) == {"host1": {}, "host2": {}}


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.multinode
def test_agent_that_cannot_start_rolls_back(env: Env) -> None:
    inv = env.inventory("badagent.yaml", agent_extra={2: ["--no-such-flag"]})
    assert status(inv) == {"host1": {}, "host2": {}}
    r = dockyard("cluster", "up", "-i", str(inv), "--no-install", "--insecure", "--ready-timeout", "20")
    assert r.returncode == 1, r.stdout
    assert "host2: start agent: exited with code" in r.stdout, r.stdout
    # host1's scheduler and agent were started by this run: stopped again.
    assert "host1  stop agent: stopped" in r.stdout and "host1  stop scheduler: stopped" in r.stdout, r.stdout
    assert status(inv) == {"host1": {}, "host2": {}}
    for h in env.c.hosts[:2]:
        wait_for(functools.partial(env.host_empty, h), 10, f"{h.name}'s processes to end")


# ================================================================================================
# Real hosts (the VMs of vagrant/, or any): only when DOCKYARD_TEST_INVENTORY names their inventory
# ================================================================================================

def _ready_nodes(join: str) -> set[str]:
    r = dockyard("--scheduler", join, "node", "ls", "--format", "json", timeout=60)
    return {n["name"] for n in json.loads(r.stdout or "[]") if n["status"] == "ready"} if r.returncode == 0 else set()


@pytest.mark.multinode
@pytest.mark.slow
def test_external_hosts() -> None:
    """DOCKYARD_TEST_INVENTORY=vagrant/hosts.yaml pytest -m multinode tests/cluster/test_bootstrap.py -k external
    (DOCKYARD_TEST_INSTALL=0 adds --no-install). Leaves the cluster up, as it found it or newly made."""
    path = os.environ.get("DOCKYARD_TEST_INVENTORY", "")
    if not path:
        pytest.skip("set DOCKYARD_TEST_INVENTORY to an inventory of real hosts (vagrant/hosts.yaml)")
    inv = b.load_inventory(path)
    flags = [] if os.environ.get("DOCKYARD_TEST_INSTALL", "1") != "0" else ["--no-install"]
    names = {h.name for h in inv.hosts}
    r = dockyard("cluster", "up", "-i", path, *flags, "--ready-timeout", "600", timeout=3600)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    wait_for(lambda: _ready_nodes(inv.join) == names, 120, "every node ready")
    st = status(Path(path))
    assert all(p["running"] for procs in st.values() for p in procs.values()), st
    assert sum(len(procs) for procs in st.values()) == len(names) + len(inv.schedulers), st
    again = dockyard("cluster", "up", "-i", path, "--no-install", timeout=600)
    assert again.returncode == 0 and again.stdout.count("already running") == len(names) + len(inv.schedulers)
    assert dockyard("cluster", "down", "-i", path, timeout=600).returncode == 0
    assert all(procs == {} for procs in status(Path(path)).values())
    back = dockyard("cluster", "up", "-i", path, "--no-install", "--ready-timeout", "600", timeout=1800)
    assert back.returncode == 0, f"{back.stdout}\n{back.stderr}"
    wait_for(lambda: _ready_nodes(inv.join) == names, 120, "every node ready again")


# ================================================================================================
# vagrant/
# ================================================================================================

