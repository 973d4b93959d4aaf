"""Images: content store, overlay snapshotter, image configs and references, import/export,
docker-archive and OCI-layout save/load. See README.md for the flow.

Everything the agent's servicer and the runtime use is re-exported here; the modules behind it are
small (store, snapshotter, reference, config, layers, archive, imagestore).
"""

from .config import Image, ImageConfig, apply_change, apply_changes, chain_id, chain_ids
from .errors import (
    ImageError,
    ImageInUse,
    ImageNotFound,
    InvalidArchive,
    InvalidChange,
    InvalidReference,
)
from .imagestore import ImageStore
from .layers import LayerStats, apply_layer, write_diff, write_flattened
from .reference import Reference, familiar, normalize, parse
from .snapshotter import Mount, SnapshotExists, Snapshotter, mount_all, overlay_mount_data
from .store import ContentStore

__all__ = [
    "ContentStore",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "ImageStore",
    "InvalidArchive",
    "InvalidChange",
    "InvalidReference",
    "LayerStats",
    "Mount",
    "Reference",
    "SnapshotExists",
    "Snapshotter",
    "apply_change",
    "apply_changes",
    "apply_layer",
    "chain_id",
    "chain_ids",
    "familiar",
    "mount_all",
    "normalize",
    "overlay_mount_data",
    "parse",
    "write_diff",
    "write_flattened",
]
