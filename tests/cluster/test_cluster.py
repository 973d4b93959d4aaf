"""The control plane on one host, end to end: a real etcd, a scheduler process, an agent joined to
it, and the `dockyard` CLI. Every process is stopped by its PID and every container removed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.cluster_harness import (
    JoinedAgent,
    SchedulerProcess,
    cli,
    one_node_cluster,
    running,
    tasks,
    wait_for,
)
from tests.etcd_server import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

STACK = """
services:
  web:
    image: busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/"]
    ports: ["80"]
    deploy:
      replicas: 2
      restart_policy: {condition: any, delay: 1s}
  worker:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do echo tick; sleep 1 & wait; done"]
"""


class Env:
    def __init__(self, etcd: EtcdServer, sched: SchedulerProcess, agent: JoinedAgent, tmp: Path) -> None:
        self.etcd, self.sched, self.agent, self.tmp = etcd, sched, agent, tmp

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return cli(self.sched.address, *args, timeout=timeout, host=self.agent.host)

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def stack(self, name: str, text: str) -> Path:
        p = self.tmp / f"{name}.yaml"
        p.write_text(text)
        return p

    def rm_stack(self, name: str) -> None:
        self.cli("stack-rm", name)
        wait_for(lambda: not [c for c in self.agent.task_containers()
                              if c.labels.get("dockyard.stack") == name], 20, f"{name}'s containers stopped")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    base = tmp_path_factory.mktemp("cluster")
    with one_node_cluster(base, busybox_tar_path) as (etcd, sched, agent):
        yield Env(etcd, sched, agent, base)


def test_deploy_runs_tasks_with_labels_and_is_idempotent(env: Env) -> None:
    f = env.stack("s1", STACK)
    out = env.ok("deploy", "-f", str(f), "--name", "s1")
    assert "Creating service s1_web" in out and "Creating service s1_worker" in out
    wait_for(lambda: len(running(env.sched, "s1_web")) == 2 and len(running(env.sched, "s1_worker")) == 1,
             30, "3 tasks running")
    cs = [c for c in env.agent.task_containers() if c.labels.get("dockyard.stack") == "s1"]
    assert len(cs) == 3
    web = sorted((c for c in cs if c.labels["dockyard.service"] == "s1_web"), key=lambda c: c.labels["dockyard.slot"])
    assert [c.labels["dockyard.slot"] for c in web] == ["1", "2"]
    by_id = {t.id: t for t in tasks(env.sched, "s1_web")}
    for c in web:
        t = by_id[c.labels["dockyard.task"]]
        assert c.name == f"{t.name}.{t.id}" and t.container_id == c.id and t.node == "solo"
    # service ps: each task with its node and state
    ps = env.ok("service", "ps", "s1_web")
    lines = [ln for ln in ps.splitlines()[1:] if "s1_web." in ln]
    assert len(lines) == 2 and all("solo" in ln and "Running" in ln for ln in lines), ps
    assert "2/2" in env.ok("service", "ls")
    # again: nothing changes, nothing restarts
    again = env.ok("deploy", "-f", str(f), "--name", "s1")
    assert "Unchanged service s1_web" in again and "Unchanged service s1_worker" in again
    time.sleep(1)
    assert {c.id for c in env.agent.task_containers() if c.labels.get("dockyard.stack") == "s1"} == {c.id for c in cs}


def _placements(sched: SchedulerProcess) -> float:
    """The count of the scheduler's placement latency histogram, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://{sched.metrics_addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith("dockyard_scheduler_placement_seconds_count"))


def test_scale_up_and_down(env: Env) -> None:
    before = _placements(env.sched)
    assert before >= 3  # the deploy's three tasks were placed: each one timed
    env.ok("service", "scale", "s1_web=4")
    wait_for(lambda: len(running(env.sched, "s1_web")) == 4, 30, "4 running")
    assert _placements(env.sched) >= before + 2  # the two new tasks
    env.ok("service", "scale", "s1_web=1")
    wait_for(lambda: len(running(env.sched, "s1_web")) == 1, 30, "1 running")
    wait_for(lambda: len([c for c in env.agent.task_containers()
                          if c.labels.get("dockyard.service") == "s1_web"]) == 1, 20, "1 web container")


