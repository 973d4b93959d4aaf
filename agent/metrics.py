"""The agent's Prometheus metrics: containers (cAdvisor's names and meaning), the node, the agent.

Everything about containers and the node is read from the kernel when Prometheus scrapes, by a
custom collector (no timers, nothing cached between scrapes but the OOM ledger below):

    m = AgentMetrics(node="host1", manager=manager)
    server = serve_metrics("127.0.0.1:9323", m)     # a daemon thread; server.close() stops it

`read_container` is the one function that reads a container's counters: the collector and the
Stats RPC (`dockyard stats`) both call it, so they always show the same numbers.

The agent's own operations are timed with `observe(operation)`, a context manager that feeds
dockyard_agent_operation_seconds and, on an exception, dockyard_agent_errors_total.

Labels of every container series: name, id, image, service, task, node.
  * id is "/dockyard/<full container id>", not the host's cgroup path (which depends on where
    the agent itself runs): dashboards written for cAdvisor's "/docker/<id>" keep working with a
    changed prefix, and the value is the same on every host.
  * service and task are the container's `dockyard.service` / `dockyard.task` labels (set by the
    scheduler), empty for containers started by hand.
  * node is the agent's name.
Limits that are unlimited are reported as 0 (container_spec_memory_limit_bytes), as Stats keeps them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.runtime import cgroups
from common.http import MetricsAddressError as MetricsAddressError  # re-exported: the agent's users
from common.http import MetricsServer as MetricsServer
from common.http import QuietHandler, start_http
from common.http import parse_addr as parse_addr

if TYPE_CHECKING:
    from agent.containers import ContainerManager
    from agent.model import Container

log = logging.getLogger("dockyard.agent.metrics")

SERVICE_LABEL = "dockyard.service"
TASK_LABEL = "dockyard.task"
CONTAINER_LABELS = ("name", "id", "image", "service", "task", "node")
STATES = ("created", "running", "paused", "restarting", "exited", "dead")
LIVE = ("running", "paused")  # states in which a container has a cgroup to read
CFS_PERIOD_US = cgroups.Resources().cfs_quota()[1]

# --- the agent's own operations ---------------------------------------------------------------

# Created without a registry: each AgentMetrics registers them in its own, so several agents in one
# process (tests) do not collide, and the servicer can observe without holding an AgentMetrics.
OPERATION_SECONDS = Histogram(
    "dockyard_agent_operation_seconds", "Time the agent took to serve an operation (gRPC method), errors included.",
    ["operation"], registry=None,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
OPERATION_ERRORS = Counter(
    "dockyard_agent_errors_total", "Operations that failed, by operation and kind (the error's class).",
    ["operation", "kind"], registry=None)


@contextlib.contextmanager
def observe(operation: str) -> Iterator[None]:
    """Time the block as `operation`; an exception leaving it counts as an error of its class.

    Usable around awaits and yields (a synchronous context manager inside async code). The client
    going away (a cancelled call, a closed stream) is timed but not counted as an error.
    """
    import asyncio

    start = time.perf_counter()
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException as e:
        OPERATION_ERRORS.labels(operation, type(e).__name__).inc()
        raise
    finally:
        OPERATION_SECONDS.labels(operation).observe(time.perf_counter() - start)


# --- reading one container ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InterfaceStats:
    """One line of /proc/<pid>/net/dev: the container's side of an interface."""

    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@dataclass(slots=True)
class ContainerSample:
    """What the kernel says about one container at `read_at` (wall clock)."""

    stats: cgroups.Stats
    interfaces: dict[str, InterfaceStats] = field(default_factory=dict)  # without lo
    processes: int = 0
    read_at: float = 0.0

    @property
    def rx_bytes(self) -> int:
        return sum(i.rx_bytes for i in self.interfaces.values())

    @property
    def tx_bytes(self) -> int:
        return sum(i.tx_bytes for i in self.interfaces.values())


