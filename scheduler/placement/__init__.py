"""Placement: filters.py (does it fit), scorers.py (how well), pipeline.py (the order of both)."""

from scheduler.placement.pipeline import Decision, Pending, Pipeline, Placed
from scheduler.placement.state import ClusterState, NodeState, PlacementRequest, Reason

__all__ = [
           "ClusterState",
           "Decision",
           "NodeState",
           "Pending",
           "Pipeline",
           "Placed",
           "PlacementRequest",
           "Reason",
]