def test_exec_and_logs_through_the_scheduler(env: Env) -> None:
    wait_for(lambda: running(env.sched, "s1_worker"), 20, "worker running")
    r = env.cli("exec", "s1_worker.1", "sh", "-c", "echo from-$(hostname)")
    assert r.returncode == 0 and r.stdout.strip() == "from-s1_worker.1", r.stderr
    logs = env.ok("service", "logs", "s1_worker")
    assert "tick" in logs and "s1_worker.1." in logs and "@solo" in logs


def test_impossible_constraint_stays_pending_with_reasons(env: Env) -> None:
    f = env.stack("s2", """
services:
  pinned:
    image: busybox:latest
    command: ["sleep", "1000"]
    deploy:
      placement: {constraints: ["node.labels.zone == nowhere"]}
""")
    env.ok("deploy", "-f", str(f), "--name", "s2")
    t = wait_for(lambda: tasks(env.sched, "s2_pinned"), 10, "a task")[0]
    assert t.state == "pending" and not t.node
    assert "pending" in t.error and "1 node" in t.error and "zone" in t.error, t.error
    assert "Pending" in env.ok("service", "ps", "s2_pinned")
    env.rm_stack("s2")


def test_unknown_image_shows_the_reason(env: Env) -> None:
    f = env.stack("s3", """
services:
  ghost:
    image: no-such-image:1
    deploy: {restart_policy: {condition: none}}
""")
    env.ok("deploy", "-f", str(f), "--name", "s3")
    t = wait_for(lambda: [t for t in tasks(env.sched, "s3_ghost", all_=True) if t.state == "rejected"], 20,
                 "rejected")[0]
    assert "no-such-image" in t.error
    ps = env.ok("service", "ps", "--no-trunc", "s3_ghost")
    assert "Rejected" in ps and "no-such-image" in ps
    env.rm_stack("s3")


def test_bad_stack_file_names_the_field_and_writes_nothing(env: Env) -> None:
    before = env.sched.status().revision
    f = env.stack("bad", "services:\n  web:\n    image: busybox\n    deploy:\n      replicas: lots\n")
    r = env.cli("deploy", "-f", str(f), "--name", "bad")
    assert r.returncode != 0
    assert f"{f}:5" in r.stderr and "replicas" in r.stderr, r.stderr
    time.sleep(0.5)
    assert env.sched.status().revision == before or not [s for s in env.sched.stub.ListServices(
        cpb.ListServicesRequest(stack="bad"), timeout=2).services]


def test_duplicate_node_name_is_refused(env: Env) -> None:
    req = cpb.RegisterRequest(name="solo", agent_id="someone-else", address="127.0.0.1:1")
    with pytest.raises(grpc.RpcError) as e:
        env.sched.stub.Register(req, timeout=5)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    assert "solo" in e.value.details()  # type: ignore[attr-defined]
    nodes = env.sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes
    assert [(n.name, n.address) for n in nodes] == [("solo", env.agent.listen)]


def test_scheduler_that_does_not_answer_is_a_clear_error(env: Env, tmp_path: Path) -> None:
    port = free_port()
    r = cli(f"127.0.0.1:{port}", "service", "ls", timeout=30)
    assert r.returncode != 0
    assert f"Cannot connect to the dockyard scheduler at 127.0.0.1:{port}" in r.stderr, r.stderr
    # a scheduler whose etcd does not answer says so at start
    dead = SchedulerProcess(tmp_path / "s", etcd=f"http://127.0.0.1:{free_port()}", metrics=False)
    dead.spawn()
    assert dead.proc is not None
    try:
        assert dead.proc.wait(timeout=30) != 0
    finally:
        dead.stop()
    assert "does not answer" in dead.log.read_text() and "etcd at 127.0.0.1" in dead.log.read_text()


