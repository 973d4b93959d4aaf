"""The scheduler's Prometheus metrics, its HTTP service discovery, and one small server for both.

    m = SchedulerMetrics()
    with m.placement():                      # one task placed (or found unplaceable)
        ...
    m.attempt("scheduled")                   # or "unschedulable", "error"
    with m.etcd("txn"):                      # any etcd request
        ...
    m.set_nodes(nodes); m.set_services({"web": 3}, {"web": 2}); m.set_pending(n); m.set_leader(True)
    m.migration("live", "succeeded", downtime=0.21)

    server = serve("127.0.0.1:9324", m.registry, nodes=lambda: cache.nodes())   # /metrics and /sd
    server.close()

/sd answers in Prometheus's HTTP SD format (https://prometheus.io/docs/prometheus/latest/http_sd/):
one target group per node, its agent's metrics address as the target and the node's facts as
__meta_dockyard_* labels, so one scrape job with `http_sd_configs` finds the whole cluster
(deploy/prometheus/prometheus.yml relabels them into node, zone, ...).

The `nodes` callable runs on the server's thread for every /sd request: give it a snapshot the
scheduler already keeps (a watch-fed cache), or an `async def` together with the event loop it
must run on (`loop=`), and it is run there with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from common import settings
from common.http import MetricsServer as MetricsServer  # re-exported for scheduler.main
from common.http import QuietHandler, start_http

AGENT_METRICS_PORT = settings.AGENT_METRICS_PORT  # the agent's default --metrics-addr port
NODE_STATUSES = ("ready", "down")
ATTEMPT_RESULTS = ("scheduled", "unschedulable", "error")
MIGRATION_MODES = ("cold", "live")
MIGRATION_RESULTS = ("succeeded", "failed", "rolled_back")

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class NodeLike(Protocol):
    """What /sd needs of a node (scheduler.model.Node has all of it)."""

    name: str
    address: str
    labels: dict[str, str]


class SchedulerMetrics:
    """The scheduler's metric objects in their own registry (so several schedulers in one test
    process do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.placement_seconds = Histogram(
            "dockyard_scheduler_placement_seconds", "Time to choose a node for one task (filters and scorers).",
            registry=r, buckets=_LATENCY)
        self.pending_tasks = Gauge(
            "dockyard_scheduler_pending_tasks", "Tasks that fit on no node now.", registry=r)
        self.attempts = Counter(
            "dockyard_scheduler_scheduling_attempts_total", "Placement attempts by result.", ["result"], registry=r)
        self.nodes = Gauge("dockyard_scheduler_nodes", "Nodes by status.", ["status"], registry=r)
        self.desired_replicas = Gauge(
            "dockyard_scheduler_service_desired_replicas", "Replicas a service asks for.", ["service"], registry=r)
        self.running_replicas = Gauge(
            "dockyard_scheduler_service_running_replicas", "A service's tasks observed running.", ["service"],
            registry=r)
        self.reconcile_seconds = Histogram(
            "dockyard_scheduler_reconcile_seconds", "Time of one reconcile pass (decide and apply).",
            registry=r, buckets=_LATENCY)
        self.etcd_seconds = Histogram(
            "dockyard_scheduler_etcd_request_seconds", "Latency of etcd requests by operation.", ["operation"],
            registry=r, buckets=_LATENCY)
        self.leader = Gauge("dockyard_scheduler_leader", "1 while this scheduler replica is the leader.", registry=r)
        self.migrations = Counter(
            "dockyard_scheduler_migrations_total", "Finished migrations by mode (cold, live) and result.",
            ["mode", "result"], registry=r)
        self.migration_downtime = Histogram(
            "dockyard_scheduler_migration_downtime_seconds",
            "Time a migrated task was not running anywhere (stop or dump on the source to running on the target).",
            ["mode"], registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60))
        # Known label values start at zero, so rates and alerts work before the first event.
        for result in ATTEMPT_RESULTS:
            self.attempts.labels(result)
        for status in NODE_STATUSES:
            self.nodes.labels(status).set(0)
        for mode in MIGRATION_MODES:
            self.migration_downtime.labels(mode)
            for mres in MIGRATION_RESULTS:
                self.migrations.labels(mode, mres)
        self._services: set[str] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def placement(self) -> Iterator[None]:
        with self.placement_seconds.time():
            yield

    @contextlib.contextmanager
    def reconcile(self) -> Iterator[None]:
        with self.reconcile_seconds.time():
            yield

    @contextlib.contextmanager
    def etcd(self, operation: str) -> Iterator[None]:
        """Time one etcd request: get, put, txn, delete, lease_grant, lease_keepalive, watch ..."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.etcd_seconds.labels(operation).observe(time.perf_counter() - start)

    def attempt(self, result: str) -> None:
        self.attempts.labels(result).inc()

    def set_pending(self, n: int) -> None:
        self.pending_tasks.set(n)

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_nodes(self, nodes: Iterable[Any]) -> None:
        """Count nodes by their `status` (a NodeStatus or its string)."""
        counts = dict.fromkeys(NODE_STATUSES, 0)
        for n in nodes:
            s = str(getattr(n, "status", "ready"))
            counts[s] = counts.get(s, 0) + 1
        for status, k in counts.items():
            self.nodes.labels(status).set(k)

    def set_services(self, desired: Mapping[str, int], running: Mapping[str, int]) -> None:
        """The whole picture of services: those no longer listed lose their series."""
        with self._lock:
            names = set(desired) | set(running)
            for gone in self._services - names:
                with contextlib.suppress(KeyError):
                    self.desired_replicas.remove(gone)
                with contextlib.suppress(KeyError):
                    self.running_replicas.remove(gone)
            for svc in names:
                self.desired_replicas.labels(svc).set(desired.get(svc, 0))
                self.running_replicas.labels(svc).set(running.get(svc, 0))
            self._services = names

    def migration(self, mode: str, result: str, downtime: float | None = None) -> None:
        self.migrations.labels(mode, result).inc()
        if downtime is not None and result == "succeeded":
            self.migration_downtime.labels(mode).observe(downtime)


# --- HTTP service discovery ---------------------------------------------------------------------

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label(name: str) -> str:
    """A Prometheus label name from any string, as Prometheus's own SDs make them ("a.b-c" -> "a_b_c")."""
    return _INVALID.sub("_", name)


