"""Image references with docker's grammar and normalisation (distribution/reference).

``busybox``, ``busybox:latest``, ``docker.io/library/busybox:latest`` and
``index.docker.io/library/busybox`` are one reference; it is stored in its full form
(``docker.io/library/busybox:latest``) and shown in its familiar form (``busybox:latest``).
A reference may carry a tag, a digest, or both (``name:tag@sha256:...``); a bare name gets
the tag ``latest``. Image ids and id prefixes are resolved by the image store, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """Full repository name: docker.io/library/busybox."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """Repository name as users write it: busybox, me/app, localhost:5000/app."""
        if self.domain == DEFAULT_DOMAIN:
            if self.path.startswith(OFFICIAL_PREFIX) and "/" not in self.path[len(OFFICIAL_PREFIX) :]:
                return self.path[len(OFFICIAL_PREFIX) :]
            return self.path
        return self.name

    def __str__(self) -> str:
        return self._render(self.name)

    def familiar(self) -> str:
        """busybox:latest, busybox@sha256:..., localhost:5000/app:1."""
        return self._render(self.familiar_name)

    def _render(self, name: str) -> str:
        out = name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, "")


def split_domain(name: str) -> tuple[str, str]:
    i = name.find("/")
    if i == -1 or (
        not any(c in name[:i] for c in ".:") and name[:i] != "localhost" and name[:i].lower() == name[:i]
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = name[:i], name[i + 1 :]
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse(ref: str, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference; ``default_tag`` adds ``:latest`` when there is no tag or digest."""
    if not isinstance(ref, str) or not ref:
        raise InvalidReference("invalid reference format: empty reference")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidReference(f"invalid reference format: {ref!r} contains whitespace")
    if _HEX64.match(ref):
        raise InvalidReference(
            f"invalid repository name ({ref}), cannot specify 64-byte hexadecimal strings"
        )
    remainder = ref
    digest = ""
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(f"invalid reference format: bad digest {digest!r} in {ref!r}")
        algo, hexpart = digest.split(":", 1)
        if algo == "sha256" and not re.fullmatch(r"[0-9a-f]{64}", hexpart):
            raise InvalidReference(f"invalid reference format: sha256 digest in {ref!r} must be 64 lowercase hex")
    tag = ""
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {ref!r}")
    if not remainder:
        raise InvalidReference(f"invalid reference format: no repository name in {ref!r}")
    domain, path = split_domain(remainder)
    if not _DOMAIN.match(domain):
        raise InvalidReference(f"invalid reference format: bad registry {domain!r} in {ref!r}")
    if not _PATH.match(path):
        if _PATH.match(path.lower()):
            raise InvalidReference(f"invalid reference format: repository name must be lowercase: {ref!r}")
        raise InvalidReference(f"invalid reference format: bad repository name {remainder!r} in {ref!r}")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(f"invalid reference format: repository name longer than 255 characters: {ref!r}")
    if default_tag and not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def normalize(ref: str) -> str:
    """Full form of a reference: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    return str(parse(ref))


def familiar(ref: str) -> str:
    """Short form of a reference: ``docker.io/library/busybox:latest`` -> ``busybox:latest``."""
    return parse(ref, default_tag=False).familiar()
