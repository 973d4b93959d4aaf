"""Prometheus metrics: the agent's /metrics (promtool, values against the cgroup, dockyard stats),
the scheduler's metrics and service discovery, the shipped Prometheus files, and a real Prometheus
server that discovers two agents through /sd and reads their containers back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import metrics as am
from scheduler import metrics as sm
from tests.agent_harness import AgentProcess, free_port, import_busybox

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data: bytes = r.read()
        return data


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    got = [v for lab, v in samples.get(metric, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(got) == 1, f"{metric}{labels}: {len(got)} samples"
    return got[0]


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin.decode() if stdin else None, capture_output=True,
                          text=True, timeout=60, cwd=PROM_DIR)


def check_metrics(body: bytes) -> None:
    r = promtool("check", "metrics", stdin=body)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", f"promtool lint: {r.stdout}{r.stderr}"


# --- the cgroup, read on its own (not through the driver the collector uses) ------------------------

def cgroup_dir(a: AgentProcess, cid: str, controller: str) -> Path:
    parent = (a.root / "cgroup-parent").read_text().strip()
    v1 = Path("/sys/fs/cgroup") / controller / parent / cid
    return v1 if v1.is_dir() else Path("/sys/fs/cgroup") / parent / cid


def _keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split() for ln in path.read_text().splitlines() if ln.strip())}


def kernel_working_set(a: AgentProcess, cid: str) -> int:
    d = cgroup_dir(a, cid, "memory")
    if (d / "memory.usage_in_bytes").exists():
        st = _keyed(d / "memory.stat")
        return max(0, int((d / "memory.usage_in_bytes").read_text()) - st.get("total_inactive_file", 0))
    return max(0, int((d / "memory.current").read_text()) - _keyed(d / "memory.stat").get("inactive_file", 0))


def kernel_cpu_seconds(a: AgentProcess, cid: str) -> float:
    d = cgroup_dir(a, cid, "cpuacct")
    if (d / "cpuacct.usage").exists():
        return int((d / "cpuacct.usage").read_text()) / 1e9
    return _keyed(d / "cpu.stat")["usage_usec"] / 1e6


def wait_cpu_settled(a: AgentProcess, cid: str, timeout: float = 30) -> float:
    """Wait until the container stops using cpu (its burn loop ended); the total then."""
    deadline = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < deadline:
        now = kernel_cpu_seconds(a, cid)
        if now == last and now > 0.05:
            return now
        last = now
        time.sleep(0.5)
    raise AssertionError(f"cpu of {cid[:12]} kept growing: {last}")


BURN = "i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done; exec sleep 3600"
OOM = "head -c 200m /dev/zero | tail; exec sleep 3600"   # tail is OOM-killed, the container lives on


# --- unit: the pieces -------------------------------------------------------------------------

def test_oom_ledger_counts_over_runs() -> None:
    led = am._OomLedger()
    assert led.count("c", 1.0, 0) == 0
    assert led.count("c", 1.0, 2) == 2
    assert led.count("c", 1.0, 1) == 2          # a cgroup never un-kills: stays monotonic
    assert led.count("c", 2.0, 0) == 2          # restarted: a new cgroup starts at 0
    assert led.count("c", 2.0, 1) == 3
    led.keep_only([])
    assert led.count("c", 3.0, 0) == 0          # removed and forgotten


def test_observe_times_and_counts_errors() -> None:
    op = f"test_op_{os.getpid()}"
    with am.observe(op):
        pass
    with pytest.raises(KeyError), am.observe(op):
        raise KeyError("x")

    async def cancelled() -> None:
        with am.observe(op):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())
    assert am.OPERATION_SECONDS.labels(op)._sum.get() >= 0  # type: ignore[attr-defined]
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    reg.register(am.OPERATION_SECONDS)
    reg.register(am.OPERATION_ERRORS)
    from prometheus_client import generate_latest

    s = parse(generate_latest(reg).decode())
    assert value(s, "dockyard_agent_operation_seconds_count", operation=op) == 3
    assert value(s, "dockyard_agent_errors_total", operation=op, kind="KeyError") == 1
    assert not [lab for lab, _ in s.get("dockyard_agent_errors_total", []) if lab["operation"] == op
                and lab["kind"] != "KeyError"]


def test_read_net_dev_of_this_process() -> None:
    ifaces = am.read_net_dev(os.getpid())
    assert "lo" not in ifaces
    assert all(i.rx_bytes >= 0 and i.tx_packets >= 0 for i in ifaces.values())


@pytest.mark.parametrize("addr, want", [
    ("127.0.0.1:9323", ("127.0.0.1", 9323)), ("[::1]:80", ("::1", 80)), ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_addr(addr: str, want: tuple[str, int]) -> None:
    assert am.parse_addr(addr) == want


@pytest.mark.parametrize("addr", ["9323", ":9323", "host:", "host:x", "host:70000"])
def test_parse_addr_rejects(addr: str) -> None:
    with pytest.raises(am.MetricsAddressError, match="--metrics-addr"):
        am.parse_addr(addr)


class FakeCgroups:
    """Stats for any container, with a pids path that has no cgroup.procs (0 processes)."""

    def stats(self, name: str) -> Any:
        from agent.runtime.cgroups import Stats

        return Stats(cpu_usage_ns=1_500_000_000, cpu_user_ns=10**9, cpu_system_ns=5 * 10**8, memory_usage=3 << 20,
                     working_set=2 << 20, memory_limit=64 << 20, pids_current=2, oom_kills=1)

    def paths(self, name: str) -> dict[str, str]:
        return {"pids": f"/nonexistent/{name}"}


class FakeManager:
    def __init__(self, containers: list[Any]) -> None:
        self.cg = FakeCgroups()
        self.containers = {c.id: c for c in containers}

    def files(self, c: Any) -> Any:
        raise AssertionError("not needed: state.pid is set")


def fake_containers(pid: int | None = None) -> list[Any]:
    """`pid` stands in for the running container's init (its /proc/PID/net/dev is read)."""
    from agent.model import Container, ContainerConfig, ContainerState, Resources

    weird = 'we"ird\\name\nline'
    return [
        Container(id="a" * 64, name="web", created=0, image_id="sha256:x", image_ref="busybox", snapshot="",
                  config=ContainerConfig(labels={"dockyard.service": weird, "dockyard.task": "web.1"},
                                         resources=Resources(memory=64 << 20, nano_cpus=250_000_000)),
                  state=ContainerState(status="running", pid=pid or os.getpid(), started_at=1000.5)),
        Container(id="b" * 64, name="gone", created=0, image_id="sha256:x", image_ref="busybox", snapshot="",
                  config=ContainerConfig(), state=ContainerState(status="exited", oom_killed=True, restart_count=2)),
    ]


