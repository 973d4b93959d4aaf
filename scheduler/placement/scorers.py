"""Scorers: `(node, request) -> 0..100`, higher is better; the pipeline records each one's value.

The math is in free functions over plain numbers (as kube-scheduler's balancedResourceScorer),
the scorers are thin wrappers that read a NodeState.
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler.constraints import node_attribute
from scheduler.placement.state import NodeState, PlacementRequest

Scorer = Callable[[NodeState, PlacementRequest], float]


def free_fraction(used: int, want: int, capacity: int) -> float:
    """Share of capacity left after placing `want`; 1.0 for a resource the node does not count."""
    if capacity <= 0:
        return 1.0
    return max(0.0, (capacity - used - want) / capacity)


def fewer_is_better(count: int, lowest: int, highest: int) -> float:
    """100 for the least loaded group, falling linearly to near 0 for the most loaded."""
    return 100.0 * (1.0 - (count - lowest) / (highest - lowest + 1))


def least_allocated(node: NodeState, req: PlacementRequest) -> float:
    cap = node.node.capacity
    r = req.reservations
    return 50.0 * (free_fraction(node.cpu_used, r.nano_cpus, cap.nano_cpus)
                   + free_fraction(node.mem_used, r.memory_bytes, cap.memory_bytes))


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
        counts = req.spread_counts.get(key, {})
        values = req.spread_values.get(key, ())
        mine = counts.get(node_attribute(node.node, key) or "", 0)
        if values:
            per = [counts.get(v, 0) for v in values]
            total += fewer_is_better(mine, min(per), max(max(per), mine))
        else:
            total += fewer_is_better(mine, 0, mine)
    return total / len(req.spread)


def image_locality(node: NodeState, req: PlacementRequest) -> float:
    """A node that already has the image starts the task without a pull."""
    return 100.0 if req.image and req.image in node.node.images else 0.0
