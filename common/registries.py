"""Names of registries that the agent (pull, push) and the CLI (its credentials) must agree on,
in a module light enough for the CLI's fast image commands."""

from __future__ import annotations

DEFAULT_DOMAIN = "docker.io"
DOCKER_HUB = "registry-1.docker.io"
DOCKER_INDEX_SERVER = "https://index.docker.io/v1/"


def config_key(domain: str) -> str:
    """The key of a registry in config.json's "auths" (docker.io's is its v1 index URL, as docker's)."""
    return DOCKER_INDEX_SERVER if domain in (DEFAULT_DOMAIN, DOCKER_HUB, "index.docker.io") else domain