def test_fast_text_equals_prometheus_client_encoding() -> None:
    from prometheus_client import generate_latest

    # A process in a network namespace of its own, so that the two scrapes compared below read the
    # same counters (this process's would be the host's, which move between the two reads).
    quiet = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        time.sleep(0.2)
        m = am.AgentMetrics("node1", FakeManager(fake_containers(quiet.pid)))  # type: ignore[arg-type]
        fast = parse(m.exposition().decode())
        slow = parse(generate_latest(m.registry).decode())
    finally:
        quiet.kill()
        quiet.wait()
    skip = ("dockyard_agent_scrape_duration_seconds", "container_last_seen")
    for k in skip:
        fast.pop(k, None), slow.pop(k, None)
    def norm(x: Samples) -> dict[str, list[tuple[tuple[tuple[str, str], ...], float]]]:
        return {k: sorted((tuple(sorted(lab.items())), v) for lab, v in vs) for k, vs in x.items()}

    assert norm(fast) == norm(slow)
    svc = 'we"ird\\name\nline'
    assert value(fast, "container_cpu_usage_seconds_total", name="web", service=svc, cpu="total") == 1.5
    assert value(fast, "container_spec_cpu_quota", name="web") == 25_000
    assert value(fast, "container_oom_events_total", name="gone") == 1   # from its state: no cgroup left
    assert value(fast, "dockyard_container_restarts_total", name="gone") == 2
    assert value(fast, "dockyard_containers", node="node1", state="exited") == 1
    assert value(fast, "dockyard_node_memory_allocated_bytes", node="node1") == 64 << 20
    if PROMTOOL:
        check_metrics(m.exposition())


