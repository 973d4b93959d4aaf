"""The images package's exceptions: each is one of the agent's error kinds (agent/errors.py), which
agent/status.py maps to gRPC status codes.

Every message names the thing that was wrong: the archive member, the blob digest, the field.
"""

from __future__ import annotations

from agent.errors import AgentError, Conflict, InvalidArgument, NotFound


class ImageError(AgentError):
    """Base of every error this package raises on purpose; as such, the client's input was bad."""


class ImageNotFound(ImageError, NotFound):
    """No image, tag, blob or snapshot answers to the name given."""


class ImageInUse(ImageError, Conflict):
    """Removal refused: a container (or a child snapshot) still uses it."""


class InvalidArchive(ImageError, InvalidArgument):
    """A tarball, layer, manifest or blob is malformed, hostile, truncated or fails its digest."""


class InvalidReference(ImageError, InvalidArgument):
    """A reference (name:tag, name@digest) that does not follow docker's grammar."""


class InvalidChange(ImageError, InvalidArgument):
    """An --change instruction (Dockerfile syntax) that cannot be applied."""
