"""Feasibility filters: `(node, request) -> None` when the task fits, else the Reason it does not.

Each is tiny and pure; the order they run in is decided in pipeline.py. Reasons are cached
values, so a 5,000-node scan that rejects most nodes allocates almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from scheduler.model import format_bytes, format_cpus
from scheduler.placement.state import NodeState, PlacementRequest, Reason

Filter = Callable[[NodeState, PlacementRequest], Reason | None]

DOWN = Reason("down", "are down", "is down")
DRAINED = Reason("drained", "are drained", "is drained")
DISK_FULL = Reason("disk", "are almost out of disk", "is almost out of disk")


def node_ready(node: NodeState, req: PlacementRequest) -> Reason | None:
    return None if node.ready else DOWN


def node_active(node: NodeState, req: PlacementRequest) -> Reason | None:
    return None if node.active else DRAINED


def node_has_room(node: NodeState, req: PlacementRequest) -> Reason | None:
    """The agent said in its heartbeat that it takes no new work (agent/diskspace.py)."""
    return DISK_FULL if node.pressure else None


@lru_cache(maxsize=4096)
def _unmatched(text: str) -> Reason:
    return Reason("constraint", f"do not match {text}", f"does not match {text}")


def constraints(node: NodeState, req: PlacementRequest) -> Reason | None:
    for c in req.constraints:
        if not c.matches(node.node):
            return _unmatched(c.text)
    return None


@lru_cache(maxsize=4096)
def _max_replicas(service: str, limit: int) -> Reason:
    what = f"{limit} task{'s' if limit != 1 else ''} of {service} (max_replicas_per_node)"
    return Reason("max_replicas", f"already run {what}", f"already runs {what}")


def max_replicas_per_node(node: NodeState, req: PlacementRequest) -> Reason | None:
    limit = req.max_replicas_per_node
    if limit and node.service_tasks.get(req.service, 0) >= limit:
        return _max_replicas(req.service, limit)
    return None


@lru_cache(maxsize=4096)
def _lack_cpu(nano: int) -> Reason:
    return Reason("cpu", f"lack {format_cpus(nano)}", f"lacks {format_cpus(nano)}")


@lru_cache(maxsize=4096)
def _lack_memory(n: int) -> Reason:
    return Reason("memory", f"lack {format_bytes(n)} memory", f"lacks {format_bytes(n)} memory")


def resources(node: NodeState, req: PlacementRequest) -> Reason | None:
    """CPU and memory reservations against capacity minus what the node's tasks hold (one filter,
    as kube's NodeResourcesFit: both are read from the same place, one call per node is cheaper)."""
    r = req.reservations
    if node.cpu_used + r.nano_cpus > node.cpu_cap and r.nano_cpus:
        return _lack_cpu(r.nano_cpus)
    if node.mem_used + r.memory_bytes > node.mem_cap and r.memory_bytes:
        return _lack_memory(r.memory_bytes)
    return None


@lru_cache(maxsize=4096)
def _port_taken(port: int, proto: str) -> Reason:
    p = str(port) if proto == "tcp" else f"{port}/{proto}"
    return Reason("port", f"have port {p} taken", f"has port {p} taken")


def host_ports(node: NodeState, req: PlacementRequest) -> Reason | None:
    for hp in req.host_ports:
        if hp in node.ports:
            return _port_taken(*hp)
    return None
