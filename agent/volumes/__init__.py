"""Volumes: named (docker's local driver), anonymous, bind mounts and tmpfs, as containers use them.

    specs.py    docker's -v, --mount and --tmpfs spellings -> model.Mount, and the agent's checks (the
                CLI sends its flags as typed, ContainerConfig.volume_flags..., parsed here: from_flags)
    store.py    the volume store: <root>/volumes/<name>/_data, records, local-driver mounts, prune
    service.py  the gRPC servicer of protos/volumes.proto (create, ls, inspect, rm, prune)

The container's side (targets, copy-up, attaching the mounts inside its root) is the init's:
agent/runtime/mounts.py.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (typing itself costs a fast command's start; only for mypy)
if TYPE_CHECKING:
    from agent.volumes.store import Volume, VolumeStore

__all__ = ["Volume", "VolumeStore"]


def __getattr__(name: str) -> object:
    # Loaded when asked for: the CLI's fast `run -v` imports specs.py alone (the store imports
    # ctypes, subprocess and more, ~30 ms of a command's start)
    if name in __all__:
        from agent.volumes import store

        return getattr(store, name)
    raise AttributeError(name)
