"""The seed's own steps and docker's command groups, typed as a user types them, on a real agent:
`dockyard image build -t koa-server-image .` in a build context, then `dockyard container run -p
3000:3000 -it koa-server-image sh` on a terminal, the published port answering from the host."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.agent_harness import CLI, AgentProcess, _env, free_port
from tests.kernel.test_interactive import Terminal

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as r:
        return str(r.read().decode())


def test_seed_build_then_container_run_it(clean_agent: AgentProcess, tmp_path: Path) -> None:
    ctx = tmp_path / "koa"
    (ctx / "www").mkdir(parents=True)
    (ctx / "www" / "index.html").write_text("koa says hi\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY www /www\nEXPOSE 3000\nCMD [\"sh\"]\n")
    tag = f"koa-server-image-{free_port()}"
    r = subprocess.run([*CLI, "-H", clean_agent.host, "image", "build", "-t", tag, "."], cwd=ctx, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        assert tag in clean_agent.cli("image", "ls", check=True).stdout
        port = free_port()
        t = Terminal(clean_agent, "container", "run", "-p", f"{port}:3000", "-it", tag, "sh")
        t.expect("# ")
        t.type("httpd -p 3000 -h /www; echo started\n")
        t.expect("started")
        body = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "koa says hi" not in body:
            try:
                body = _get(f"http://127.0.0.1:{port}/")
            except OSError:
                time.sleep(0.1)
        assert "koa says hi" in body
        ls = clean_agent.cli("container", "ls", check=True).stdout
        assert tag in ls and f"0.0.0.0:{port}->3000/tcp" in ls
        t.type("exit 4\n")
        assert t.wait() == 4
        assert "Exited (4)" in clean_agent.cli("container", "ls", "-a", check=True).stdout
        pruned = clean_agent.cli("container", "prune", "-f", check=True).stdout
        assert "Deleted Containers:" in pruned
        assert not clean_agent.cli("container", "ls", "-a", "-q", check=True).stdout.strip()
    finally:
        clean_agent.cli("image", "rm", tag)


def test_groups_and_short_forms_are_one_command(clean_agent: AgentProcess) -> None:
    cid = clean_agent.cli("container", "run", "-d", "--name", "grouped", "busybox", "sleep", "60",
                          check=True).stdout.strip()
    assert clean_agent.cli("ps", "-q", "--no-trunc", check=True).stdout.split() == [cid]
    assert clean_agent.cli("container", "list", "-q", "--no-trunc", check=True).stdout.split() == [cid]
    assert clean_agent.cli("container", "inspect", "grouped", check=True).stdout.count(cid) >= 1
    assert "busybox" in clean_agent.cli("image", "list", check=True).stdout
    info = clean_agent.cli("system", "info", check=True).stdout
    assert "Containers: 1" in info and " Running: 1" in info
    nets = clean_agent.cli("network", "ls", check=True).stdout.split()
    assert nets[:3] == ["NAME", "DRIVER", "SCOPE"] and {"bridge", "host", "none"} <= set(nets)
    clean_agent.cli("container", "stop", "-t", "1", "grouped", check=True)
    out = clean_agent.cli("system", "prune", "-f", check=True).stdout
    assert cid in out and "Total reclaimed space" in out
    assert not clean_agent.cli("container", "ls", "-a", "-q", check=True).stdout.strip()
    r = clean_agent.cli("container", "nosuch")
    assert r.returncode == 2 and "No such command 'nosuch'" in r.stderr


def test_system_df_counts_volumes_and_system_prune_volumes_removes_the_unused(clean_agent: AgentProcess) -> None:
    a = clean_agent
    a.cli("volume", "create", "named-keep", check=True)
    a.cli("run", "--name", "anon-user", "-v", "/anon", "-v", "named-keep:/k", "busybox", "sh", "-c",
          "head -c 50000 /dev/zero > /k/f", check=True)
    a.run_detached("--name", "busy", "-v", "inuse:/u", "busybox", "sleep", "60")

    def volumes_row() -> list[str]:
        line = next(x for x in a.cli("system", "df", check=True).stdout.splitlines() if x.startswith("Local Volumes"))
        return line.split()[2:]

    # (as docker: a volume counts as active while any container has it, a stopped one too)
    assert volumes_row()[:2] == ["3", "3"] and volumes_row()[3] == "0B"
    a.cli("rm", "anon-user", check=True)
    total, active, size, reclaimable = volumes_row()[:4]
    assert (total, active) == ("3", "1") and reclaimable == size != "0B"   # named-keep's 50 kB and the empty one
    out = a.cli("system", "prune", "-f", "--volumes", check=True).stdout
    assert "Deleted Volumes:" in out
    left = a.cli("volume", "ls", "-q", check=True).stdout.split()
    assert sorted(left) == ["inuse", "named-keep"], left   # only anonymous unused ones go without -a
    a.cli("rm", "-f", "busy", check=True)
    # (-a would take the module's busybox image too: the volumes' -a is `volume prune -a`'s, tested there)
    a.cli("volume", "prune", "-f", "-a", check=True)
    assert a.cli("volume", "ls", "-q", check=True).stdout.split() == []


def test_system_events(clean_agent: AgentProcess) -> None:
    import json

    start = time.time() - 0.5
    cid = clean_agent.cli("container", "run", "-d", "--name", "evented", "-l", "team=a", "busybox", "sh", "-c",
                          "exit 3", check=True).stdout.strip()
    clean_agent.cli("container", "wait", cid, check=True)
    clean_agent.cli("container", "rm", cid, check=True)
    until = str(time.time() + 0.5)
    lines = clean_agent.cli("system", "events", "--since", str(start), "--until", until, "--format", "json",
                            "-f", "container=evented", check=True).stdout.splitlines()
    evs = [json.loads(ln) for ln in lines]
    assert [e["Action"] for e in evs] == ["create", "start", "die", "destroy"], evs
    assert evs[2]["Actor"]["Attributes"]["exitCode"] == "3" and evs[0]["Actor"]["ID"] == cid
    text = clean_agent.cli("system", "events", "--since", str(start), "--until", until, "-f", "event=die",
                           "-f", "label=team=a", check=True).stdout.splitlines()
    assert len(text) == 1 and f"container die {cid} (" in text[0] and "name=evented" in text[0]
    assert not clean_agent.cli("system", "events", "--since", str(start), "--until", until, "-f",
                               "label=team=b", check=True).stdout.strip()
    bad = clean_agent.cli("system", "events", "-f", "colour=red")
    assert bad.returncode == 2 and "use container=" in bad.stderr