def read_net_dev(pid: int) -> dict[str, InterfaceStats]:
    """Interfaces of the network namespace `pid` is in, lo left out (as cAdvisor does)."""
    out: dict[str, InterfaceStats] = {}
    with open(f"/proc/{pid}/net/dev") as f:
        lines = f.read().splitlines()[2:]
    for line in lines:
        iface, _, rest = line.partition(":")
        iface = iface.strip()
        v = rest.split()
        if iface == "lo" or len(v) < 12:
            continue
        out[iface] = InterfaceStats(int(v[0]), int(v[1]), int(v[2]), int(v[3]),
                                    int(v[8]), int(v[9]), int(v[10]), int(v[11]))
    return out


def _count_procs(path: str) -> int:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def read_container(manager: ContainerManager, c: Container) -> ContainerSample:
    """Read a live container's cgroup and network counters now; raises CgroupError or OSError
    when it has none to read (not running, or it exited a moment ago)."""
    st = manager.cg.stats(c.id)
    paths = manager.cg.paths(c.id)
    sample = ContainerSample(stats=st, processes=_count_procs(paths.get("pids") or paths.get("unified", "")),
                             read_at=time.time())
    pid = init_pid(manager, c)
    if pid and c.config.network_mode != "host":  # host network: the host's counters, not the container's
        try:
            sample.interfaces = read_net_dev(pid)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH):
                raise
    return sample


def init_pid(manager: ContainerManager, c: Container) -> int:
    if c.state.pid:
        return c.state.pid
    with contextlib.suppress(OSError, ValueError):
        import json

        return int(json.loads(manager.files(c).init_pid.read_text()).get("pid", 0))
    return 0


# --- the collector ------------------------------------------------------------------------------

class _OomLedger:
    """container_oom_events_total over a container's whole life.

    The kernel counts OOM kills per cgroup, and the shim makes a new cgroup for every start and
    removes it at exit, so the raw count restarts with each run and vanishes with it. The ledger
    carries the counts of past runs (a run is identified by its start time) and, for a container
    that has exited, counts the kill recorded in its state (an OOM between two scrapes).
    """

    def __init__(self) -> None:
        self._runs: dict[str, tuple[float, int, int]] = {}  # id -> (run, count this run, carried)
        self._lock = threading.Lock()

    def count(self, cid: str, run: float, raw: int) -> int:
        with self._lock:
            prev_run, prev_raw, carried = self._runs.get(cid, (run, 0, 0))
            if prev_run != run:
                carried, prev_raw = carried + prev_raw, 0
            raw = max(raw, prev_raw)
            self._runs[cid] = (run, raw, carried)
            return carried + raw

    def keep_only(self, ids: Iterable[str]) -> None:
        with self._lock:
            keep = set(ids)
            for cid in [k for k in self._runs if k not in keep]:
                del self._runs[cid]


