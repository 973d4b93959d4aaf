"""The placement pipeline: every filter and scorer, in order, in one place.

place() walks the nodes from a rotating cursor, keeps the first `limit` feasible ones and scores
only those ("power of two choices", as Nomad's LimitIterator): about log2(N) nodes per task in a
large cluster, every node in a small one. A task that fits nowhere gets back every node's reason,
counted: "pending: 3 nodes lack 512 MiB memory, 2 nodes have port 80 taken". Not fitting is a
value (Pending), never an exception.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from scheduler.placement import filters, scorers
from scheduler.placement.filters import Filter
from scheduler.placement.scorers import Scorer
from scheduler.placement.state import ClusterState, NodeState, PlacementRequest, Reason


@dataclass(frozen=True, slots=True)
class Placed:
    node: str
    score: float
    why: tuple[tuple[str, float], ...]  # each scorer's 0..100, as ("binpack", 83.0)
    considered: int  # feasible nodes scored


@dataclass(frozen=True, slots=True)
class Pending:
    reasons: tuple[tuple[int, Reason], ...]  # (how many nodes, why), most common first

    @property
    def message(self) -> str:
        if not self.reasons:
            return "pending: no nodes in the cluster"
        parts = [f"{n} node{' ' + r.singular if n == 1 else 's ' + r.plural}" for n, r in self.reasons]
        return "pending: " + ", ".join(parts)

    def __str__(self) -> str:
        return self.message


Decision = Placed | Pending


class Pipeline:
    def __init__(self, *, score_all_up_to: int = 64) -> None:
        # Filters, cheapest and most common rejection first; a node's reason is the first failure.
        self.filters: tuple[tuple[str, Filter], ...] = (
            ("ready", filters.node_ready),  # down nodes: no lease, so nothing else about them matters
            ("active", filters.node_active),  # drained nodes keep nothing new
            ("constraints", filters.constraints),  # node.labels.zone == a, node.hostname != h1, node.role
            ("max_replicas", filters.max_replicas_per_node),  # per-node count of this service's tasks
            ("cpu", filters.cpu),  # reservations against capacity minus what tasks hold
            ("memory", filters.memory),
            ("ports", filters.host_ports),  # published ports bind the host: one task per port per node
        )
        # Scorers and their weights per strategy; the final score is the weighted mean, 0..100.
        self.scorers: dict[str, tuple[tuple[str, Scorer, float], ...]] = {
            "spread": (
                ("spread_label", scorers.label_spread, 4.0),  # preferences: spread across zones first
                ("spread_nodes", scorers.service_spread, 3.0),  # then replicas on different nodes
                ("least_allocated", scorers.least_allocated, 1.0),  # then the emptier node
                ("image_locality", scorers.image_locality, 0.5),  # a tie goes to a node with the image
            ),
            "binpack": (
                ("spread_label", scorers.label_spread, 4.0),  # an explicit preference still holds
                ("binpack", scorers.most_allocated, 3.0),  # fill nodes up, keep others empty
                ("image_locality", scorers.image_locality, 0.5),
            ),
        }
        self.score_all_up_to = score_all_up_to

    def limit(self, n_nodes: int) -> int:
        if n_nodes <= self.score_all_up_to:
            return n_nodes
        return max(2, math.ceil(math.log2(n_nodes)))

    def check(self, node: NodeState, req: PlacementRequest) -> Reason | None:
        for _, f in self.filters:
            reason = f(node, req)
            if reason is not None:
                return reason
        return None

    def score(self, node: NodeState, req: PlacementRequest) -> tuple[float, tuple[tuple[str, float], ...]]:
        stages = self.scorers.get(req.strategy, self.scorers["spread"])
        total = weights = 0.0
        why = []
        for name, scorer, weight in stages:
            s = scorer(node, req)
            why.append((name, round(s, 1)))
            total += weight * s
            weights += weight
        return total / weights, tuple(why)

    def place(self, cluster: ClusterState, req: PlacementRequest) -> Decision:
        """Choose a node for one task and record it in `cluster`, or say why no node fits."""
        order = cluster.order
        n = len(order)
        limit = self.limit(n)
        feasible: list[NodeState] = []
        rejected: Counter[Reason] = Counter()
        filters_ = [f for _, f in self.filters]
        start = cluster.cursor
        i = 0
        while i < n:
            node = order[(start + i) % n]
            i += 1
            for f in filters_:
                reason = f(node, req)
                if reason is not None:
                    rejected[reason] += 1
                    break
            else:
                feasible.append(node)
                if len(feasible) >= limit:
                    break
        cluster.cursor = (start + i) % n if n else 0
        if not feasible:
            ranked = sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0].plural))
            return Pending(tuple((count, reason) for reason, count in ranked))
        best: NodeState | None = None
        best_score = -1.0
        best_why: tuple[tuple[str, float], ...] = ()
        for node in feasible:
            s, why = self.score(node, req)
            if s > best_score:
                best, best_score, best_why = node, s, why
        assert best is not None
        cluster.assign(req, best.node.name)
        return Placed(best.node.name, round(best_score, 2), best_why, len(feasible))
