"""Volumes: named (docker's local driver), anonymous, bind mounts and tmpfs, as containers use them.

    specs.py    docker's -v, --mount and --tmpfs spellings -> model.Mount, and the agent's checks
    store.py    the volume store: <root>/volumes/<name>/_data, records, local-driver mounts, prune
    service.py  the gRPC servicer of protos/volumes.proto (create, ls, inspect, rm, prune)

The container's side (targets, copy-up, attaching the mounts inside its root) is the init's:
agent/runtime/mounts.py.
"""

from agent.volumes.store import Volume, VolumeStore

__all__ = ["Volume", "VolumeStore"]
