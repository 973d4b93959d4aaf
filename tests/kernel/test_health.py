"""Health checks run by the agent for every container: --health-* flags, the image's HEALTHCHECK,
--no-healthcheck; the state in inspect (docker's State.Health) and ps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _health(a: AgentProcess, ref: str) -> str:
    return str(a.inspect(ref)["State"].get("Health", {}).get("Status", ""))


def test_health_goes_starting_healthy_unhealthy(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.run_detached("--health-cmd", "test -e /tmp/ok && echo fine", "--health-interval", "2s",
                         "--health-retries", "2", "--health-timeout", "2s", "busybox", "sh", "-c",
                         "touch /tmp/ok; sleep 5; rm /tmp/ok; sleep 60")
    assert _health(a, cid) == "starting"  # (the first check is an interval after the start)
    a.wait_for(lambda: _health(a, cid) == "healthy", 10, "healthy")
    assert "(healthy)" in a.cli("ps", check=True).stdout
    log = a.inspect(cid)["State"]["Health"]["Log"]
    assert log[-1]["ExitCode"] == 0 and log[-1]["Output"] == "fine\n"
    a.wait_for(lambda: _health(a, cid) == "unhealthy", 15, "unhealthy")
    doc = a.inspect(cid)["State"]["Health"]
    assert doc["FailingStreak"] >= 2 and doc["Log"][-1]["ExitCode"] == 1
    assert "(unhealthy)" in a.cli("ps", check=True).stdout
    a.cli("rm", "-f", cid, check=True)


def test_the_images_healthcheck_runs_unless_disabled(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nHEALTHCHECK --interval=1s CMD [\"true\"]\n")
    a.cli("build", "-t", "checked", str(ctx), check=True, timeout=120)
    cid = a.run_detached("checked", "sleep", "60")
    a.wait_for(lambda: _health(a, cid) == "healthy", 10, "healthy from the image's HEALTHCHECK")
    off = a.run_detached("--no-healthcheck", "checked", "sleep", "60")
    assert "Health" not in a.inspect(off)["State"]
    # the run's command replaces the image's, its interval kept
    bad = a.run_detached("--health-cmd", "false", "--health-retries", "1", "checked", "sleep", "60")
    a.wait_for(lambda: _health(a, bad) == "unhealthy", 10, "unhealthy with the run's own test")
    for c in (cid, off, bad):
        a.cli("rm", "-f", c, check=True)
    a.cli("rmi", "checked", check=True)


def test_bad_health_flags_are_refused(clean_agent: AgentProcess) -> None:
    for flags, error in [(("--health-cmd", " "), "the health command is empty"),
                         (("--no-healthcheck", "--health-cmd", "true"), "conflicts with --health-*"),
                         (("--health-interval", "soon"), "invalid duration 'soon'")]:
        r = clean_agent.cli("run", "--rm", *flags, "busybox", "true")
        assert r.returncode != 0 and error in r.stderr, (flags, r.stderr)
