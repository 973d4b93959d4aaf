"""Scorers: `(node, request) -> 0..100`, higher is better; the pipeline records each one's value.

The math is in free functions over plain numbers (as kube-scheduler's balancedResourceScorer),
the scorers are thin wrappers that read a NodeState.
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler.constraints import attribute_getter
from scheduler.placement.state import NodeState, PlacementRequest

Scorer = Callable[[NodeState, PlacementRequest], float]


def free_share(cpu_used: int, cpu_want: int, cpu_cap: int, mem_used: int, mem_want: int, mem_cap: int) -> float:
    """0..100: mean share of CPU and memory left after placing; a resource without capacity counts as free."""
    cpu = (cpu_cap - cpu_used - cpu_want) / cpu_cap if cpu_cap > 0 else 1.0
    mem = (mem_cap - mem_used - mem_want) / mem_cap if mem_cap > 0 else 1.0
    return 50.0 * ((cpu if cpu > 0.0 else 0.0) + (mem if mem > 0.0 else 0.0))


def fewer_is_better(count: int, lowest: int, highest: int) -> float:
    """100 for the least loaded group, falling linearly to near 0 for the most loaded."""
    return 100.0 * (1.0 - (count - lowest) / (highest - lowest + 1))


def least_allocated(node: NodeState, req: PlacementRequest) -> float:
    # free_share's math, inlined: this runs for every scored node of every placement.
    r = req.reservations
    cap = node.cpu_cap
    cpu = (cap - node.cpu_used - r.nano_cpus) / cap if cap > 0 else 1.0
    cap = node.mem_cap
    mem = (cap - node.mem_used - r.memory_bytes) / cap if cap > 0 else 1.0
    return 50.0 * ((cpu if cpu > 0.0 else 0.0) + (mem if mem > 0.0 else 0.0))


def most_allocated(node: NodeState, req: PlacementRequest) -> float:
    return 100.0 - least_allocated(node, req)


def service_spread(node: NodeState, req: PlacementRequest) -> float:
    """Fewer tasks of this service on the node is better: replicas land on different nodes."""
    return 100.0 / (1 + node.service_tasks.get(req.service, 0))


def label_spread(node: NodeState, req: PlacementRequest) -> float:
    """Swarm's `preferences: - spread: node.labels.zone`: even counts across the label's values."""
    if not req.spread:
        return 100.0
    total = 0.0
    for key in req.spread:
        mine = req.spread_counts.get(key, {}).get(attribute_getter(key)(node.node) or "", 0)
        lo, hi = req.spread_bounds.get(key, (0, 0))
        total += fewer_is_better(mine, min(lo, mine), max(hi, mine))
    return total / len(req.spread)


def image_locality(node: NodeState, req: PlacementRequest) -> float:
    """A node that already has the image starts the task without a pull."""
    return 100.0 if req.image in node.images else 0.0
