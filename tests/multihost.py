"""Hosts made of network namespaces, each with its own agent: the multi-node test harness.

    from tests.multihost import Cluster, http_get
    from tests.multihost import make_cluster_fixture, multihost_session_check_fixture  # noqa: F401

    def test_x(make_cluster):
        c = make_cluster(3)                     # 3 hosts up, busybox imported on each
        c[2].cli("run", "-d", "-p", "8080:80", "busybox", "httpd", "-f", "-p", "80")
        http_get(f"http://{c[2].ip}:8080/")     # from the root namespace, as a scheduler would
        c[2].partition(); c[2].heal(); c[3].kill(); c[3].revive()

Topology of one Cluster (tag = 4 random hex digits, so clusters side by side never collide):

    root netns:  bridge dyh<tag>br  10.213.X.1/24      (X: a /24 of 10.213.0.0/16 not in use here)
                   |-- veth dyh<tag>v1 ===== eth0 10.213.X.11/24 in netns dyh<tag>1 (host1)
                   |-- veth dyh<tag>v2 ===== eth0 10.213.X.12/24 in netns dyh<tag>2 (host2) ...
    host N:      lo up, default route via 10.213.X.1, agent listening on 10.213.X.(10+N):7070
                 (gRPC) and :9323 (metrics), container bridge dyh<tag>c<N> 172.27.N.0/24,
                 cgroup parent <this process's cgroup>/dyh<tag>h<N>, state under <base>/host<N>.

Hosts share one L2 segment, so host <-> host and root <-> host traffic is switched, never routed
by the root namespace: nothing is forwarded or NATed towards any other interface, and the root
namespace's sysctls are left alone. Settings made, all inside what the harness creates:
- net.ipv4.ip_forward=1 in each host's own netns (a per-netns sysctl): a published port is a DNAT
  in PREROUTING, then routed eth0 -> container bridge, as on any real host (agent README).
- Only when the root namespace's FORWARD policy is not ACCEPT (a host with docker): one rule
  `-I FORWARD -i dyh<tag>br -o dyh<tag>br -j ACCEPT` (comment dyh<tag>), because bridged frames go
  through iptables here (bridge-nf-call-iptables=1, and a bridge's own nf_call_iptables=0 cannot
  override it). It only lets our hosts talk to each other; destroy() removes it.

Agents enter their netns with `nsenter --net=/run/netns/NAME`, not `ip netns exec`: the latter
also unshares the mount namespace and remounts /sys, which hides /sys/fs/cgroup from the agent
and would keep its overlay mounts out of sight of the test (and of cleanup).

Failures: kill() is a power cut (agent, zygote, shims, containers killed; mounts and cgroups
gone; link down; the disk under <base>/host<N> stays); revive() boots it again (fresh netns,
agent on the same root); partition()/heal() take its link down/up while everything keeps running;
restart_agent() restarts only the agent. destroy() removes everything, even after failures, and
leftovers() says what is still there (tests assert it is empty). Each cluster has a record
/run/dockyard-multihost/<tag>.json (owner pid, subnet, cgroup base): sweep_stale(), run by the
fixtures, destroys the clusters of sessions that were killed before they could clean up.

Costs here (2 cores): 3 hosts up with busybox imported in 5-9 s (agents start side by side);
destroy of 2 hosts with containers about 1.5 s; tests/cluster/test_multihost.py 28-45 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from common import transport
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg
from tests.agent_harness import CLI, REPO, AgentProcess, _env, _own_cgroup, import_busybox

NET_POOL = ipaddress.IPv4Network("10.213.0.0/16")  # one /24 per cluster, private, never routed out
CONTAINER_SUBNET = "172.27.{n}.0/24"                  # per host, inside its netns
AGENT_PORT = 7070                                     # each host has its own address: same port everywhere
METRICS_PORT = 9323
MAX_HOSTS = 200
_LOCK = Path("/run/dockyard-multihost.lock")          # serialises subnet picking between sessions
RECORDS = Path("/run/dockyard-multihost")             # <tag>.json per live cluster: who owns it, what it made
_TAGS: set[str] = set()                               # every cluster tag this session made


class HarnessError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True, input: str | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}\n{input or ''}")
    return r


def _ip_batch(commands: list[str], netns: str | None = None, check: bool = True) -> None:
    """Several `ip` commands in one process (`ip -batch`), in the root namespace or in netns."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    if check:
        _run(*argv, input="\n".join(commands) + "\n")
    else:  # best effort: -force goes on after a failing line
        _run(*argv[:-2], "-force", "-batch", "-", check=False, input="\n".join(commands) + "\n")


