"""The images package's one exception hierarchy (mapped to gRPC status codes by the servicer).

Every message names the thing that was wrong: the archive member, the blob digest, the field.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base of every error this package raises on purpose."""


class ImageNotFound(ImageError):
    """No image, tag, blob or snapshot answers to the name given."""


class ImageInUse(ImageError):
    """Removal refused: a container (or a child snapshot) still uses it."""


class InvalidArchive(ImageError):
    """A tarball, layer, manifest or blob is malformed, hostile, truncated or fails its digest."""


class InvalidReference(ImageError):
    """A reference (name:tag, name@digest) that does not follow docker's grammar."""


class InvalidChange(ImageError):
    """An --change instruction (Dockerfile syntax) that cannot be applied."""
