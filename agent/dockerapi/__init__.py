"""Docker's Engine API on the agent (docker CLI, docker-py, compose): see README.md here."""

from .api import DockerAPI, parse_tcp, start

__all__ = ["DockerAPI", "parse_tcp", "start"]
