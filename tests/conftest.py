"""Shared fixtures: pytest finds them here, so test modules use them without importing."""

from tests.agent_harness import agent, clean_agent  # noqa: F401
from tests.images import busybox_store, busybox_tar_path  # noqa: F401
