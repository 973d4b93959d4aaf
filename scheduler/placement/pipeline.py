"""The placement pipeline: every filter and scorer, in order, in one place.

place() walks the nodes from a rotating cursor, keeps the first `limit` feasible ones and scores
only those ("power of two choices", as Nomad's LimitIterator): about log2(N) nodes per task in a
large cluster, every node in a small one. A task that fits nowhere gets back every node's reason,
counted: "pending: 3 nodes lack 512 MiB memory, 2 nodes have port 80 taken". Not fitting is a
value (Pending), never an exception.
"""

from __future__ import annotations

import heapq
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
    why: tuple[tuple[str, float], ...]  # each scorer's 0..100, as ("binpack", 83.3); round when shown
    considered: int  # feasible nodes scored


@dataclass(frozen=True, slots=True)
class Pending:
    reasons: tuple[tuple[int, Reason], ...]  # (how many nodes, why), most common first
    note: str = ""  # a cause no node can fix ("no free address in appnet"): said instead of reasons

    @property
    def message(self) -> str:
        if self.note:
            return f"pending: {self.note}"
        if not self.reasons:
            return "pending: no nodes in the cluster"
        parts = [f"{n} node{' ' + r.singular if n == 1 else 's ' + r.plural}" for n, r in self.reasons]
        return "pending: " + ", ".join(parts)

    def __str__(self) -> str:
        return self.message


Decision = Placed | Pending


