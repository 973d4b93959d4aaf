"""agent/runtime/network: docker -p parsing, IPAM, and real bridges, veths and iptables rules.

Root tests build "containers" as processes in fresh network namespaces (`unshare --net sleep`),
on a bridge named dyt<random> with a 172.30.x.0/24 subnet, and send traffic only to loopback,
to the bridge's own address and to those namespaces. Every fixture removes what it made.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime.network import (
    BridgeNetwork,
    Endpoint,
    NetworkError,
    PortInUse,
    PortMapping,
    parse_publish,
)

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def root(f: Callable[..., None]) -> Callable[..., None]:
    f = pytest.mark.root(f)
    f = pytest.mark.skipif(not IS_ROOT, reason="needs root")(f)
    return pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox")(f)


# ---------------------------------------------------------------- parse_publish


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("80", [PortMapping("", 0, 80)]),
        ("8080:80", [PortMapping("", 8080, 80)]),
        ("8080:80/udp", [PortMapping("", 8080, 80, "udp")]),
        ("8080:80/TCP", [PortMapping("", 8080, 80, "tcp")]),
        ("127.0.0.1:8080:80", [PortMapping("127.0.0.1", 8080, 80)]),
        ("127.0.0.1:8080:80/udp", [PortMapping("127.0.0.1", 8080, 80, "udp")]),
        ("127.0.0.1::80", [PortMapping("127.0.0.1", 0, 80)]),
        ("53/udp", [PortMapping("", 0, 53, "udp")]),
        (
            "8000-8002:80-82",
            [PortMapping("", 8000, 80), PortMapping("", 8001, 81), PortMapping("", 8002, 82)],
        ),
        ("80-81", [PortMapping("", 0, 80), PortMapping("", 0, 81)]),
        (
            "10.0.0.1:7000-7001:7000-7001/udp",
            [PortMapping("10.0.0.1", 7000, 7000, "udp"), PortMapping("10.0.0.1", 7001, 7001, "udp")],
        ),
        ("65535:1", [PortMapping("", 65535, 1)]),
    ],
)
def test_parse_publish(spec: str, want: list[PortMapping]) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("99999:80", "-p 99999:80: host port 99999 is out of range 1-65535"),
        ("8080:0", "-p 8080:0: container port 0 is out of range 1-65535"),
        ("8080:70000", "container port 70000 is out of range"),
        ("", "empty port specification"),
        ("abc:80", "host port 'abc' is not a number"),
        ("8080:", "empty container port"),
        ("8080:80/icmp", "protocol 'icmp' is not one of tcp, udp"),
        ("300.1.1.1:8080:80", "host address '300.1.1.1' is not an IPv4 address"),
        ("[::1]:8080:80", "IPv6 host addresses are not supported"),
        ("1:2:3:4", "too many ':'"),
        (":8080:80", "empty host address"),
        ("8000-8001:80", "differ in size"),
        ("8002-8000:80-82", "host port range 8002-8000 ends before it starts"),
        ("80-:80", "host port '' is not a number"),
        ("-1:80", "host port '' is not a number"),
    ],
)
def test_parse_publish_errors(spec: str, message: str) -> None:
    with pytest.raises(NetworkError) as err:
        parse_publish(spec)
    assert message in str(err.value)
    assert str(err.value).startswith(f"-p {spec.strip()}:")


def test_endpoint_round_trips_through_json() -> None:
    ep = Endpoint(
        "c1",
        "172.30.1.2",
        24,
        "172.30.1.1",
        "02:42:ac:1e:01:02",
        "dyabc",
        "dyt1",
        (PortMapping("", 8080, 80), PortMapping("127.0.0.1", 53, 53, "udp")),
    )
    assert Endpoint.from_dict(json.loads(json.dumps(ep.to_dict()))) == ep


# ---------------------------------------------------------------- IPAM (no root needed)


def test_ipam_allocates_unique_addresses_and_frees_them(tmp_path: Path) -> None:
    net = BridgeNetwork(tmp_path, "dytipam", "172.30.250.0/29")  # 5 container addresses
    eps = [net.allocate(f"c{i}", []) for i in range(5)]
    assert [e.ip for e in eps] == [f"172.30.250.{i}" for i in range(2, 7)]
    assert all(e.gateway == "172.30.250.1" and e.prefixlen == 29 for e in eps)
    assert len({e.mac for e in eps}) == 5 and len({e.host_ifname for e in eps}) == 5
    assert all(len(e.host_ifname) <= 15 for e in eps)
    with pytest.raises(NetworkError, match="no free address"):
        net.allocate("c5", [])
    with pytest.raises(NetworkError, match="already has an address"):
        net.allocate("c0", [])
    net.release("c2")
    net.release("c2")  # idempotent
    assert net.allocate("c9", []).ip == "172.30.250.4"
    # adoption after a restart: a fresh object reads the same endpoints
    again = BridgeNetwork(tmp_path, "dytipam", "172.30.250.0/29")
    assert sorted(e.container_id for e in again.endpoints()) == ["c0", "c1", "c3", "c4", "c9"]
    assert {e.container_id: e for e in again.endpoints()}["c3"] == eps[3]
    with pytest.raises(NetworkError, match="was made with subnet"):
        BridgeNetwork(tmp_path, "dytipam", "172.30.251.0/24").allocate("x", [])


def test_ipam_round_robin_does_not_reuse_at_once(tmp_path: Path) -> None:
    net = BridgeNetwork(tmp_path, "dytrr", "172.30.249.0/24")
    a = net.allocate("a", [])
    net.release("a")
    assert net.allocate("b", []).ip != a.ip


def _allocate_many(state_dir: str, prefix: str, n: int, out: multiprocessing.Queue[list[str]]) -> None:
    net = BridgeNetwork(Path(state_dir), "dytconc", "172.30.248.0/24")
    out.put([net.allocate(f"{prefix}{i}", []).ip for i in range(n)])


@pytest.mark.slow
def test_ipam_is_shared_safely_between_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_allocate_many, args=(str(tmp_path), p, 30, q)) for p in "abc"]
    for p in procs:
        p.start()
    ips = [ip for _ in procs for ip in q.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert len(ips) == 90 and len(set(ips)) == 90


@root
def test_invalid_names_and_subnets(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="bridge name"):
        BridgeNetwork(tmp_path, "a-name-longer-than-15")
    with pytest.raises(NetworkError, match="subnet"):
        BridgeNetwork(tmp_path, "dytx", "172.30.1.1/24")
    with pytest.raises(NetworkError, match="too small"):
        BridgeNetwork(tmp_path, "dytx", "172.30.1.0/31")
    with pytest.raises(NetworkError, match="container id"):
        BridgeNetwork(tmp_path, "dytx", "172.30.1.0/24").allocate("../etc", [])
    with pytest.raises(NetworkError, match="host port 70000 is out of range"):
        BridgeNetwork(tmp_path, "dytx", "172.30.1.0/24").allocate("c", [PortMapping("", 70000, 80)])


# ---------------------------------------------------------------- real bridges (root)


def _run(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def _used_subnets() -> str:
    return _run("ip", "-4", "-o", "addr", "show")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[BridgeNetwork]:
    made = _new_network(tmp_path / "net")
    try:
        yield made
    finally:
        made.destroy()


def _new_network(state_dir: Path) -> BridgeNetwork:
    for _ in range(20):
        x = secrets.randbelow(240) + 8
        if f"172.30.{x}." in _used_subnets():
            continue
        n = BridgeNetwork(state_dir, "dyt" + secrets.token_hex(4), f"172.30.{x}.0/24")
        try:
            t = time.perf_counter()
            n.ensure()
            _timing("ensure (new bridge)", time.perf_counter() - t)
        except NetworkError as e:
            n.destroy()
            if "overlaps" in str(e):
                continue
            raise
        return n
    raise RuntimeError("no free 172.30.x.0/24 subnet")


class Container:
    """A process alone in a fresh network namespace: stands in for a container's init."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
        self.pid = self.proc.pid
        host = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{self.pid}/ns/net").st_ino == host:  # unshare not done yet
            if time.monotonic() > deadline:
                raise RuntimeError("unshare --net did not happen")
            time.sleep(0.002)
        self.children: list[subprocess.Popen[bytes]] = []

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *args]

    def run(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )

    def start(self, *args: str, cwd: Path | None = None) -> None:
        self.children.append(subprocess.Popen(self.argv(*args), cwd=cwd))

    def configure(self, ep: Endpoint) -> float:
        """Runs configure_inside in the namespace, as a container init does; returns the seconds
        configure_inside took."""
        code = (
            "import json, sys, time\n"
            "from agent.runtime.network import Endpoint, configure_inside\n"
            "ep = Endpoint.from_dict(json.loads(sys.argv[1]))\n"
            "t = time.perf_counter(); configure_inside(ep); print(time.perf_counter() - t)\n"
        )
        r = self.run(sys.executable, "-c", code, json.dumps(ep.to_dict()))
        assert r.returncode == 0, r.stderr
        return float(r.stdout)

    def stop(self) -> None:
        for p in [*self.children, self.proc]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture
