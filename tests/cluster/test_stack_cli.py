"""`dockyard stack ...` and `dockyard service create` end to end on one host: a real etcd, a scheduler
process, an agent joined to it, and the CLI as a user types it. Every process is stopped by its PID
and every container removed."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import CLI, REPO, _env
from tests.cluster_harness import JoinedAgent, SchedulerProcess, cli, one_node_cluster, running, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

SHOP = """\
services:
  web:
    image: busybox:${TAG}
    command: ["sleep", "3600"]
    environment:
      - FROM_DOTENV=${GREETING:-unset}
      - FROM_SHELL
    hostname: shop-web
    user: "65534"
    working_dir: /tmp
    labels: {team: shop}
    deploy:
      replicas: 2
  agent:
    image: busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy:
      mode: global
"""


class Env:
    def __init__(self, sched: SchedulerProcess, agent: JoinedAgent, tmp: Path) -> None:
        self.sched, self.agent, self.tmp = sched, agent, tmp

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if env is None:
            return cli(self.sched.address, *args, host=self.agent.host)
        full = _env()
        full.update(env, DOCKYARD_SCHEDULER=self.sched.address)
        return subprocess.run([*CLI, "-H", self.agent.host, *args], capture_output=True, text=True, timeout=60,
                              env=full, cwd=REPO)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        r = self.cli(*args, env=env)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def containers(self, service: str) -> list[apb.ContainerSummary]:
        return [c for c in self.agent.task_containers() if c.labels.get("dockyard.service") == service]

    def inspect(self, cid: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.agent.stub.InspectContainer(apb.ContainerRef(id=cid), timeout=10).json)
        return doc


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    base = tmp_path_factory.mktemp("stackcli")
    with one_node_cluster(base, busybox_tar_path) as (_, sched, agent):
        yield Env(sched, agent, base)


def test_stack_deploy_reads_the_shell_and_dotenv_and_every_key_reaches_the_container(env: Env) -> None:
    d = env.tmp / "shop"
    d.mkdir()
    (d / "stack.yaml").write_text(SHOP)
    (d / ".env").write_text("TAG=not-this-one\nGREETING=hello from .env\n")
    out = env.ok("stack", "deploy", "-c", str(d / "stack.yaml"), "shop",
                 env={"TAG": "latest", "FROM_SHELL": "from the shell"})
    assert "Creating service shop_web" in out and "Creating service shop_agent" in out
    try:
        wait_for(lambda: len(running(env.sched, "shop_web")) == 2 and len(running(env.sched, "shop_agent")) == 1,
                 30, "2 web tasks and 1 global task running")
    except AssertionError:
        raise AssertionError(env.cli("stack", "ps", "shop", "--no-trunc").stdout) from None
    web = env.containers("shop_web")
    assert len(web) == 2
    doc = env.inspect(web[0].id)
    cfg = doc["Config"]
    assert isinstance(cfg, dict)
    assert cfg["Image"] == "busybox:latest"
    assert "FROM_DOTENV=hello from .env" in cfg["Env"] and "FROM_SHELL=from the shell" in cfg["Env"]
    assert (cfg["Hostname"], cfg["User"], cfg["WorkingDir"]) == ("shop-web", "65534", "/tmp")
    assert cfg["Labels"]["team"] == "shop"
    # the process itself runs as that user in that directory
    pid = str(doc["State"]["Pid"])  # type: ignore[index]
    status = Path(f"/proc/{pid}/status").read_text()
    assert "\nUid:\t65534\t" in status
    assert os.readlink(f"/proc/{pid}/cwd").endswith("/tmp")


def test_stack_ls_services_ps_and_rm(env: Env) -> None:
    ls = env.ok("stack", "ls")
    assert any(line.split() == ["shop", "2"] for line in ls.splitlines()), ls
    services = env.ok("stack", "services", "shop")
    rows = {line.split()[0]: line.split() for line in services.splitlines()[1:]}
    assert rows["shop_web"][1:3] == ["replicated", "2/2"] and rows["shop_agent"][1:3] == ["global", "1/1"]
    ps = env.ok("stack", "ps", "shop")
    names = [ln.split()[1] for ln in ps.splitlines()[1:]]
    assert sorted(names) == ["shop_agent.1", "shop_web.1", "shop_web.2"], ps
    r = env.cli("stack", "ps", "nope")
    assert r.returncode == 1 and "nothing found in stack: nope" in r.stderr
    env.ok("stack", "rm", "shop")
    wait_for(lambda: not env.containers("shop_web") and not env.containers("shop_agent"), 30, "shop stopped")
    assert "shop" not in env.ok("stack", "ls")


def test_stack_deploy_refuses_an_unsupported_key_and_writes_nothing(env: Env) -> None:
    f = env.tmp / "bad.yaml"
    f.write_text("services:\n  web:\n    image: busybox:latest\n    build: .\n")
    r = env.cli("stack", "deploy", "-c", str(f), "bad")
    assert r.returncode == 1
    assert f"{f}:4: services.web.build: not supported" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not env.sched.stub.ListServices(cpb.ListServicesRequest(stack="bad"), timeout=5).services


def test_service_create_with_dockers_flags(env: Env) -> None:
    out = env.ok("service", "create", "--name", "web", "--replicas", "2", "-p", "80", "-e", "MODE=prod",
                 "--limit-memory", "64M", "--reserve-cpu", "0.1", "--constraint", "node.name==solo",
                 "--container-label", "tier=front", "--stop-grace-period", "2s",
                 "busybox:latest", "httpd", "-f", "-p", "80", "-h", "/")
    assert out.strip() == "web"  # without -d it returned once the service converged
    assert len(running(env.sched, "web")) == 2
    cs = env.containers("web")
    assert len(cs) == 2
    cfg = env.inspect(cs[0].id)
    assert "MODE=prod" in cfg["Config"]["Env"]  # type: ignore[index]
    assert cfg["Config"]["Labels"]["tier"] == "front"  # type: ignore[index]
    assert cfg["HostConfig"]["Memory"] == 64 << 20  # type: ignore[index]
    info = json.loads(env.ok("service", "inspect", "web"))[0]
    assert info["spec"]["placement"]["constraints"] == ["node.name == solo"]
    assert info["spec"]["stop_grace_period"] == 2.0
    again = env.cli("service", "create", "--name", "web", "-d", "busybox:latest")
    assert again.returncode == 1 and "service web already exists" in again.stderr
    big = env.cli("service", "scale", "web=1000000000")
    assert big.returncode == 1 and "replicas must be between 0 and 100,000" in big.stderr, big.stderr
    env.ok("service", "rm", "web")
    wait_for(lambda: not env.containers("web"), 30, "web stopped")


def test_service_create_global(env: Env) -> None:
    env.ok("service", "create", "--name", "everywhere", "--mode", "global", "busybox:latest", "sleep", "3600")
    assert len(running(env.sched, "everywhere")) == 1
    ls = env.ok("service", "ls")
    row = next(line.split() for line in ls.splitlines() if line.startswith("everywhere "))
    assert row[1:3] == ["global", "1/1"]
    r = env.cli("service", "scale", "everywhere=3")
    assert r.returncode == 1 and "scale can only be used with replicated mode" in r.stderr, r.stderr
    r = env.cli("service", "update", "--replicas", "3", "everywhere")
    assert r.returncode == 1 and "replicas can only be used with replicated mode" in r.stderr, r.stderr
    env.ok("service", "rm", "everywhere")
    wait_for(lambda: not env.containers("everywhere"), 30, "everywhere stopped")


def test_bad_service_create_flags_call_nothing(env: Env) -> None:
    for args, fragment in ((["--limit-memory", "12X"], "--limit-memory: invalid size '12X'"),
                           (["--limit-cpu", "nan"], "--limit-cpu: invalid cpus 'nan'"),
                           (["--mode", "global", "--replicas", "2"], "--replicas can only be used with replicated"),
                           (["--mode", "global", "--replicas-max-per-node", "1"], "can only be used with replicated"),
                           (["-p", "1-65535:1-65535", "-p", "80:80"], "host port 80/tcp published twice")):
        r = env.cli("service", "create", "--name", "bad", *args, "busybox:latest")
        assert r.returncode == 2 and fragment in r.stderr, (args, r.stderr)
    assert "bad" not in [s.name for s in env.sched.stub.ListServices(cpb.ListServicesRequest(), timeout=5).services]


def test_stack_config_interpolates_without_a_scheduler(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text(textwrap.dedent("""\
        name: cfg
        services:
          web:
            image: nginx:${TAG}
            environment: [WHO=$WHO, COST=$$5]
        """))
    (tmp_path / ".env").write_text("WHO=dotenv\n")
    full = _env()
    full.update(TAG="1.25", DOCKYARD_SCHEDULER="127.0.0.1:1")
    full.pop("WHO", None)
    r = subprocess.run([*CLI, "stack", "config", "-c", str(tmp_path / "stack.yaml")], capture_output=True,
                       text=True, timeout=30, env=full, cwd=REPO)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    web = doc["services"][0]
    assert (doc["name"], web["name"], web["image"]) == ("cfg", "cfg_web", "nginx:1.25")
    assert web["env"] == [["COST", "$5"], ["WHO", "dotenv"]]
    full.pop("TAG")
    r = subprocess.run([*CLI, "stack", "config", "-c", str(tmp_path / "stack.yaml")], capture_output=True,
                       text=True, timeout=30, env=full, cwd=REPO)
    assert r.returncode == 0 and json.loads(r.stdout)["services"][0]["image"] == "nginx:"
    assert 'services.web.image: the "TAG" variable is not set. Defaulting to a blank string.' in r.stderr