# Every family: (exposed name, type, help, label names after the base labels). Container families
# carry CONTAINER_LABELS first; node families carry "node" first.
_C = "container"
_N = "node"
FAMILIES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    # name, base (container|node), type, help, extra labels
    ("container_cpu_usage_seconds_total", _C, "counter", "Cumulative cpu time consumed in seconds.", ("cpu",)),
    ("container_cpu_user_seconds_total", _C, "counter", "Cumulative user cpu time consumed in seconds.", ()),
    ("container_cpu_system_seconds_total", _C, "counter", "Cumulative system cpu time consumed in seconds.", ()),
    ("container_cpu_cfs_periods_total", _C, "counter", "Number of elapsed enforcement period intervals.", ()),
    ("container_cpu_cfs_throttled_periods_total", _C, "counter", "Number of throttled period intervals.", ()),
    ("container_cpu_cfs_throttled_seconds_total", _C, "counter",
     "Total time duration the container has been throttled.", ()),
    ("container_memory_usage_bytes", _C, "gauge",
     "Current memory usage in bytes, including all memory regardless of when it was accessed.", ()),
    ("container_memory_working_set_bytes", _C, "gauge", "Current working set in bytes.", ()),
    ("container_memory_rss", _C, "gauge", "Size of RSS in bytes.", ()),
    ("container_memory_cache", _C, "gauge", "Number of bytes of page cache memory.", ()),
    ("container_memory_max_usage_bytes", _C, "gauge", "Maximum memory usage recorded in bytes.", ()),
    ("container_spec_memory_limit_bytes", _C, "gauge", "Memory limit for the container (0: unlimited).", ()),
    ("container_spec_cpu_period", _C, "gauge", "CPU period of the container.", ()),
    ("container_spec_cpu_quota", _C, "gauge", "CPU quota of the container.", ()),
    ("container_spec_cpu_shares", _C, "gauge", "CPU share of the container.", ()),
    ("container_network_receive_bytes_total", _C, "counter", "Cumulative count of bytes received.", ("interface",)),
    ("container_network_receive_packets_total", _C, "counter", "Cumulative count of packets received.",
     ("interface",)),
    ("container_network_receive_errors_total", _C, "counter",
     "Cumulative count of errors encountered while receiving.", ("interface",)),
    ("container_network_receive_packets_dropped_total", _C, "counter",
     "Cumulative count of packets dropped while receiving.", ("interface",)),
    ("container_network_transmit_bytes_total", _C, "counter", "Cumulative count of bytes transmitted.",
     ("interface",)),
    ("container_network_transmit_packets_total", _C, "counter", "Cumulative count of packets transmitted.",
     ("interface",)),
    ("container_network_transmit_errors_total", _C, "counter",
     "Cumulative count of errors encountered while transmitting.", ("interface",)),
    ("container_network_transmit_packets_dropped_total", _C, "counter",
     "Cumulative count of packets dropped while transmitting.", ("interface",)),
    ("container_fs_reads_bytes_total", _C, "counter", "Cumulative count of bytes read.", ()),
    ("container_fs_writes_bytes_total", _C, "counter", "Cumulative count of bytes written.", ()),
    ("container_processes", _C, "gauge", "Number of processes running inside the container.", ()),
    ("container_threads", _C, "gauge", "Number of threads running inside the container.", ()),
    ("container_threads_max", _C, "gauge",
     "Maximum number of threads allowed inside the container (0: unlimited).", ()),
    ("container_start_time_seconds", _C, "gauge", "Start time of the container since unix epoch in seconds.", ()),
    ("container_last_seen", _C, "gauge", "Last time a container was seen by the exporter.", ()),
    ("container_oom_events_total", _C, "counter", "Count of out of memory events observed for the container.", ()),
    ("dockyard_container_restarts_total", _C, "counter",
     "Times the agent restarted the container under its restart policy.", ()),
    ("dockyard_containers", _N, "gauge", "Containers on this node by state.", ("state",)),
    ("dockyard_node_cpu_capacity", _N, "gauge", "CPUs of the node.", ()),
    ("dockyard_node_memory_capacity_bytes", _N, "gauge", "Memory of the node in bytes.", ()),
    ("dockyard_node_cpu_allocated", _N, "gauge", "Sum of the cpu limits of running containers, in CPUs.", ()),
    ("dockyard_node_memory_allocated_bytes", _N, "gauge",
     "Sum of the memory limits of running containers, in bytes.", ()),
    ("dockyard_node_cpu_free", _N, "gauge", "CPUs not allocated to running containers (never below 0).", ()),
    ("dockyard_node_memory_free_bytes", _N, "gauge",
     "Memory not allocated to running containers, in bytes (never below 0).", ()),
    ("dockyard_agent_scrape_duration_seconds", _N, "gauge",
     "Time the previous scrape of this agent took to read the kernel and render.", ()),
)
_BASE_NAMES = {_C: CONTAINER_LABELS, _N: ("node",)}
_NO_EXTRA: tuple[str, ...] = ()

# One sample: (base label values, a tuple shared by all of a container's samples; extra label
# values; value). Sharing the base tuple lets the renderer format it once per container.
Sample = tuple[tuple[str, ...], tuple[str, ...], float]