def containers() -> Iterator[Callable[[], Container]]:
    made: list[Container] = []

    def make() -> Container:
        c = Container()
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


def _serve(c: Container, directory: Path, port: int, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_text(body)
    c.start(BUSYBOX, "httpd", "-f", "-p", str(port), "-h", str(directory))


def _get(url: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _timing(name: str, seconds: float) -> None:
    print(f"\nTIMING {name}: {seconds * 1000:.1f} ms")


def _nat_rules(bridge: str = "") -> str:
    """The nat table, or only its lines about one bridge (tests may run side by side)."""
    return _rules("nat", bridge)


def _filter_rules(bridge: str = "") -> str:
    return _rules("filter", bridge)


def _rules(table: str, bridge: str) -> str:
    out = _run("iptables", "-w", "-t", table, "-S")
    return "\n".join(line for line in out.splitlines() if bridge in line) if bridge else out


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


@root
def test_ensure_is_idempotent_and_fast(net: BridgeNetwork) -> None:
    before_nat, before_filter = _nat_rules(net.name), _filter_rules(net.name)
    t = time.perf_counter()
    net.ensure()
    _timing("ensure (already there)", time.perf_counter() - t)
    assert _nat_rules(net.name) == before_nat and _filter_rules(net.name) == before_filter
    assert _run("cat", f"/proc/sys/net/ipv4/conf/{net.name}/route_localnet").strip() == "1"
    addr = _run("ip", "-4", "-o", "addr", "show", "dev", net.name)
    assert f"{net.gateway}/24" in addr
    assert before_nat.count(f"dy-net:{net.name}:") == 3
    assert before_filter.count(f"dy-net:{net.name}:") == 3


@root
def test_two_containers_reach_each_other_and_the_host_reaches_them(
    net: BridgeNetwork, containers: Callable[[], Container], tmp_path: Path
) -> None:
    a, b = containers(), containers()
    ea, eb = net.allocate("ctr-a", []), net.allocate("ctr-b", [])
    for c, e in ((a, ea), (b, eb)):
        t = time.perf_counter()
        net.attach(e, c.pid)
        attach_s = time.perf_counter() - t
        inside_s = c.configure(e)
        _timing(f"attach {e.container_id}", attach_s)
        _timing(f"configure_inside {e.container_id}", inside_s)
        assert attach_s < 0.5 and inside_s < 0.5

    link = a.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{ea.ip}/24" in link and ea.mac in a.run("ip", "-o", "link", "show", "eth0").stdout
    assert f"default via {net.gateway} dev eth0" in a.run("ip", "route").stdout
    assert "UP" in a.run("ip", "-o", "link", "show", "lo").stdout

    assert a.run(BUSYBOX, "ping", "-c", "1", "-W", "2", eb.ip).returncode == 0
    assert b.run(BUSYBOX, "ping", "-c", "1", "-W", "2", ea.ip).returncode == 0
    assert subprocess.run([BUSYBOX, "ping", "-c", "1", "-W", "2", ea.ip], check=False).returncode == 0
    assert a.run(BUSYBOX, "ping", "-c", "1", "-W", "2", str(net.gateway)).returncode == 0

    _serve(b, tmp_path / "www-b", 8000, "hello from b")
    assert _get(f"http://{eb.ip}:8000/") == "hello from b"  # host -> container
    # container -> container, TCP (python, not busybox wget: Debian's segfaults with -q or -T)
    code = f"import urllib.request as u; print(u.urlopen('http://{eb.ip}:8000/', timeout=3).read().decode())"
    r = a.run(sys.executable, "-c", code)
    assert (r.returncode, r.stdout.strip()) == (0, "hello from b"), r.stderr
    assert _run("cat", "/proc/sys/net/ipv4/ip_forward").strip() in ("0", "1")  # untouched by us


@root
def test_published_port_answers_on_loopback_and_gateway(
    net: BridgeNetwork, containers: Callable[[], Container], tmp_path: Path
) -> None:
    c = containers()
    ep = net.allocate("web", [PortMapping("", 0, 80), PortMapping("127.0.0.1", 0, 81)])
    any_port, lo_port = ep.ports[0].host_port, ep.ports[1].host_port
    assert 49153 <= any_port <= 65535 and lo_port != any_port
    t = time.perf_counter()
    net.attach(ep, c.pid)
    _timing("attach with 2 published ports", time.perf_counter() - t)
    c.configure(ep)
    _serve(c, tmp_path / "www", 80, "published")
    _serve(c, tmp_path / "www81", 81, "loopback only")
    assert _get(f"http://127.0.0.1:{any_port}/") == "published"
    assert _get(f"http://{net.gateway}:{any_port}/") == "published"
    assert _get(f"http://127.0.0.1:{lo_port}/") == "loopback only"
    with pytest.raises(OSError):  # published on 127.0.0.1 only: the gateway address does not DNAT
        urllib.request.urlopen(f"http://{net.gateway}:{lo_port}/", timeout=1)

    nat = _nat_rules()
    assert '--comment "dy:web"' in nat and f"--to-destination {ep.ip}:80" in nat
    assert "MASQUERADE" in nat and "-s 172.30." not in nat.split("MASQUERADE")[0].splitlines()[-1]

    # a port another container of ours publishes, and a port something on the host listens on
    with pytest.raises(PortInUse, match=f"port {any_port}/tcp is already published by container web"):
        net.allocate("web2", [PortMapping("", any_port, 80)])
    with pytest.raises(PortInUse, match=f"port {lo_port}/tcp"):
        net.allocate("web2", [PortMapping("127.0.0.1", lo_port, 80)])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {busy}/tcp on 0.0.0.0 is already in use on the host"):
            net.allocate("web2", [PortMapping("", 9, 80, "udp"), PortMapping("", busy, 80)])
    with pytest.raises(PortInUse, match="already published by this request"):
        net.allocate("web2", [PortMapping("", 40000, 80), PortMapping("", 40000, 81)])
    assert [e.container_id for e in net.endpoints()] == ["web"]  # nothing allocated on failure
    # udp on the same number is another port
    ok = net.allocate("web3", [PortMapping("", any_port, 53, "udp")])
    assert ok.ports[0].host_port == any_port
    net.release("web3")

    net.detach(ep)
    assert "dy:web" not in _nat_rules(net.name) and "dy:web" not in _filter_rules(net.name)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{any_port}/", timeout=1)


@root
def test_detach_release_destroy_leave_nothing(tmp_path: Path, containers: Callable[[], Container]) -> None:
    net = _new_network(tmp_path / "net")
    try:
        c = containers()
        ep = net.allocate("gone", [PortMapping("", 0, 80), PortMapping("", 0, 53, "udp")])
        net.attach(ep, c.pid)
        c.configure(ep)
        assert _link_exists(ep.host_ifname)
        assert (
            _nat_rules(net.name).count('"dy:gone"') == 2 and _filter_rules(net.name).count('"dy:gone"') == 2
        )

        net.detach(ep)
        net.detach(ep)  # idempotent
        assert not _link_exists(ep.host_ifname)
        assert "dy:gone" not in _nat_rules(net.name) and "dy:gone" not in _filter_rules(net.name)
        assert "eth0" not in c.run("ip", "-o", "link").stdout
        net.release("gone")
        net.release("gone")
        assert net.endpoints() == []

        # a container that dies while attached: its veth goes with its netns, detach still works
        c2 = containers()
        ep2 = net.allocate("dies", [PortMapping("", 0, 80)])
        net.attach(ep2, c2.pid)
        c2.stop()
        deadline = time.monotonic() + 5
        while _link_exists(ep2.host_ifname) and time.monotonic() < deadline:
            time.sleep(0.02)
        net.detach(ep2)
        assert "dy:dies" not in _nat_rules(net.name)

        # destroy with a still attached endpoint cleans it up too
        c3 = containers()
        ep3 = net.allocate("left", [PortMapping("", 0, 80)])
        net.attach(ep3, c3.pid)
    finally:
        net.destroy()
    net.destroy()  # idempotent
    assert not _link_exists(net.name)
    assert not _link_exists(ep3.host_ifname)
    for rules in (_nat_rules(), _filter_rules()):
        assert net.name not in rules  # its chain (which held "dy:left") and every jump to it
    assert not list((tmp_path / "net").iterdir())


@root
def test_attach_refuses_a_process_in_the_host_namespace(net: BridgeNetwork) -> None:
    ep = net.allocate("host", [])
    with pytest.raises(NetworkError, match="host's network namespace"):
        net.attach(ep, os.getpid())
    assert not _link_exists(ep.host_ifname)


@root
def test_attach_twice_and_after_a_crash(net: BridgeNetwork, containers: Callable[[], Container]) -> None:
    c = containers()
    ep = net.allocate("twice", [])
    net.attach(ep, c.pid)
    with pytest.raises(NetworkError, match="already has an eth0"):
        net.attach(dataclasses.replace(ep, host_ifname="dytmpother"), c.pid)
    assert not _link_exists("dytmpother")
    # a leftover host veth of a dead container (agent crashed before detach) is replaced
    c2 = containers()
    net.attach(ep, c2.pid)
    assert "eth0" in c2.run("ip", "-o", "link").stdout
    assert "eth0" not in c.run("ip", "-o", "link").stdout
    net.detach(ep)


@root
def test_two_networks_side_by_side(tmp_path: Path, containers: Callable[[], Container]) -> None:
    n1 = _new_network(tmp_path / "a")
    try:
        n2 = _new_network(tmp_path / "b")
        try:
            assert n1.subnet != n2.subnet
            c1, c2 = containers(), containers()
            e1 = n1.allocate("same-id", [PortMapping("127.0.0.1", 0, 80)])
            # another agent's published port is refused too
            n1.attach(e1, c1.pid)
            with pytest.raises(PortInUse, match="another dockyard network"):
                n2.allocate("other", [PortMapping("127.0.0.1", e1.ports[0].host_port, 80)])
            e2 = n2.allocate("same-id", [PortMapping("127.0.0.1", 0, 80)])
            assert e1.host_ifname != e2.host_ifname
            n2.attach(e2, c2.pid)
            c1.configure(e1)
            c2.configure(e2)
            _serve(c1, tmp_path / "w1", 80, "one")
            _serve(c2, tmp_path / "w2", 80, "two")
            assert _get(f"http://127.0.0.1:{e1.ports[0].host_port}/") == "one"
            assert _get(f"http://127.0.0.1:{e2.ports[0].host_port}/") == "two"
        finally:
            n2.destroy()
        # the first network is untouched by the second's destroy
        assert _get(f"http://127.0.0.1:{e1.ports[0].host_port}/") == "one"
    finally:
        n1.destroy()


@root
def test_loopback_up_in_a_fresh_namespace() -> None:
    code = (
        "import time\n"
        "from agent.runtime.network import loopback_up\n"
        "t = time.perf_counter(); loopback_up(); print(time.perf_counter() - t)\n"
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
        " socket.create_connection(s.getsockname(), timeout=1)\n"
    )
    r = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    _timing("loopback_up", float(r.stdout))


def _forward_drop_scenario(state_dir: str) -> None:
    """Runs inside a private netns standing in for a host whose FORWARD policy is DROP (as on any
    host with docker) and whose bridged traffic passes iptables (bridge-nf-call-iptables=1)."""
    from agent.runtime.network import loopback_up

    loopback_up()
    _run("iptables", "-w", "-P", "FORWARD", "DROP")
    assert _run("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").strip() == "1"
    assert _run("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    net = BridgeNetwork(Path(state_dir), "dytfwd", "172.30.7.0/24")
    made: list[Container] = []
    try:
        net.ensure()
        a, b = Container(), Container()
        made += [a, b]
        ea = net.allocate("a", [])
        eb = net.allocate("b", [PortMapping("", 8080, 80)])
        for c, e in ((a, ea), (b, eb)):
            net.attach(e, c.pid)
            c.configure(e)
        _serve(b, Path(state_dir) / "www", 80, "through FORWARD DROP")
        assert a.run(BUSYBOX, "ping", "-c", "1", "-W", "2", eb.ip).returncode == 0
        code = (
            f"import urllib.request as u; print(u.urlopen('http://{eb.ip}:80/', timeout=3).read().decode())"
        )
        r = a.run(sys.executable, "-c", code)
        assert r.stdout.strip() == "through FORWARD DROP", r.stderr
        assert _get("http://127.0.0.1:8080/") == "through FORWARD DROP"
        assert _get("http://172.30.7.1:8080/") == "through FORWARD DROP"
        assert _run("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    finally:
        for c in made:
            c.stop()
        net.destroy()
    print("FORWARD-DROP-OK")


@root
def test_works_with_forward_drop_and_without_ip_forward(tmp_path: Path) -> None:
    """In a private netns (so the real host's policies stay untouched): FORWARD policy DROP,
    ip_forward=0, br_netfilter on. Container <-> container and published ports still work."""
    code = f"import test_network; test_network._forward_drop_scenario({str(tmp_path)!r})"
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'kernel'}"}
    r = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert r.returncode == 0 and "FORWARD-DROP-OK" in r.stdout, r.stdout + r.stderr