class Pipeline:
    def __init__(self, *, score_all_up_to: int = 64) -> None:
        # Node filters: they never read the request, so they run once per planning pass over all
        # nodes (as Nomad selects ready nodes once per evaluation), not once per task.
        self.node_filters: tuple[tuple[str, Filter], ...] = (
            ("ready", filters.node_ready),  # down nodes: no lease, so nothing else about them matters
            ("active", filters.node_active),  # drained nodes keep nothing new
            ("room", filters.node_has_room),  # nor does a node whose agent says its disk is almost full
        )
        # Task filters, cheapest and most common rejection first; a node's reason is the first failure.
        self.filters: tuple[tuple[str, Filter], ...] = (
            ("constraints", filters.constraints),  # node.labels.zone == a, node.hostname != h1, node.role
            ("max_replicas", filters.max_replicas_per_node),  # per-node count of this service's tasks
            ("resources", filters.resources),  # cpu, then memory reservations against what is left
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
        self._stage_cache: dict[tuple[object, ...], tuple[list[Filter], list[tuple[Scorer, float]]]] = {}

    def limit(self, n_nodes: int) -> int:
        if n_nodes <= self.score_all_up_to:
            return n_nodes
        return max(2, math.ceil(math.log2(n_nodes)))

    def _stages(self, req: PlacementRequest) -> tuple[list[Filter], list[tuple[Scorer, float]]]:
        """The filters and scorers that can matter for this request (as kube's PreFilter Skip):
        no constraints, ports or reservations means those filters always pass; no spread
        preference or image means those scores are equal on every node."""
        key = (req.strategy, bool(req.constraints), bool(req.max_replicas_per_node),
               bool(req.reservations.nano_cpus), bool(req.reservations.memory_bytes), bool(req.host_ports),
               bool(req.spread), bool(req.image))
        cached = self._stage_cache.get(key)
        if cached is not None:
            return cached
        skip = set()
        if not req.constraints:
            skip.add("constraints")
        if not req.max_replicas_per_node:
            skip.add("max_replicas")
        if req.reservations.is_zero:
            skip.add("resources")
        if not req.host_ports:
            skip.add("ports")
        if not req.spread:
            skip.add("spread_label")
        if not req.image:
            skip.add("image_locality")
        fs = [f for name, f in self.filters if name not in skip]
        ss = [(s, w) for name, s, w in self.scorers.get(req.strategy, self.scorers["spread"]) if name not in skip]
        self._stage_cache[key] = (fs, ss)
        return fs, ss

    def prepare(self, cluster: ClusterState) -> None:
        """Run the node filters once: the walk order keeps only nodes that pass them."""
        probe = PlacementRequest(service="")
        order, excluded = [], Counter[Reason]()
        for node in cluster.walk:
            for _, f in self.node_filters:
                reason = f(node, probe)
                if reason is not None:
                    excluded[reason] += 1
                    break
            else:
                order.append(node)
        cluster.order, cluster.excluded, cluster.prepared = order, excluded, True

    def check(self, node: NodeState, req: PlacementRequest) -> Reason | None:
        """The first filter this node fails for `req`, node filters included; None when it fits."""
        for _, f in (*self.node_filters, *self.filters):
            reason = f(node, req)
            if reason is not None:
                return reason
        return None

    def explain(self, node: NodeState, req: PlacementRequest) -> tuple[float, tuple[tuple[str, float], ...]]:
        """Every scorer's value on this node and the weighted total, 0..100."""
        stages = self.scorers.get(req.strategy, self.scorers["spread"])
        total = weights = 0.0
        why = []
        for name, scorer, weight in stages:
            s = scorer(node, req)
            why.append((name, s))
            total += weight * s
            weights += weight
        return total / weights, tuple(why)

    def place(self, cluster: ClusterState, req: PlacementRequest) -> Decision:
        """Choose a node for one task and record it in `cluster`, or say why no node fits."""
        if not cluster.prepared:
            self.prepare(cluster)
        order = cluster.order
        n = len(order)
        limit = self.limit(n)
        filters_, scorers_ = self._stages(req)
        # Walk from the cursor; score each feasible node as it is found; stop after `limit` of them.
        found = 0
        best: NodeState | None = None
        best_score = -1.0
        i = start = cluster.cursor if cluster.cursor < n else 0
        for _ in range(n):
            node = order[i]
            i += 1
            if i == n:
                i = 0
            for f in filters_:
                if f(node, req) is not None:
                    break
            else:
                s = 0.0
                for scorer, weight in scorers_:
                    s += weight * scorer(node, req)
                if s > best_score:
                    best, best_score = node, s
                found += 1
                if found >= limit:
                    break
        cluster.cursor = i
        if best is None:
            return self.reasons(cluster, req, filters_, start)
        score, why = self.explain(best, req)  # recorded for the winner only: the others cost nothing
        cluster.assign(req, best.node.name)
        return Placed(best.node.name, score, why, found)

    def place_many(self, cluster: ClusterState, req: PlacementRequest, count: int) -> list[Decision]:
        """Place `count` tasks of one request: the same choices as `count` calls of place(), cheaper.

        Each choice is still the best of at least `limit` feasible nodes from the walk, but the
        candidates are kept in a heap between choices: after a task lands, only that node's score
        changes (every scorer here is per node), so only it is re-checked and re-scored, and one
        more node is pulled from the walk. About 2 nodes are looked at per task instead of log2(N).
        Label spread changes the score of every node with the same label value, so requests with a
        spread preference are placed one by one.
        """
        if count <= 1 or req.spread:
            return [self.place(cluster, req) for _ in range(count)]
        if not cluster.prepared:
            self.prepare(cluster)
        order = cluster.order
        n = len(order)
        filters_, scorers_ = self._stages(req)
        heap: list[tuple[float, int, NodeState]] = []  # (-score, walk position: the tie-break, node)
        seq = 0
        walked = 0
        i = start = cluster.cursor if cluster.cursor < n else 0

        def fits(node: NodeState) -> bool:
            for f in filters_:  # noqa: SIM110 - a plain loop: all() over a generator costs a frame per node
                if f(node, req) is not None:
                    return False
            return True

        def score(node: NodeState) -> float:
            s = 0.0
            for scorer, weight in scorers_:
                s += weight * scorer(node, req)
            return s

        def pull(k: int) -> None:
            nonlocal i, walked, seq
            added = 0
            while added < k and walked < n:
                node = order[i]
                i += 1
                walked += 1
                if i == n:
                    i = 0
                if fits(node):
                    heapq.heappush(heap, (-score(node), seq, node))
                    seq += 1
                    added += 1

        pull(self.limit(n))
        out: list[Decision] = []
        for placed_so_far in range(count):
            if not heap:
                cluster.cursor = i
                pending = self.reasons(cluster, req, filters_, start)
                out.extend([pending] * (count - placed_so_far))
                return out
            considered = len(heap)
            _, pos, best = heapq.heappop(heap)
            score_, why = self.explain(best, req)
            cluster.assign(req, best.node.name)
            out.append(Placed(best.node.name, score_, why, considered))
            if fits(best):  # only this node changed: the rest of the heap is still exact
                heapq.heappush(heap, (-score(best), pos, best))
            pull(1)
        cluster.cursor = i
        return out

    def reasons(self, cluster: ClusterState, req: PlacementRequest, filters_: list[Filter], start: int) -> Pending:
        """Every node's reason, counted. Only walked when nothing fits, so the fast scan records none."""
        rejected: Counter[Reason] = Counter(cluster.excluded)
        for node in cluster.order:
            for f in filters_:
                reason = f(node, req)
                if reason is not None:
                    rejected[reason] += 1
                    break
        ranked = sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0].plural))
        return Pending(tuple((count, reason) for reason, count in ranked))