def _escape_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Gathered:
    """One scrape's samples, by family name, in FAMILIES order."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {f[0]: [] for f in FAMILIES}

    def add(self, name: str, base: tuple[str, ...], value: float, extra: tuple[str, ...] = _NO_EXTRA) -> None:
        self.samples[name].append((base, extra, value))

    def families(self) -> list[Metric]:
        """As prometheus_client metric families (the Collector interface)."""
        out: list[Metric] = []
        for name, base, kind, help_, extra in FAMILIES:
            labels = [*_BASE_NAMES[base], *extra]
            fam: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                fam = CounterMetricFamily(name, help_, labels=labels)
            else:
                fam = GaugeMetricFamily(name, help_, labels=labels)
            for b, e, v in self.samples[name]:
                fam.add_metric([*b, *e], v)
            out.append(fam)
        return out

    def render(self) -> str:
        """The text exposition format (0.0.4) of the same samples, written directly: prometheus_client's
        generic encoder validates and escapes every label of every sample, which is most of a
        scrape's time with 100 containers; here a container's labels are formatted once."""
        lines: list[str] = []
        rendered: dict[int, str] = {}
        for name, base, kind, help_, extra_names in FAMILIES:
            samples = self.samples[name]
            if not samples:
                continue
            names = _BASE_NAMES[base]
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for b, e, v in samples:
                key = id(b)
                s = rendered.get(key)
                if s is None:
                    s = rendered[key] = ",".join(f'{n}="{_escape_value(x)}"' for n, x in zip(names, b, strict=True))
                if e:
                    s = s + "," + ",".join(f'{n}="{_escape_value(x)}"' for n, x in zip(extra_names, e, strict=True))
                lines.append(f"{name}{{{s}}} {_number(v)}")
        lines.append("")
        return "\n".join(lines)


def _number(v: float) -> str:
    if isinstance(v, int) or v.is_integer():
        return str(int(v))
    return repr(v)


class ContainerCollector(Collector):
    """Reads every container's cgroup and netns, and the node's capacity, on each scrape."""

    def __init__(self, node: str, manager: ContainerManager) -> None:
        self.node = node
        self.manager = manager
        self._oom = _OomLedger()
        self._last_duration = 0.0
        self.cpus = os.cpu_count() or 1
        self.memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def describe(self) -> Iterable[Metric]:
        return Gathered().families()

    def collect(self) -> Iterable[Metric]:
        return self.gather().families()

    def render(self) -> str:
        start = time.perf_counter()
        text = self.gather(timed=False).render()
        self._last_duration = time.perf_counter() - start
        return text

    def gather(self, timed: bool = True) -> Gathered:
        start = time.perf_counter()
        g = Gathered()
        node = (self.node,)
        # One C-level copy: the asyncio thread may add or remove containers while we read.
        containers = list(self.manager.containers.values())
        states = dict.fromkeys(STATES, 0)
        alloc_cpu = 0.0
        alloc_mem = 0
        for c in containers:
            states[c.state.status] = states.get(c.state.status, 0) + 1
            labels = self._labels(c)
            oom_raw = 1 if c.state.oom_killed else 0
            if c.state.status in LIVE:
                r = c.config.resources
                alloc_cpu += r.nano_cpus / 1e9
                alloc_mem += r.memory
                try:
                    s = read_container(self.manager, c)
                except (cgroups.CgroupError, OSError) as e:
                    # It exited between the listing and the read: its last state still counts below.
                    log.debug("metrics: %s: %s", c.name, e)
                else:
                    oom_raw = max(oom_raw, s.stats.oom_kills)
                    self._add_sample(g, labels, c, s)
            g.add("container_oom_events_total", labels, self._oom.count(c.id, c.state.started_at, oom_raw))
            g.add("dockyard_container_restarts_total", labels, c.state.restart_count)
        self._oom.keep_only(c.id for c in containers)
        for state, n in states.items():
            g.add("dockyard_containers", node, n, (state,))
        g.add("dockyard_node_cpu_capacity", node, self.cpus)
        g.add("dockyard_node_memory_capacity_bytes", node, self.memory)
        g.add("dockyard_node_cpu_allocated", node, alloc_cpu)
        g.add("dockyard_node_memory_allocated_bytes", node, alloc_mem)
        g.add("dockyard_node_cpu_free", node, max(0.0, self.cpus - alloc_cpu))
        g.add("dockyard_node_memory_free_bytes", node, max(0, self.memory - alloc_mem))
        g.add("dockyard_agent_scrape_duration_seconds", node, self._last_duration)
        if timed:
            self._last_duration = time.perf_counter() - start
        return g

    def _labels(self, c: Container) -> tuple[str, ...]:
        lab = c.config.labels
        return (c.name, f"/dockyard/{c.id}", c.image_ref, lab.get(SERVICE_LABEL, ""), lab.get(TASK_LABEL, ""),
                self.node)

    @staticmethod
    def _add_sample(g: Gathered, labels: tuple[str, ...], c: Container, s: ContainerSample) -> None:
        st = s.stats
        add = g.add
        add("container_cpu_usage_seconds_total", labels, st.cpu_usage_ns / 1e9, ("total",))
        add("container_cpu_user_seconds_total", labels, st.cpu_user_ns / 1e9)
        add("container_cpu_system_seconds_total", labels, st.cpu_system_ns / 1e9)
        add("container_cpu_cfs_periods_total", labels, st.nr_periods)
        add("container_cpu_cfs_throttled_periods_total", labels, st.nr_throttled)
        add("container_cpu_cfs_throttled_seconds_total", labels, st.throttled_ns / 1e9)
        add("container_memory_usage_bytes", labels, st.memory_usage)
        add("container_memory_working_set_bytes", labels, st.working_set)
        add("container_memory_rss", labels, st.memory_rss)
        add("container_memory_cache", labels, st.memory_cache)
        add("container_memory_max_usage_bytes", labels, st.memory_max_usage)
        add("container_spec_memory_limit_bytes", labels, st.memory_limit)
        nano = c.config.resources.nano_cpus
        add("container_spec_cpu_period", labels, CFS_PERIOD_US)
        if nano:  # cAdvisor leaves the quota out when there is none
            add("container_spec_cpu_quota", labels, nano * CFS_PERIOD_US // 1_000_000_000)
        add("container_spec_cpu_shares", labels, c.config.resources.cpu_shares or 1024)
        for iface, n in sorted(s.interfaces.items()):
            i = (iface,)
            add("container_network_receive_bytes_total", labels, n.rx_bytes, i)
            add("container_network_receive_packets_total", labels, n.rx_packets, i)
            add("container_network_receive_errors_total", labels, n.rx_errors, i)
            add("container_network_receive_packets_dropped_total", labels, n.rx_dropped, i)
            add("container_network_transmit_bytes_total", labels, n.tx_bytes, i)
            add("container_network_transmit_packets_total", labels, n.tx_packets, i)
            add("container_network_transmit_errors_total", labels, n.tx_errors, i)
            add("container_network_transmit_packets_dropped_total", labels, n.tx_dropped, i)
        add("container_fs_reads_bytes_total", labels, st.blkio_read_bytes)
        add("container_fs_writes_bytes_total", labels, st.blkio_write_bytes)
        add("container_processes", labels, s.processes)
        add("container_threads", labels, st.pids_current)
        add("container_threads_max", labels, st.pids_limit)
        add("container_start_time_seconds", labels, c.state.started_at)
        add("container_last_seen", labels, s.read_at)


class AgentMetrics:
    """The agent's metrics: the container collector and the operation metrics, in `registry` for
    prometheus_client's tools, and as text by `exposition()` (what /metrics serves, faster)."""

    def __init__(self, node: str, manager: ContainerManager) -> None:
        self.registry = CollectorRegistry()
        self.collector = ContainerCollector(node, manager)
        self.registry.register(self.collector)
        self.registry.register(OPERATION_SECONDS)
        self.registry.register(OPERATION_ERRORS)
        self._operations = CollectorRegistry()
        self._operations.register(OPERATION_SECONDS)
        self._operations.register(OPERATION_ERRORS)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return self.collector.render().encode() + generate_latest(self._operations)


# --- serving ------------------------------------------------------------------------------------

def serve_metrics(addr: str, metrics: AgentMetrics, tls_dir: Path | None = None) -> MetricsServer:
    """Serve GET /metrics on HOST:PORT from a daemon thread; scrapes never touch the event loop."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.reply(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
                return
            try:
                body = metrics.exposition()
            except Exception as e:
                log.exception("metrics: scrape failed")
                self.reply(500, "text/plain; charset=utf-8", f"{type(e).__name__}: {e}\n".encode())
                return
            self.reply(200, CONTENT_TYPE_LATEST, body)

    return start_http(addr, Handler, tls_dir)
