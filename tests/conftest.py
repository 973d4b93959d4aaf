"""Shared fixtures: pytest finds them here, so test modules use them without importing.

At the end of the session every agent the tests started must have left nothing on the host: no
mount under its root, no cgroup, no veth or bridge, no state directory.

Markers are checked, so they cannot lie quietly:
- a test under tests/unit/ may not be marked root, etcd, criu or multinode (those belong in
  tests/kernel/ or tests/cluster/): collection stops and names it;
- with ``--max-unmarked-seconds=N`` (``make test`` and ``make test-fast`` pass 2), a test whose call
  takes longer than N seconds without the ``slow`` marker fails the run, listed by name and time.
  Only the call is timed: module fixtures (an agent, etcd, netns hosts) are paid once per module.
  N is scaled by the load per core when that is above 1 (``load_factor``), so a busy machine does
  not fail a quick test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import STARTED, agent, clean_agent  # noqa: F401
from tests.images import busybox_store, busybox_tar_path  # noqa: F401

UNIT = Path(__file__).resolve().parent / "unit"
NOT_IN_UNIT = ("root", "etcd", "criu", "multinode")
_unmarked_slow: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--max-unmarked-seconds", type=float, default=None, metavar="N",
                     help="fail the run if a test not marked slow takes more than N seconds (its call)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = [f"{item.nodeid} (marked {m})" for item in items if item.path.is_relative_to(UNIT)
             for m in NOT_IN_UNIT if item.get_closest_marker(m) is not None]
    if wrong:
        raise pytest.UsageError("tests/unit/ holds tests that need no root, etcd, CRIU or netns hosts; "
                                "move these to tests/kernel/ or tests/cluster/: " + ", ".join(wrong))


def load_factor() -> float:
    """How much slower than an idle machine a test runs now: the 1-minute load per core, at least 1.
    The machines are shared (eight builds on 2 cores), and a 1 s test takes 2.5 s at load 5."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    yield
    limit = item.config.getoption("max_unmarked_seconds")
    if limit is None or call.when != "call" or item.get_closest_marker("slow") is not None:
        return
    factor = load_factor()
    if call.duration > limit * factor:
        _unmarked_slow.append(f"{item.nodeid} took {call.duration:.1f} s (load {factor:.1f}x a core)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _unmarked_slow:
        limit = config.getoption("max_unmarked_seconds")
        terminalreporter.section(f"tests over {limit:g} s without the slow marker (mark them slow)")
        for line in _unmarked_slow:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unmarked_slow and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
