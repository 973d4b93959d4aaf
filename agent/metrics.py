"""The agent's Prometheus metrics: containers (cAdvisor's names and meaning), the node, the agent.

Everything about containers and the node is read from the kernel when Prometheus scrapes, by a
custom collector (no timers, nothing cached between scrapes but the OOM ledger below):

    m = AgentMetrics(node="host1", manager=manager)
    server = serve_metrics("127.0.0.1:9323", m.registry)    # a daemon thread; server.close() stops it

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
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.runtime import cgroups

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from agent.containers import ContainerManager
    from agent.model import Container

log = logging.getLogger("dockyard.agent.metrics")

SERVICE_LABEL = "dockyard.service"
TASK_LABEL = "dockyard.task"
CONTAINER_LABELS = ("name", "id", "image", "service", "task", "node")
STATES = ("created", "running", "paused", "restarting", "exited", "dead")
LIVE = ("running", "paused")  # states in which a container has a cgroup to read

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


Family = CounterMetricFamily | GaugeMetricFamily


def _families() -> dict[str, Family]:
    L = list(CONTAINER_LABELS)
    fams: list[Family] = [
        CounterMetricFamily("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.",
                            labels=[*L, "cpu"]),
        CounterMetricFamily("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.",
                            labels=L),
        CounterMetricFamily("container_cpu_system_seconds_total",
                            "Cumulative system cpu time consumed in seconds.", labels=L),
        CounterMetricFamily("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.",
                            labels=L),
        CounterMetricFamily("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.",
                            labels=L),
        CounterMetricFamily("container_cpu_cfs_throttled_seconds_total",
                            "Total time duration the container has been throttled.", labels=L),
        GaugeMetricFamily("container_memory_usage_bytes",
                          "Current memory usage in bytes, including all memory regardless of when it was accessed.",
                          labels=L),
        GaugeMetricFamily("container_memory_working_set_bytes", "Current working set in bytes.", labels=L),
        GaugeMetricFamily("container_memory_rss", "Size of RSS in bytes.", labels=L),
        GaugeMetricFamily("container_memory_cache", "Number of bytes of page cache memory.", labels=L),
        GaugeMetricFamily("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", labels=L),
        GaugeMetricFamily("container_spec_memory_limit_bytes", "Memory limit for the container (0: unlimited).",
                          labels=L),
        GaugeMetricFamily("container_spec_cpu_period", "CPU period of the container.", labels=L),
        GaugeMetricFamily("container_spec_cpu_quota", "CPU quota of the container.", labels=L),
        GaugeMetricFamily("container_spec_cpu_shares", "CPU share of the container.", labels=L),
        CounterMetricFamily("container_network_receive_bytes_total", "Cumulative count of bytes received.",
                            labels=[*L, "interface"]),
        CounterMetricFamily("container_network_receive_packets_total", "Cumulative count of packets received.",
                            labels=[*L, "interface"]),
        CounterMetricFamily("container_network_receive_errors_total",
                            "Cumulative count of errors encountered while receiving.", labels=[*L, "interface"]),
        CounterMetricFamily("container_network_receive_packets_dropped_total",
                            "Cumulative count of packets dropped while receiving.", labels=[*L, "interface"]),
        CounterMetricFamily("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.",
                            labels=[*L, "interface"]),
        CounterMetricFamily("container_network_transmit_packets_total", "Cumulative count of packets transmitted.",
                            labels=[*L, "interface"]),
        CounterMetricFamily("container_network_transmit_errors_total",
                            "Cumulative count of errors encountered while transmitting.", labels=[*L, "interface"]),
        CounterMetricFamily("container_network_transmit_packets_dropped_total",
                            "Cumulative count of packets dropped while transmitting.", labels=[*L, "interface"]),
        CounterMetricFamily("container_fs_reads_bytes_total", "Cumulative count of bytes read.", labels=L),
        CounterMetricFamily("container_fs_writes_bytes_total", "Cumulative count of bytes written.", labels=L),
        GaugeMetricFamily("container_processes", "Number of processes running inside the container.", labels=L),
        GaugeMetricFamily("container_threads", "Number of threads running inside the container.", labels=L),
        GaugeMetricFamily("container_threads_max", "Maximum number of threads allowed inside the container "
                          "(0: unlimited).", labels=L),
        GaugeMetricFamily("container_start_time_seconds", "Start time of the container since unix epoch in seconds.",
                          labels=L),
        GaugeMetricFamily("container_last_seen", "Last time a container was seen by the exporter.", labels=L),
        CounterMetricFamily("container_oom_events_total", "Count of out of memory events observed for the container.",
                            labels=L),
        CounterMetricFamily("dockyard_container_restarts_total",
                            "Times the agent restarted the container under its restart policy.", labels=L),
        GaugeMetricFamily("dockyard_containers", "Containers on this node by state.", labels=["node", "state"]),
        GaugeMetricFamily("dockyard_node_cpu_capacity", "CPUs of the node.", labels=["node"]),
        GaugeMetricFamily("dockyard_node_memory_capacity_bytes", "Memory of the node in bytes.", labels=["node"]),
        GaugeMetricFamily("dockyard_node_cpu_allocated", "Sum of the cpu limits of running containers, in CPUs.",
                          labels=["node"]),
        GaugeMetricFamily("dockyard_node_memory_allocated_bytes",
                          "Sum of the memory limits of running containers, in bytes.", labels=["node"]),
        GaugeMetricFamily("dockyard_node_cpu_free", "CPUs not allocated to running containers (never below 0).",
                          labels=["node"]),
        GaugeMetricFamily("dockyard_node_memory_free_bytes",
                          "Memory not allocated to running containers, in bytes (never below 0).", labels=["node"]),
        GaugeMetricFamily("dockyard_agent_scrape_duration_seconds",
                          "Time the previous scrape of this agent took to read the kernel.", labels=["node"]),
    ]
    # Keyed by the exposed name: a counter family's .name drops the _total suffix.
    return {f.name + ('_total' if f.type == 'counter' else ''): f for f in fams}


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
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        start = time.perf_counter()
        f = _families()
        node = self.node
        # One C-level copy: the asyncio thread may add or remove containers while we read.
        containers = list(self.manager.containers.values())
        states = dict.fromkeys(STATES, 0)
        alloc_cpu = 0.0
        alloc_mem = 0
        for c in containers:
            states[c.state.status] = states.get(c.state.status, 0) + 1
            labels = self._labels(c)
            live = c.state.status in LIVE
            oom_raw = 1 if c.state.oom_killed else 0
            if live:
                r = c.config.resources
                alloc_cpu += r.nano_cpus / 1e9
                alloc_mem += r.memory
                try:
                    s = read_container(self.manager, c)
                except (cgroups.CgroupError, OSError) as e:
                    # It exited between the listing and the read: its last state still counts below.
                    log.debug("metrics: %s: %s", c.name, e)
                    live = False
                else:
                    oom_raw = max(oom_raw, s.stats.oom_kills)
                    self._add_sample(f, labels, c, s)
            f["container_oom_events_total"].add_metric(labels, self._oom.count(c.id, c.state.started_at, oom_raw))
            f["dockyard_container_restarts_total"].add_metric(labels, c.state.restart_count)
        self._oom.keep_only(c.id for c in containers)
        for state, n in states.items():
            f["dockyard_containers"].add_metric([node, state], n)
        f["dockyard_node_cpu_capacity"].add_metric([node], self.cpus)
        f["dockyard_node_memory_capacity_bytes"].add_metric([node], self.memory)
        f["dockyard_node_cpu_allocated"].add_metric([node], alloc_cpu)
        f["dockyard_node_memory_allocated_bytes"].add_metric([node], alloc_mem)
        f["dockyard_node_cpu_free"].add_metric([node], max(0.0, self.cpus - alloc_cpu))
        f["dockyard_node_memory_free_bytes"].add_metric([node], max(0, self.memory - alloc_mem))
        f["dockyard_agent_scrape_duration_seconds"].add_metric([node], self._last_duration)
        self._last_duration = time.perf_counter() - start
        return list(f.values())

    def _labels(self, c: Container) -> list[str]:
        lab = c.config.labels
        return [c.name, f"/dockyard/{c.id}", c.image_ref, lab.get(SERVICE_LABEL, ""), lab.get(TASK_LABEL, ""),
                self.node]

    @staticmethod
    def _add_sample(f: dict[str, Family], labels: list[str], c: Container, s: ContainerSample) -> None:
        st = s.stats

        def add(name: str, value: float, extra: list[str] | None = None) -> None:
            f[name].add_metric(labels + extra if extra else labels, value)

        add("container_cpu_usage_seconds_total", st.cpu_usage_ns / 1e9, ["total"])
        add("container_cpu_user_seconds_total", st.cpu_user_ns / 1e9)
        add("container_cpu_system_seconds_total", st.cpu_system_ns / 1e9)
        add("container_cpu_cfs_periods_total", st.nr_periods)
        add("container_cpu_cfs_throttled_periods_total", st.nr_throttled)
        add("container_cpu_cfs_throttled_seconds_total", st.throttled_ns / 1e9)
        add("container_memory_usage_bytes", st.memory_usage)
        add("container_memory_working_set_bytes", st.working_set)
        add("container_memory_rss", st.memory_rss)
        add("container_memory_cache", st.memory_cache)
        add("container_memory_max_usage_bytes", st.memory_max_usage)
        add("container_spec_memory_limit_bytes", st.memory_limit)
        quota, period = cgroups.Resources(nano_cpus=c.config.resources.nano_cpus).cfs_quota()
        add("container_spec_cpu_period", period)
        if quota > 0:  # cAdvisor leaves the quota out when there is none
            add("container_spec_cpu_quota", quota)
        add("container_spec_cpu_shares", c.config.resources.cpu_shares or 1024)
        for iface, n in sorted(s.interfaces.items()):
            add("container_network_receive_bytes_total", n.rx_bytes, [iface])
            add("container_network_receive_packets_total", n.rx_packets, [iface])
            add("container_network_receive_errors_total", n.rx_errors, [iface])
            add("container_network_receive_packets_dropped_total", n.rx_dropped, [iface])
            add("container_network_transmit_bytes_total", n.tx_bytes, [iface])
            add("container_network_transmit_packets_total", n.tx_packets, [iface])
            add("container_network_transmit_errors_total", n.tx_errors, [iface])
            add("container_network_transmit_packets_dropped_total", n.tx_dropped, [iface])
        add("container_fs_reads_bytes_total", st.blkio_read_bytes)
        add("container_fs_writes_bytes_total", st.blkio_write_bytes)
        add("container_processes", s.processes)
        add("container_threads", st.pids_current)
        add("container_threads_max", st.pids_limit)
        add("container_start_time_seconds", c.state.started_at)
        add("container_last_seen", s.read_at)


class AgentMetrics:
    """The agent's registry: the container collector and the operation metrics."""

    def __init__(self, node: str, manager: ContainerManager) -> None:
        self.registry = CollectorRegistry()
        self.collector = ContainerCollector(node, manager)
        self.registry.register(self.collector)
        self.registry.register(OPERATION_SECONDS)
        self.registry.register(OPERATION_ERRORS)


# --- serving ------------------------------------------------------------------------------------

class MetricsAddressError(ValueError):
    pass


def parse_addr(addr: str, option: str = "--metrics-addr") -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port); raises MetricsAddressError naming the option."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsAddressError(f"{option} {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9323")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass
class MetricsServer:
    """A running /metrics endpoint (prometheus_client's WSGI server in a daemon thread)."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        a: Any = self.httpd.server_address
        return str(a[0]), int(a[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve_metrics(addr: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` on HOST:PORT over HTTP in a daemon thread; scrapes never touch the event loop."""
    from prometheus_client import start_http_server

    host, port = parse_addr(addr)
    try:
        httpd, thread = start_http_server(port, host, registry)
    except OSError as e:
        raise MetricsAddressError(f"--metrics-addr {addr}: {e.strerror or e}") from e
    return MetricsServer(httpd, thread)
