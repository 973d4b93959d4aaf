"""Checkpoint and restore of a container's process tree with CRIU (live migration's engine)."""

from agent.checkpoint.criu import (
    PRIVATE_CRIU,
    PROBED_FEATURES,
    Criu,
    CriuCapabilities,
    CriuError,
    find_criu,
    needed_version,
    parse_version,
)

__all__ = [
    "PRIVATE_CRIU",
    "PROBED_FEATURES",
    "Criu",
    "CriuCapabilities",
    "CriuError",
    "find_criu",
    "needed_version",
    "parse_version",
]