def test_restarted_scheduler_rebuilds_and_places_nothing_twice(env: Env) -> None:
    def steady() -> bool:
        # the scheduler's view and the agent's containers agree: a container of the last test's
        # scale-down may still be stopping on the agent (under load, for seconds) after the
        # scheduler counts one web task, and would then read as "changed" below
        web, worker = running(env.sched, "s1_web"), running(env.sched, "s1_worker")
        live = {t.container_id for t in tasks(env.sched, "s1_web", "s1_worker")
                if t.desired_state == "running" and t.state == "running"}
        unsettled = [t for t in tasks(env.sched, "s1_web", "s1_worker", all_=True)
                     if t.desired_state == "shutdown" and t.state in ("running", "starting", "assigned")]
        return len(web) == 1 and bool(worker) and not unsettled \
            and {c.id for c in env.agent.task_containers()} == live

    wait_for(steady, 30, "steady: one web and a worker running, and nothing else on the agent")
    before_tasks = {t.id for t in tasks(env.sched, "s1_web", "s1_worker", all_=True)}
    before = {c.id for c in env.agent.task_containers()}
    env.sched.kill9()
    time.sleep(1)
    assert {c.id for c in env.agent.task_containers()} == before  # containers keep running
    env.sched.start()
    wait_for(lambda: env.sched.status().leader, 15, "leader again")
    time.sleep(4)
    after = tasks(env.sched, "s1_web", "s1_worker", all_=True)
    new = [f"{t.name} {t.id[:12]} {t.state}/{t.desired_state} {t.error}" for t in after if t.id not in before_tasks]
    assert {t.id for t in after} == before_tasks, f"new tasks after the restart: {new}"
    assert {c.id for c in env.agent.task_containers()} == before
    assert len(running(env.sched, "s1_web")) == 1


def test_etcd_away_reads_answer_containers_run_and_state_converges(env: Env) -> None:
    wait_for(lambda: running(env.sched, "s1_worker"), 20, "worker running")
    before = {c.id for c in env.agent.task_containers()}
    argv = Path(f"/proc/{env.etcd.process.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env.etcd.process.send_signal(signal.SIGTERM)
    env.etcd.process.wait(timeout=10)
    try:
        time.sleep(1)
        assert "s1_web" in env.ok("service", "ls")            # reads from the replica's memory
        assert "solo" in env.ok("node", "ls")
        r = env.cli("service", "scale", "s1_web=2")            # writes: a clear error, nothing half-done
        assert r.returncode != 0 and "etcd" in r.stderr, r.stderr
        assert {c.id for c in env.agent.task_containers()} == before
    finally:
        with open(env.etcd.log_path, "ab") as log:
            env.etcd.process = subprocess.Popen([a.decode() for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        assert env.etcd._wait_ready(15)
    wait_for(lambda: env.sched.status().etcd_ok, 20, "the scheduler sees etcd again")
    env.ok("service", "scale", "s1_web=2")
    wait_for(lambda: len(running(env.sched, "s1_web")) == 2, 30, "2 running after etcd returned")
    assert before <= {c.id for c in env.agent.task_containers()}  # nothing that ran was restarted


def test_up_exit_runs_etcd_scheduler_agent_and_the_example(tmp_path: Path, busybox_tar_path: Path) -> None:
    from tests.agent_harness import CLI, REPO, STARTED, AgentProcess, _env

    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    a = AgentProcess(tmp_path / "up")  # only for its names and its cleanup
    STARTED.append(a)
    a.base.mkdir(parents=True)
    port = free_port()
    try:
        r = subprocess.run([*CLI, "up", "--exit", "--root", str(a.root), "--socket", str(a.socket), "--port", str(port),
                            "--bridge", a.bridge, "--subnet", a.subnet, "--cgroup-parent", a.cgroup_parent,
                            "--ip-forward=false", "--ip-masq=false", "--insecure"],  # the machine's own namespace: left alone
                           capture_output=True, text=True, timeout=180, env=_env(), cwd=REPO)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
        assert r.stdout.count("answers '<h1>hello from example_web.") == 2, r.stdout
        assert "stopped" in r.stdout
        etcd_data = a.root / "scheduler" / "etcd"
        assert etcd_data.is_dir() and (etcd_data.stat().st_mode & 0o777) == 0o700
        leftover = subprocess.run(["pgrep", "-f", str(a.root)], capture_output=True, text=True).stdout.split()
        assert not leftover, f"processes of `up` still running: {leftover}"
    finally:
        a.destroy()