def metrics_target(node: Any) -> str:
    """host:port of a node's agent /metrics: its `metrics_addr` when it reported one, else the host
    of its gRPC address with the agent's default metrics port."""
    addr = str(getattr(node, "metrics_addr", "") or "")
    if addr:
        return addr
    address = str(getattr(node, "address", "") or "")
    if not address:
        return ""
    host = address.removeprefix("tcp://").removeprefix("http://")
    if host.startswith("["):  # [v6]:port or [v6]
        host = host[: host.index("]") + 1] if "]" in host else host
    elif host.count(":") == 1:  # v4 or name, with a port
        host = host.partition(":")[0]
    elif ":" in host:  # a bare v6 address
        host = f"[{host}]"
    return f"{host}:{AGENT_METRICS_PORT}"


def http_sd_targets(nodes: Iterable[Any], target: Callable[[Any], str] = metrics_target) -> list[dict[str, Any]]:
    """Prometheus HTTP SD target groups, one per node with a metrics target, sorted by node name.

    [{"targets": ["10.0.0.5:9323"], "labels": {"__meta_dockyard_node": "host1",
      "__meta_dockyard_node_status": "ready", "__meta_dockyard_node_label_zone": "a", ...}}]
    """
    groups = []
    for n in sorted(nodes, key=lambda n: str(n.name)):
        t = target(n)
        if not t:
            continue
        labels = {
            "__meta_dockyard_node": str(n.name),
            "__meta_dockyard_node_address": str(getattr(n, "address", "") or ""),
            "__meta_dockyard_node_status": str(getattr(n, "status", "") or ""),
            "__meta_dockyard_node_availability": str(getattr(n, "availability", "") or ""),
            "__meta_dockyard_node_role": str(getattr(n, "role", "") or ""),
        }
        for k, v in sorted((getattr(n, "labels", None) or {}).items()):
            labels[f"__meta_dockyard_node_label_{sanitize_label(k)}"] = str(v)
        groups.append({"targets": [t], "labels": labels})
    return groups


# --- the server ---------------------------------------------------------------------------------

NodesSource = Callable[[], Iterable[Any] | Awaitable[Iterable[Any]]]


def serve(addr: str, registry: CollectorRegistry, nodes: NodesSource | None = None,
          loop: asyncio.AbstractEventLoop | None = None, timeout: float = 5.0,
          tls_dir: Path | None = None) -> MetricsServer:
    """Serve GET /metrics (the registry) and, when `nodes` is given, GET /sd on HOST:PORT from a
    daemon thread. `nodes` may be an async function if `loop` (the loop it belongs to) is given."""
    def current_nodes() -> Iterable[Any]:
        assert nodes is not None
        got = nodes()
        if inspect.isawaitable(got):
            if loop is None:
                raise RuntimeError("an async nodes source needs the event loop it runs on (loop=)")

            async def wait() -> Iterable[Any]:
                return await got

            return asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout)
        return got

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self.reply(200, content_type, encoder(registry))
                elif path == "/sd" and nodes is not None:
                    body = json.dumps(http_sd_targets(current_nodes())).encode()
                    self.reply(200, "application/json", body)
                else:
                    self.reply(404, "text/plain", b"not found: try /metrics or /sd\n")
            except Exception as e:  # Prometheus keeps the last good targets on a failed /sd
                self.reply(500, "text/plain", f"{type(e).__name__}: {e}\n".encode())

    return start_http(addr, Handler, tls_dir)