def nameservers() -> list[str]:
    """The resolv.conf servers. Hosts get an `unreachable` route to each: a lookup there fails at
    once instead of after 10 s of silent drops (http.server's bind does a reverse lookup), and no
    query heads off towards an address that is not ours."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                out.append(str(ipaddress.ip_network(parts[1].split("%")[0])))
    return out


def http_get(url: str, timeout: float = 3) -> str:
    """GET without any proxy from the environment (the network rule: only our own hosts)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def wait_for(pred: Callable[[], object], timeout: float = 10, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- processes ----------------------------------------------------------------------------------

def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (None if gone or a zombie): tells a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    t = start_time(pid)
    return t is not None and (started is None or t == started)


def pids_in_netns(inode: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{d}/ns/net").st_ino == inode:
                    out.add(int(d))
    return out


def cgroup_dirs(parent: str) -> list[Path]:
    """parent's directory in every mounted cgroup hierarchy (v1 controllers, and v2 if mounted)."""
    root = Path("/sys/fs/cgroup")
    dirs = [root / ctl / parent for ctl in os.listdir(root)] + [root / parent]
    return [d for d in dirs if d.is_dir()]


def _subdirs(d: Path) -> list[Path]:
    """Every directory below d, deepest first. os.walk, not rglob: a cgroup (a zygote's spare) may
    vanish while we walk, and os.walk skips what it cannot list instead of raising."""
    found = [Path(top) / n for top, dirs, _ in os.walk(d) for n in dirs]
    return sorted(found, key=lambda p: len(str(p)), reverse=True)


def pids_in_cgroups(parent: str) -> set[int]:
    out: set[int] = set()
    for d in cgroup_dirs(parent):
        for cg in [d, *_subdirs(d)]:
            with contextlib.suppress(OSError, ValueError):
                out.update(int(x) for x in (cg / "cgroup.procs").read_text().split())
    return out


def remove_cgroup_tree(parent: str, timeout: float = 3.0) -> None:
    # A cgroup refuses rmdir (EBUSY) until its last killed task has fully exited, which can lag the
    # kill by a moment on a busy machine: go over the tree again until it is gone or time is up.
    deadline = time.monotonic() + timeout
    while True:
        for d in cgroup_dirs(parent):
            for sub in _subdirs(d):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()
        if not any(d.exists() for d in cgroup_dirs(parent)) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/mounts") as f:
        points = [ln.split()[1].replace("\\040", " ") for ln in f]
    return [m for m in points if m == prefix[:-1] or m.startswith(prefix)]


def unmount_under(path: Path) -> None:
    for m in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


# --- one host -----------------------------------------------------------------------------------

class Host(AgentProcess):
    """One host: netns dyh<tag><n>, its veth, and an agent inside it. An AgentProcess, so cli(),
    stub (over the unix socket), inspect(), run_detached(), wait_for() work as for a local agent."""

    def __init__(self, cluster: Cluster, n: int) -> None:
        super().__init__(cluster.base / f"host{n}")
        tag = cluster.tag
        self.cluster = cluster
        self.n = n
        self.name = f"host{n}"
        self.netns = f"dyh{tag}{n}"
        self.veth = f"dyh{tag}v{n}"                       # root side, on the cluster bridge
        self.ip = str(cluster.subnet.network_address + 10 + n)
        self.address = f"{self.ip}:{AGENT_PORT}"          # the agent's gRPC over TCP
        self.bridge = f"dyh{tag}c{n}"                     # the agent's container bridge, in the netns
        self.subnet = CONTAINER_SUBNET.format(n=n)
        self.cgroup_parent = f"{cluster.cgroup_base}/dyh{tag}h{n}"
        self.metrics_port = METRICS_PORT
        self.dead = False
        self._tcp: grpc.Channel | None = None
        self._netns_inode = 0

    # --- the network namespace

    def plumb(self) -> None:
        """netns, veth pair (eth0 inside), address, lo, default route via the bridge, ip_forward."""
        c = self.cluster
        _run("ip", "netns", "add", self.netns)
        self._netns_inode = os.stat(f"/run/netns/{self.netns}").st_ino
        # eth0's MAC follows from its address, as a NIC's survives a reboot: after revive() the
        # neighbours' ARP entries are still right (a new MAC would leave them stale for seconds).
        mac = "02:44:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(self.ip).packed)
        _ip_batch([f"link add {self.veth} type veth peer name eth0 address {mac} netns {self.netns}",
                   f"link set {self.veth} master {c.bridge} up"])
        _ip_batch(["link set lo up",
                   f"addr add {self.ip}/{c.subnet.prefixlen} dev eth0",
                   "link set eth0 up",
                   f"route add default via {c.gateway}",
                   *(f"route add unreachable {ns}" for ns in nameservers())], netns=self.netns)
        self.sysctl("net.ipv4.ip_forward", "1")

    def sysctl(self, key: str, value: str) -> None:
        """A sysctl of this host's own netns (only net.* keys are per namespace)."""
        self.run("sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}", check=True)

    def run(self, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command in this host's netns (only the netns: mounts and cgroups are the machine's)."""
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise HarnessError(f"{self.name}: {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def http_get(self, url: str, timeout: float = 3) -> str:
        """GET from inside this host's netns (busybox wget segfaults on this machine's busybox)."""
        code = ("import sys, urllib.request as u; o = u.build_opener(u.ProxyHandler({})); "
                "sys.stdout.write(o.open(sys.argv[1], timeout=float(sys.argv[2])).read().decode())")
        r = self.run(sys.executable, "-c", code, url, str(timeout), timeout=timeout + 30)
        if r.returncode != 0:
            raise OSError(f"{self.name}: GET {url}: {r.stderr.strip().splitlines()[-1:]}")
        return r.stdout

    # --- the agent

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{self.metrics_port}/metrics"

    def agent_argv(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--",
                *CLI, "agent", "--root", str(self.root), "--socket", str(self.socket),
                "--bridge", self.bridge, "--subnet", self.subnet, "--cgroup-parent", self.cgroup_parent,
                "--listen", self.address, "--name", self.name, "--metrics-addr", f"{self.ip}:{self.metrics_port}",
                "--docker-socket", str(self.docker_socket), "--insecure"]  # join(h, ..., token) drops it

    def spawn(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._channel = self._tcp = None
        with open(self.log, "ab") as log:  # nsenter execs: proc.pid is the agent's pid
            self.proc = subprocess.Popen(self.agent_argv(), stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                         cwd=REPO, start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name}: agent exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            if self.socket.exists():
                with contextlib.suppress(grpc.RpcError):
                    self.stub.Info(pb.Empty(), timeout=2)
                    return
            time.sleep(0.05)
        raise HarnessError(f"{self.name}: agent did not come up:\n{self.log.read_text()[-3000:]}")

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    @property
    def tcp_stub(self) -> pbg.AgentStub:
        """The agent over TCP at host.address, as the scheduler and other agents reach it."""
        if self._tcp is None:
            self._tcp = transport.dial_blocking(self.address, transport.CLI, transport.Role.AGENT)
        return pbg.AgentStub(self._tcp)  # type: ignore[no-untyped-call]

    def _close_channels(self) -> None:
        for ch in (self._channel, self._tcp):
            if ch is not None:
                ch.close()
        self._channel = self._tcp = None

    def agent_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart_agent(self, hard: bool = False) -> None:
        """Only the agent: SIGTERM (or SIGKILL with hard=True) and start again on the same root;
        the containers keep running under their shims and are adopted."""
        if self.agent_alive():
            if hard:
                self.kill9()
            else:
                self.stop()
        self._close_channels()
        self.start()

    # --- failures

    def partition(self) -> None:
        """Cut the host's link: nobody reaches it, it reaches nobody; everything on it keeps running."""
        _run("ip", "link", "set", self.veth, "down")

    def heal(self) -> None:
        _run("ip", "link", "set", self.veth, "up")

    def processes(self) -> set[int]:
        """Every live process of this host: in its netns (agent, zygote, shims, helpers), in its
        cgroups (containers and their execs), and the shims and inits its state files name."""
        with contextlib.suppress(OSError):
            self._netns_inode = os.stat(f"/run/netns/{self.netns}").st_ino
        pids = pids_in_netns(self._netns_inode) if self._netns_inode else set()
        pids |= pids_in_cgroups(self.cgroup_parent)
        for f in (self.root / "containers").glob("*/init.pid"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads(f.read_text())
                for pid, started in ((info["pid"], info.get("start_time")),
                                     (info["shim_pid"], info.get("shim_start_time"))):
                    if alive(int(pid), started):
                        pids.add(int(pid))
        if self.agent_alive():
            assert self.proc is not None
            pids.add(self.proc.pid)
        return {p for p in pids if p not in (1, os.getpid()) and alive(p)}

    def _kill_all(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        while pids := self.processes():
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name}: processes survive SIGKILL: {sorted(pids)}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def kill(self) -> None:
        """The host dies, as in a power cut: every process of it killed, its mounts and cgroups
        gone, its link down. Its disk (the agent's root) stays, for revive()."""
        self._kill_all()
        self._close_channels()
        with contextlib.suppress(HarnessError):
            _run("ip", "link", "set", self.veth, "down")
        with contextlib.suppress(HarnessError):
            _run("ip", "-n", self.netns, "link", "set", "eth0", "down")
        unmount_under(self.root)
        remove_cgroup_tree(self.cgroup_parent)
        self.dead = True

    def revive(self) -> None:
        """A killed host boots again: a fresh netns and link (no bridge, no iptables, as after a
        reboot), and its agent on the same root, which finds its containers dead."""
        if not self.dead:
            raise HarnessError(f"{self.name} is not dead")
        self._remove_netns()
        self.plumb()
        self.start()
        self.dead = False

    # --- cleanup

    def _remove_netns(self) -> None:
        # Deleting the netns takes eth0 and with it the veth's root side; delete that too in case
        # the netns was gone already.
        _run("ip", "netns", "del", self.netns, check=False)
        _run("ip", "link", "del", self.veth, check=False)

    def destroy(self) -> None:
        """Everything of this host, even half-made or dead: containers (through the agent while it
        answers), then any process left, mounts, cgroups, the netns and its veth, the state."""
        if self.agent_alive():
            self.remove_all_containers()
            self.stop()
        self._kill_all()
        self._close_channels()
        unmount_under(self.root)
        remove_cgroup_tree(self.cgroup_parent)
        self._remove_netns()
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        out = [f"process {p}" for p in self.processes()]
        out += [f"mount {m}" for m in mounts_under(self.root)]
        out += [f"cgroup {d}" for d in cgroup_dirs(self.cgroup_parent)]
        if Path(f"/run/netns/{self.netns}").exists():
            out.append(f"netns {self.netns}")
        if Path(f"/sys/class/net/{self.veth}").exists():
            out.append(f"link {self.veth}")
        return out


# --- the cluster --------------------------------------------------------------------------------

class Cluster:
    """n hosts on one private bridge. Hosts are numbered from 1: cluster[1] .. cluster[n]."""

    def __init__(self, n: int, base: Path, busybox_tar: Path | None = None, tag: str | None = None) -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"{n} hosts: between 1 and {MAX_HOSTS}")
        self.tag = tag or _claim_tag()
        _TAGS.add(self.tag)
        self.n = n
        self.cgroup_base = _own_cgroup().strip("/")  # hosts' cgroup parents nest under ours
        self.base = Path(base) / f"cluster-{self.tag}"
        self.bridge = f"dyh{self.tag}br"
        self.subnet = ipaddress.IPv4Network("10.213.0.0/24")  # the real one is picked in start()
        self.busybox_tar = busybox_tar
        self.hosts: list[Host] = []
        self._forward_rule: list[str] | None = None
        self._pids: dict[int, int | None] = {}  # every process seen, for leftovers() after destroy

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge: etcd, a scheduler and the test live here."""
        return str(self.subnet.network_address + 1)

    def __getitem__(self, n: int) -> Host:
        if not 1 <= n <= len(self.hosts):
            raise IndexError(f"host{n}: this cluster has host1..host{len(self.hosts)}")
        return self.hosts[n - 1]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def start(self) -> Cluster:
        """Bridge, hosts, agents (started side by side), busybox imported into each."""
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            self._make_bridge()
            self.hosts = [Host(self, i) for i in range(1, self.n + 1)]
            for h in self.hosts:
                h.plumb()
            for h in self.hosts:
                h.spawn()
            for h in self.hosts:
                h.wait_ready()
            if self.busybox_tar is not None:
                tar = self.busybox_tar
                with ThreadPoolExecutor(len(self.hosts)) as pool:
                    list(pool.map(lambda h: import_busybox(h, tar), self.hosts))
        except BaseException:
            self.destroy()
            raise
        return self

    def _make_bridge(self) -> None:
        _LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions must not pick the same /24
            used = []
            for ln in _run("ip", "-o", "-4", "addr", "show").stdout.splitlines():
                with contextlib.suppress(ValueError, IndexError):
                    used.append(ipaddress.IPv4Interface(ln.split()[3]).network)
            free = [s for s in NET_POOL.subnets(new_prefix=24)
                    if s.network_address.packed[2] not in (0, 255) and not any(s.overlaps(u) for u in used)]
            if not free:
                raise HarnessError(f"no free /24 left in {NET_POOL}")
            self.subnet = free[secrets.randbelow(len(free))]
            self._save_record()
            _ip_batch([f"link add {self.bridge} type bridge forward_delay 0",
                       f"addr add {self.gateway}/{self.subnet.prefixlen} dev {self.bridge}",
                       f"link set {self.bridge} up"])
        policy = _run("iptables", "-w", "-S", "FORWARD").stdout.splitlines()[:1]
        if policy != ["-P FORWARD ACCEPT"]:
            self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge,
                                  "-m", "comment", "--comment", f"dyh{self.tag}", "-j", "ACCEPT"]
            self._save_record()
            _run("iptables", "-w", "-I", *self._forward_rule)

    # --- the record that lets a later session clean up after a killed one

    def _save_record(self) -> None:
        me = os.getpid()
        rec = {"owner": me, "owner_start": start_time(me), "n": self.n, "base": str(self.base),
               "cgroup_base": self.cgroup_base, "subnet": str(self.subnet), "forward_rule": self._forward_rule}
        tmp = RECORDS / f".{self.tag}.tmp"
        tmp.write_text(json.dumps(rec))
        tmp.rename(RECORDS / f"{self.tag}.json")

    @classmethod
    def from_record(cls, tag: str) -> Cluster:
        rec = json.loads((RECORDS / f"{tag}.json").read_text())
        c = cls(int(rec["n"]), Path(rec["base"]).parent, tag=tag)
        c.base = Path(rec["base"])
        c.cgroup_base = str(rec["cgroup_base"])
        c.subnet = ipaddress.IPv4Network(rec["subnet"])
        c._forward_rule = rec["forward_rule"]
        c.hosts = [Host(c, i) for i in range(1, c.n + 1)]
        return c

    def processes(self) -> set[int]:
        return set().union(*(h.processes() for h in self.hosts)) if self.hosts else set()

    def destroy(self) -> None:
        """Removes everything the cluster made; safe to call twice and after any failure."""
        errors = []
        for pid in self.processes():
            self._pids[pid] = start_time(pid)
        for h in self.hosts:
            try:
                h.destroy()
            except Exception as e:  # go on: the other hosts must go too
                errors.append(f"{h.name}: {e}")
        _run("ip", "link", "del", self.bridge, check=False)
        if self._forward_rule is not None:
            _run("iptables", "-w", "-D", *self._forward_rule, check=False)
            self._forward_rule = None
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise HarnessError("destroy: " + "; ".join(errors))
        with contextlib.suppress(FileNotFoundError):
            (RECORDS / f"{self.tag}.json").unlink()

    def leftovers(self) -> list[str]:
        """What of this cluster is still on the machine (empty after destroy())."""
        out = [x for h in self.hosts for x in h.leftovers()]
        out += [f"process {p}" for p, t in self._pids.items() if alive(p, t)]
        out += [f"{kind} {name}" for kind, name in tagged_leftovers(self.tag)]
        if self.base.exists():
            out.append(f"state {self.base}")
        return sorted(set(out))


def _claim_tag() -> str:
    """4 hex digits no other cluster on this machine holds (its record is created exclusively)."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    while True:
        tag = secrets.token_hex(2)
        try:
            fd = os.open(RECORDS / f"{tag}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        me = os.getpid()
        os.write(fd, json.dumps({"owner": me, "owner_start": start_time(me)}).encode())
        os.close(fd)
        return tag


def sweep_stale() -> list[str]:
    """Destroys the clusters whose owning process is gone (a test run killed by a timeout or
    SIGKILL); returns their tags. Clusters of live sessions are left alone."""
    swept = []
    for f in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if alive(int(rec.get("owner", 0)), rec.get("owner_start")):
            continue
        tag = f.stem
        if "n" in rec:
            with contextlib.suppress(HarnessError):
                Cluster.from_record(tag).destroy()
        for kind, name in tagged_leftovers(tag):  # a cluster that died before its first record
            if kind == "netns":
                _run("ip", "netns", "del", name, check=False)
            elif kind == "link":
                _run("ip", "link", "del", name, check=False)
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
        swept.append(tag)
    return swept


def tagged_leftovers(tag: str = "") -> list[tuple[str, str]]:
    """netns, links, cgroups and FORWARD rules named dyh<tag>* on this machine."""
    prefix = f"dyh{tag}"
    out = [("netns", n) for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
           if n.startswith(prefix)]
    out += [("link", n) for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    own = _own_cgroup().strip("/")
    for d in cgroup_dirs(own):
        out += [("cgroup", str(p)) for p in d.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    rules = _run("iptables", "-w", "-S", "FORWARD", check=False).stdout
    out += [("iptables", ln) for ln in rules.splitlines() if f'"{prefix}' in ln or f" {prefix}" in ln]
    return out


# --- fixtures -----------------------------------------------------------------------------------

def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("netns hosts need root")
    for tool in ("ip", "nsenter", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="session", name="multihost_session_check")
def multihost_session_check_fixture() -> Iterator[None]:
    """At the end of the session: no netns, link, cgroup or rule of any cluster it made."""
    yield
    left = [f"{kind} {name}" for tag in sorted(_TAGS) for kind, name in tagged_leftovers(tag)]
    assert not left, f"the multi-host tests left these behind: {left}"


@pytest.fixture(name="make_cluster")
def make_cluster_fixture(tmp_path: Path, busybox_tar_path: Path,
                         multihost_session_check: None) -> Iterator[Callable[[int], Cluster]]:
    """make_cluster(n) -> a started Cluster with busybox on every host; destroyed after the test."""
    _needs_root()
    sweep_stale()
    made: list[Cluster] = []

    def make(n: int) -> Cluster:
        c = Cluster(n, tmp_path, busybox_tar=busybox_tar_path)
        made.append(c)
        return c.start()

    yield make
    errors = []
    for c in made:
        try:
            c.destroy()
        except HarnessError as e:
            errors.append(str(e))
    assert not errors, errors


@contextlib.contextmanager
def cluster(n: int, base: Path, busybox_tar: Path | None = None) -> Iterator[Cluster]:
    """For wider-scoped fixtures: `with cluster(3, tmp_path_factory.mktemp("c"), tar) as c: yield c`."""
    _needs_root()
    sweep_stale()
    with Cluster(n, base, busybox_tar) as c:
        yield c


def join(h: Host, addresses: str, token: str = "") -> None:
    """Restart the agent of host h joined to the schedulers at addresses (comma-separated); with a
    join token, over mutual TLS (a --tls scheduler)."""
    base = Host.agent_argv

    def argv(h: Host = h) -> list[str]:
        plain = base(h)
        return [*(a for a in plain if a != "--insecure" or not token), "--join", addresses,
                *(["--token", token] if token else [])]

    h.agent_argv = argv  # type: ignore[method-assign]
    h.restart_agent()