@dataclass
class FakeNode:
    name: str
    address: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "ready"
    availability: str = "active"
    role: str = "worker"
    metrics_addr: str = ""


def test_http_sd_targets_format() -> None:
    nodes = [FakeNode("b", "10.0.0.2:7000", {"zone": "eu-1", "disk.type": "ssd"}, status="down"),
             FakeNode("a", "10.0.0.1:7000", metrics_addr="10.0.0.1:9400"),
             FakeNode("v6", "[fd00::1]:7000"), FakeNode("none")]
    groups = sm.http_sd_targets(nodes)
    assert [g["targets"] for g in groups] == [["10.0.0.1:9400"], ["10.0.0.2:9323"], ["[fd00::1]:9323"]]
    b = groups[1]["labels"]
    assert b["__meta_dockyard_node"] == "b"
    assert b["__meta_dockyard_node_status"] == "down"
    assert b["__meta_dockyard_node_label_zone"] == "eu-1"
    assert b["__meta_dockyard_node_label_disk_type"] == "ssd"
    json.dumps(groups)  # plain JSON


def test_http_sd_targets_from_scheduler_model_nodes() -> None:
    from scheduler.model import Node

    groups = sm.http_sd_targets([Node(name="n1", address="192.0.2.1:7001", labels={"zone": "a"})])
    assert groups == [{"targets": ["192.0.2.1:9323"], "labels": {
        "__meta_dockyard_node": "n1", "__meta_dockyard_node_address": "192.0.2.1:7001",
        "__meta_dockyard_node_status": "ready", "__meta_dockyard_node_availability": "active",
        "__meta_dockyard_node_role": "worker", "__meta_dockyard_node_label_zone": "a"}}]


@needs_promtool
def test_scheduler_server_serves_metrics_and_sd() -> None:
    m = sm.SchedulerMetrics()
    with m.placement(), m.etcd("txn"), m.reconcile():
        pass
    m.attempt("scheduled")
    m.set_nodes([FakeNode("a"), FakeNode("b", status="down")])
    m.set_services({"web": 3, "db": 1}, {"web": 2})
    m.set_services({"web": 3}, {"web": 3})   # db removed: its series go
    m.set_leader(True)
    m.set_pending(4)
    m.migration("live", "succeeded", downtime=0.3)
    m.migration("cold", "failed")
    loop = asyncio.new_event_loop()
    import threading

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    async def nodes() -> list[FakeNode]:
        return [FakeNode("a", "127.0.0.1:7000", {"zone": "z1"})]

    server = sm.serve(f"127.0.0.1:{free_port()}", m.registry, nodes=nodes, loop=loop)
    try:
        host, port = server.address
        body = get(f"http://{host}:{port}/metrics")
        check_metrics(body)
        s = parse(body.decode())
        assert value(s, "dockyard_scheduler_nodes", status="down") == 1
        assert value(s, "dockyard_scheduler_service_running_replicas", service="web") == 3
        assert not [lab for lab, _ in s["dockyard_scheduler_service_desired_replicas"] if lab["service"] == "db"]
        assert value(s, "dockyard_scheduler_migrations_total", mode="cold", result="failed") == 1
        assert value(s, "dockyard_scheduler_migration_downtime_seconds_count", mode="live") == 1
        assert value(s, "dockyard_scheduler_leader") == 1
        assert value(s, "dockyard_scheduler_etcd_request_seconds_count", operation="txn") == 1
        sd = json.loads(get(f"http://{host}:{port}/sd"))
        assert sd == [{"targets": ["127.0.0.1:9323"], "labels": {
            "__meta_dockyard_node": "a", "__meta_dockyard_node_address": "127.0.0.1:7000",
            "__meta_dockyard_node_status": "ready", "__meta_dockyard_node_availability": "active",
            "__meta_dockyard_node_role": "worker", "__meta_dockyard_node_label_zone": "z1"}}]
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f"http://{host}:{port}/nope")
        assert e.value.code == 404
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


