"""Settings (common/settings.py): flags over environment over the TOML file over the defaults, for
the agent and the scheduler; bad files named; every DOCKYARD_* variable the code reads is listed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from common import settings
from deploy import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent_options(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `dockyard agent` would run with: agent.daemon.run replaced by a recorder."""
    import agent.daemon

    seen: list[Any] = []
    monkeypatch.setattr(agent.daemon, "run", seen.append)
    return seen


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.main, args, env=env or {}, catch_exceptions=False)


def test_defaults_come_from_settings(agent_options: list[Any]) -> None:
    r = invoke(["agent"])
    assert r.exit_code == 0, r.output
    (o,) = agent_options
    assert (o.root, o.socket, o.bridge, o.subnet, o.metrics_addr, o.docker_socket) == (
        settings.ROOT, settings.AGENT_SOCKET, settings.BRIDGE, settings.SUBNET, settings.AGENT_METRICS,
        settings.DOCKER_SOCKET)


def test_flag_over_environment_over_file(agent_options: list[Any], tmp_path: Path) -> None:
    f = tmp_path / "dockyard.toml"
    f.write_text('[agent]\nbridge = "fromfile"\nsubnet = "10.9.0.0/16"\nmetrics-addr = ""\nlabel = ["zone=a", "ssd=1"]\n'
                 '[scheduler]\nlisten = "127.0.0.1:1"\n')
    env = {"DOCKYARD_AGENT_BRIDGE": "fromenv", "DOCKYARD_AGENT_CONFIG": str(f)}
    assert invoke(["agent"], env).exit_code == 0
    assert invoke(["agent", "--bridge", "fromflag"], env).exit_code == 0
    assert invoke(["agent", "--config", str(f)]).exit_code == 0
    env_run, flag_run, file_run = agent_options
    assert (env_run.bridge, env_run.subnet, env_run.metrics_addr) == ("fromenv", "10.9.0.0/16", "")
    assert flag_run.bridge == "fromflag"
    assert (file_run.bridge, file_run.labels) == ("fromfile", {"zone": "a", "ssd": "1"})


@pytest.mark.parametrize(("text", "message"), [
    ('[agent]\nbridges = "x"\n', "[agent] bridges: not an option of `dockyard agent`"),
    ("[agent\n", "not valid TOML"),
    ('agent = 1\n', "[agent] must be a table"),
    ('[agents]\nbridge = "x"\n', "unknown table [agents]"),
])
def test_a_bad_file_is_named(agent_options: list[Any], tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = CliRunner().invoke(cli.main, ["agent", "--config", str(f)])
    assert r.exit_code == 2 and str(f) in r.output and message in r.output, r.output
    assert not agent_options


def test_a_missing_file_is_named(agent_options: list[Any], tmp_path: Path) -> None:
    r = CliRunner().invoke(cli.main, ["agent", "--config", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2 and "nope.toml" in r.output and "No such file" in r.output, r.output


def test_every_environment_variable_is_listed_and_documented() -> None:
    readme = (REPO / "README.md").read_text()
    read = set()
    for top in ("agent", "scheduler", "deploy", "common"):
        for path in (REPO / top).rglob("*.py"):
            read |= set(re.findall(r"\bDOCKYARD_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    prefixes = (settings.env_prefix("agent") + "_", settings.env_prefix("scheduler") + "_")
    unlisted = sorted(v for v in read if v not in settings.ENVIRONMENT and not v.startswith(prefixes)
                      and v not in ("DOCKYARD_AGENT", "DOCKYARD_SCHEDULER"))
    assert not unlisted, f"add these to common/settings.py ENVIRONMENT: {unlisted}"
    undocumented = sorted(v for v in settings.ENVIRONMENT if v not in readme)
    assert not undocumented, f"README.md (Settings) does not list {undocumented}"


@pytest.mark.parametrize(("args", "message"), [
    (["--ttl", "3", "--heartbeat", "2"], "2: from 0.2 s to a third of --ttl (1 s)"),
    (["--ttl", "30", "--heartbeat", "0.1"], "0.1: from 0.2 s to a third of --ttl (10 s)"),
    (["--heartbeat", "soon"], "'soon' is not a valid float"),
])
def test_a_heartbeat_that_would_lose_leases_is_refused(args: list[str], message: str) -> None:
    """Three heartbeats per lease at least: with fewer, one late answer costs a node its lease."""
    r = CliRunner().invoke(cli.main, ["scheduler", *args])
    assert r.exit_code == 2 and message in r.output, r.output
