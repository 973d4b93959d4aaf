"""Finding and checking a CRIU binary, and the lazy-pages watchdog (pure: no CRIU run, no root);
dumps and restores are in tests/cluster/test_criu.py."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from agent.checkpoint import Criu, find_criu, needed_version, parse_version


def test_parse_version() -> None:
    assert parse_version("Version: 4.1.1\n") == (4, 1, 1)
    assert parse_version("criu version 3.17.1") == (3, 17, 1)
    assert parse_version("GitID: v4.1") is None


def test_needed_version_follows_the_kernel() -> None:
    assert needed_version("6.1.0-21-amd64") == (4, 0)
    assert needed_version("6.16.0") == (4, 2)
    assert needed_version("6.18.44-fc-v782") == (4, 2)


def test_override_that_does_not_run_finds_nothing(tmp_path: Path) -> None:
    assert find_criu({"DOCKYARD_CRIU": str(tmp_path / "missing"), "PATH": ""}) is None
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    old.chmod(0o755)
    assert find_criu({"DOCKYARD_CRIU": str(old), "PATH": ""}) is None


def test_check_reports_a_broken_criu(tmp_path: Path) -> None:
    broken = tmp_path / "criu"
    broken.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'Version: 4.0'; exit 0; }\necho 'Error (x.c:1): no'\nexit 1\n"
    )
    broken.chmod(0o755)
    caps = Criu(str(broken)).check(features=("uffd",))
    assert not caps.works and "no" in caps.reason and not caps.lazy_pages


def test_the_lazy_pages_watchdog_kills_the_restored_tree_only_when_the_daemon_fails(tmp_path: Path) -> None:
    """The shell that runs `criu lazy-pages` (agent/checkpoint/lazy.py): a daemon that fails takes
    the restored tree (the pid in the restore's pidfile) with it; one that succeeds leaves it."""
    from agent.checkpoint.lazy import _WATCHDOG

    for daemon_rc, survives in ((0, True), (3, False)):
        tree = subprocess.Popen(["sleep", "60"])
        try:
            pidfile = tmp_path / "restore.pid"
            pidfile.write_text(str(tree.pid))
            r = subprocess.run(["/bin/sh", "-c", _WATCHDOG, "watchdog", str(pidfile), "sh", "-c", f"exit {daemon_rc}"],
                               timeout=10, check=False)
            assert r.returncode == daemon_rc
            try:
                tree.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            assert (tree.poll() is None) == survives
            if not survives:
                assert tree.returncode == -signal.SIGKILL
        finally:
            tree.kill()
            tree.wait()