# --- the shipped Prometheus files ----------------------------------------------------------------

@needs_promtool
def test_shipped_config_and_rules_pass_promtool() -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "rules.yml"),
                 ("test", "rules", "rules_test.yml")):
        r = promtool(*args)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dash = json.loads((PROM_DIR / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "1m").replace("$node", ".*")
         .replace("$service", ".*")} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(json.dumps(rules))  # JSON is YAML
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


# --- the agent's /metrics, for real ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.root
@needs_promtool
def test_agent_metrics_pass_promtool_and_match_the_cgroup(clean_agent: AgentProcess) -> None:
    a = clean_agent
    idle = a.run_detached("--name", "m-idle", "-m", "64m", "--cpus", "0.5", "-l", "dockyard.service=web",
                          "-l", "dockyard.task=web.1", "busybox", "sleep", "3600")
    busy = a.run_detached("--name", "m-busy", "busybox", "sh", "-c", BURN)
    a.run_detached("--name", "m-host", "--network", "host", "busybox", "sleep", "3600")
    cpu = wait_cpu_settled(a, busy)
    body = get(a.metrics_url)
    check_metrics(body)
    s = parse(body.decode())
    node = f"test-{a.bridge}"
    lab = {"name": "m-idle", "id": f"/dockyard/{idle}", "image": "busybox", "service": "web", "task": "web.1",
           "node": node}
    assert value(s, "container_spec_memory_limit_bytes", **lab) == 64 << 20
    assert value(s, "container_spec_cpu_quota", **lab) == 50_000
    assert value(s, "container_spec_cpu_period", **lab) == 100_000
    assert value(s, "container_processes", **lab) == 1
    assert abs(value(s, "container_memory_working_set_bytes", **lab) - kernel_working_set(a, idle)) <= 64 << 10
    assert time.time() - 120 < value(s, "container_start_time_seconds", **lab) < time.time()
    assert time.time() - value(s, "container_last_seen", **lab) < 10
    assert value(s, "container_network_receive_bytes_total", name="m-idle", interface="eth0") >= 0
    assert value(s, "container_cpu_usage_seconds_total", name="m-busy", cpu="total") == pytest.approx(cpu, rel=0.01)
    assert value(s, "container_spec_memory_limit_bytes", name="m-busy") == 0   # unlimited
    # Host network: no container-side interfaces to report.
    assert not [x for x, _ in s.get("container_network_receive_bytes_total", []) if x["name"] == "m-host"]
    assert value(s, "dockyard_containers", node=node, state="running") == 3
    assert value(s, "dockyard_node_cpu_allocated", node=node) == 0.5
    assert value(s, "dockyard_node_memory_allocated_bytes", node=node) == 64 << 20
    assert value(s, "dockyard_node_cpu_capacity", node=node) == os.cpu_count()
    assert value(s, "dockyard_node_cpu_free", node=node) == (os.cpu_count() or 1) - 0.5
    assert value(s, "dockyard_agent_operation_seconds_count", operation="StartContainer") >= 3
    # An operation that fails is counted by kind.
    assert a.cli("start", "no-such-container").returncode != 0
    s = parse(get(a.metrics_url).decode())
    assert value(s, "dockyard_agent_errors_total", operation="StartContainer", kind="NotFound") >= 1


