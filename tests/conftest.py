"""Shared fixtures: pytest finds them here, so test modules use them without importing.

At the end of the session every agent the tests started must have left nothing on the host: no
mount under its root, no cgroup, no veth or bridge, no state directory.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import STARTED, agent, clean_agent  # noqa: F401
from tests.images import busybox_store, busybox_tar_path  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _host_is_left_clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = str(tmp_path_factory.getbasetemp())
    with open("/proc/mounts") as f:
        mounts = [ln.split()[1] for ln in f if ln.split()[1].startswith(base)]
    left = [f"mount {m}" for m in mounts]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for a in STARTED:
        left += [f"{a.bridge}: {x}" for x in a.leftovers()]
        if f" {a.bridge}:" in links:
            left.append(f"bridge {a.bridge}")
        if Path(a.base).exists():
            left.append(f"state {a.base}")
    assert not left, f"the tests left these on the host: {left}"
