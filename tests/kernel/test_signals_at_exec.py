"""A container's command starts with every signal at its default and none blocked, as under runc:
the agent's processes are Python, which ignores SIGPIPE and SIGXFSZ, and an ignored signal survives
execve (before this, `yes | head -n 1` ran forever in a container)."""

from __future__ import annotations

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_no_signal_ignored_or_blocked_in_run_and_exec(clean_agent: AgentProcess) -> None:
    a = clean_agent
    out = a.cli("run", "--rm", "busybox", "grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status", check=True).stdout
    assert out == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    # SIGPIPE ends the writer of a closed pipe
    r = a.cli("run", "--rm", "busybox", "sh", "-c", "yes | head -n 2", timeout=30, check=True)
    assert r.stdout == "y\ny\n"
    cid = a.run_detached("--init", "busybox", "sleep", "60")
    out = a.cli("exec", cid, "grep", "^SigIgn", "/proc/self/status", check=True).stdout
    assert out == "SigIgn:\t0000000000000000\n"
    out = a.cli("exec", cid, "sh", "-c", "grep ^SigIgn /proc/$(pidof sleep)/status",
                check=True).stdout
    assert out == "SigIgn:\t0000000000000000\n"   # the command under --init's reaper