@pytest.mark.slow
@pytest.mark.root
def test_dockyard_stats_shows_the_collectors_numbers(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.run_detached("--name", "st-idle", "-m", "48m", "busybox", "sh", "-c", BURN)
    wait_cpu_settled(a, cid)
    r = a.cli("stats", "--no-stream", "--format", "json", cid, check=True)
    st = json.loads(r.stdout)
    st = st[0] if isinstance(st, list) else st
    s = parse(get(a.metrics_url).decode())
    assert int(st["cpu_usage_ns"]) / 1e9 == pytest.approx(
        value(s, "container_cpu_usage_seconds_total", name="st-idle"), rel=0.005)
    assert abs(int(st["memory_usage"]) - value(s, "container_memory_working_set_bytes", name="st-idle")) <= 64 << 10
    assert int(st["memory_limit"]) == value(s, "container_spec_memory_limit_bytes", name="st-idle") == 48 << 20
    rx = sum(v for lab, v in s["container_network_receive_bytes_total"] if lab["name"] == "st-idle")
    # Read after stats: a stray neighbour or multicast packet may have arrived in between.
    assert int(st.get("net_rx_bytes", 0)) <= rx <= int(st.get("net_rx_bytes", 0)) + 2048
    assert int(st["pids"]) == value(s, "container_threads", name="st-idle")


@pytest.mark.slow
@pytest.mark.root
def test_oom_kill_is_counted_while_running_and_after_exit(clean_agent: AgentProcess) -> None:
    a = clean_agent
    a.run_detached("--name", "oom-lives", "-m", "32m", "busybox", "sh", "-c", OOM)
    a.run_detached("--name", "oom-dies", "-m", "32m", "busybox", "tail", "/dev/zero")
    a.wait_for(lambda: a.inspect("oom-dies")["State"]["Status"] == "exited", 20, "oom-dies to be OOM-killed")
    assert a.inspect("oom-dies")["State"]["OOMKilled"]

    def oom_counts() -> dict[str, float] | None:
        s = parse(get(a.metrics_url).decode())
        got = {lab["name"]: v for lab, v in s["container_oom_events_total"]}
        return got if got.get("oom-lives", 0) >= 1 else None

    got = a.wait_for(oom_counts, 20, "the OOM kill in oom-lives")
    assert got["oom-dies"] >= 1
    assert a.inspect("oom-lives")["State"]["Status"] == "running"


def test_agent_rejects_a_bad_metrics_addr(tmp_path: Path) -> None:
    import sys

    r = subprocess.run([sys.executable, "-m", "deploy.cli", "agent", "--metrics-addr", "nonsense",
                        "--root", str(tmp_path / "r"), "--socket", str(tmp_path / "s")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "--metrics-addr" in r.stderr


# --- a real Prometheus, discovering two agents through the scheduler's /sd ------------------------

@contextlib.contextmanager
def prometheus_server(config: dict[str, Any]) -> Iterator[str]:
    assert PROMETHEUS is not None
    d = Path(tempfile.mkdtemp(prefix="dockyard-prom-"))
    port = free_port()
    (d / "prometheus.yml").write_text(json.dumps(config))
    with open(d / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}",
                                 f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={d / 'tsdb'}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{(d / 'prometheus.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if get(f"{url}/-/ready", 2):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus did not get ready")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    r = json.loads(get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert r["status"] == "success", r
    result: list[dict[str, Any]] = r["data"]["result"]
    return result


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.peer
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: apt-get install prometheus")
def test_real_prometheus_discovers_two_agents_and_reads_containers(
        clean_agent: AgentProcess, tmp_path: Path, busybox_tar_path: Path) -> None:
    a = clean_agent
    b = AgentProcess(tmp_path / "agent-b")
    try:
        b.start()
        import_busybox(b, busybox_tar_path)
        burn = a.run_detached("--name", "pm-burn", "-m", "64m", "-l", "dockyard.service=api",
                              "busybox", "sh", "-c", BURN)
        a.run_detached("--name", "pm-oom", "-m", "32m", "busybox", "sh", "-c", OOM)
        other = b.run_detached("--name", "pm-b", "busybox", "sleep", "3600")
        cpu = wait_cpu_settled(a, burn)
        nodes = [FakeNode(f"test-{x.bridge}", f"127.0.0.1:{7000 + i}", {"zone": f"z{i}"},
                          metrics_addr=f"127.0.0.1:{x.metrics_port}") for i, x in enumerate((a, b))]
        sched = sm.SchedulerMetrics()
        sd = sm.serve(f"127.0.0.1:{free_port()}", sched.registry, nodes=lambda: nodes)
        try:
            sd_url = "http://{}:{}".format(*sd.address)
            import yaml

            # The shipped file (its relabelling included), pointed at this test's /sd and scheduler.
            config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
            config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
            config.pop("rule_files", None)
            for job in config["scrape_configs"]:
                if "http_sd_configs" in job:
                    job["http_sd_configs"] = [{"url": f"{sd_url}/sd", "refresh_interval": "1s"}]
                else:
                    job["static_configs"] = [{"targets": ["{}:{}".format(*sd.address)]}]
            with prometheus_server(config) as prom:
                def series() -> list[dict[str, Any]] | None:
                    got = query(prom, 'container_memory_working_set_bytes{name=~"pm-.*"}')
                    up = query(prom, 'up{job="dockyard-agents"} == 1')
                    oom = query(prom, 'container_oom_events_total{name="pm-oom"} >= 1')
                    return got if len(got) == 3 and len(up) == 2 and oom else None

                got = a.wait_for(series, 60, "prometheus to scrape both agents")
                by_name = {r["metric"]["name"]: r for r in got}
                burn_s = by_name["pm-burn"]["metric"]
                assert burn_s["instance"] == f"test-{a.bridge}" == burn_s["node"]   # relabelled from /sd
                assert burn_s["zone"] == "z0" and burn_s["service"] == "api"
                assert by_name["pm-b"]["metric"]["zone"] == "z1"
                assert by_name["pm-b"]["metric"]["id"] == f"/dockyard/{other}"
                ws = float(by_name["pm-burn"]["value"][1])
                assert abs(ws - kernel_working_set(a, burn)) <= 256 << 10, (ws, kernel_working_set(a, burn))
                c = query(prom, 'container_cpu_usage_seconds_total{name="pm-burn",cpu="total"}')
                assert float(c[0]["value"][1]) == pytest.approx(cpu, rel=0.01)
                assert float(c[0]["value"][1]) == pytest.approx(kernel_cpu_seconds(a, burn), rel=0.01)
                assert float(query(prom, 'container_oom_events_total{name="pm-oom"}')[0]["value"][1]) >= 1
                # The shipped alert's expression fires on it.
                assert query(prom, 'container_oom_events_total{name="pm-oom"} > 0 unless '
                                   'container_oom_events_total{name="pm-oom"} offset 10m')
                a.wait_for(lambda: query(prom, 'up{job="dockyard-scheduler"} == 1'), 30,
                           "prometheus to scrape the scheduler")  # its own job: scraped on its own clock
        finally:
            sd.close()
    finally:
        b.destroy()


@pytest.mark.slow
@pytest.mark.root
def test_agent_runs_without_metrics_when_the_port_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import tests.agent_harness as harness

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setattr(harness, "free_port", lambda: held.getsockname()[1])
        a = AgentProcess(tmp_path / "agent")
        try:
            a.start()   # serves gRPC all the same
            assert "no /metrics" in a.log.read_text()
        finally:
            a.destroy()
