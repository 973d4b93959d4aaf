"""The short fault-injection soak of every run (tests/soak.py; `make soak` runs the long one):
three netns hosts, two schedulers on a 3-member etcd, a stack of three services, faults from a
seeded schedule for SOAK_TEST_S seconds (default 75), the invariants checked from the hosts'
kernels all along. The seed is printed first: `python -m tests.soak --seed S` replays it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.multihost import multihost_session_check_fixture  # noqa: F401
from tests.soak import soak_cluster

pytestmark = [pytest.mark.multinode, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow,
              pytest.mark.timeout(900)]


def test_short_soak_keeps_every_invariant(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
                                          multihost_session_check: None) -> None:
    seed = int(os.environ.get("SOAK_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
    print(f"\nsoak: seed {seed}")
    # a short base: the agents' unix sockets live below it (108 bytes at most)
    with soak_cluster(tmp_path_factory.mktemp("soak", numbered=True), busybox_tar_path, seed) as s:
        report = s.run(float(os.environ.get("SOAK_TEST_S", "75")))
    print(report.table())
    assert report.faults, "no fault was injected"
    assert not report.violations, "\n".join(report.violations)
