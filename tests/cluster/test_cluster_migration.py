"""Migration through the scheduler on 3 netns hosts (tests/multihost.py), two scheduler replicas on
one etcd: `dockyard migrate TASK --to NODE --live|--cold`, `node drain`, `rebalance`, and faults
injected at a phase (the scheduler's DOCKYARD_FAULT_INJECTION hook: a service labelled
dockyard.fault.pause=<phase>:<seconds> has its migrations wait there while the test kills the
source agent, the target agent or the leader). Every test ends with exactly one running copy of
each task and no migration record left."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import CLI, REPO, _env, free_port
from tests.cluster_harness import SchedulerProcess, cli, running, tasks, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, Host, cluster, http_get, join, multihost_session_check_fixture  # noqa: F401

NODE_TTL = 10

pytestmark = [pytest.mark.multinode, pytest.mark.criu, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

COUNTER = ("echo hi > /tmp/index.html; httpd -p 80 -h /tmp; i=0; "
           "while :; do i=$$((i+1)); echo $$i; sleep 0.05; done")  # $$: compose interpolation


def service(name: str, *, replicas: int = 1, port: str = "", pause: str = "") -> str:
    ports = f"\n    ports: [\"{port}\"]" if port else ""
    # a service label (deploy.labels, as Swarm's); `labels:` would label the containers
    labels = f"\n      labels: {{dockyard.fault.pause: \"{pause}\"}}" if pause else ""
    return f"""
services:
  {name}:
    image: busybox:latest
    command: ["sh", "-c", "{COUNTER}"]{ports}
    deploy:{labels}
      replicas: {replicas}
      restart_policy: {{condition: any, delay: 1s}}
"""


class Env:
    def __init__(self, c: Cluster, scheds: list[SchedulerProcess], tmp: Path) -> None:
        self.c, self.scheds, self.tmp = c, scheds, tmp

    @property
    def addresses(self) -> str:
        return ",".join(s.address for s in self.scheds if s.alive())

    def live(self) -> SchedulerProcess:
        return next(s for s in self.scheds if s.alive())

    def host(self, name: str) -> Host:
        return self.c[int(name.removeprefix("host"))]

    def deploy(self, stack: str, text: str, replicas: int = 1) -> list[cpb.TaskInfo]:
        p = self.tmp / f"{stack}.yaml"
        p.write_text(text)
        r = cli(self.addresses, "deploy", "-f", str(p), "--name", stack)
        assert r.returncode == 0, r.stderr
        svc = f"{stack}_{text.split()[1].rstrip(':')}"
        found: list[cpb.TaskInfo] = wait_for(lambda: (ts := running(self.live(), svc)) and len(ts) == replicas and ts,
                                             60, f"{svc} running")
        return found

    def task(self, task_id: str) -> cpb.TaskInfo:
        return next(t for t in tasks(self.live(), all_=True) if t.id == task_id)

    def copies(self, task_id: str) -> list[str]:
        """The hosts running a container of the task."""
        out = []
        for h in self.c:
            if h.dead or not h.agent_alive():
                continue
            for ct in h.stub.ListContainers(apb.ListContainersRequest(filters={"label": "dockyard.task"}),
                                            timeout=10).containers:
                if ct.labels["dockyard.task"] == task_id:
                    out.append(h.name)
        return out

    def slot_settled(self, svc: str) -> str:
        """No migration record, one running task of the (one-replica) service, one running container
        of it over all hosts, on the task's node."""
        def ok() -> str | None:
            if self.migrations():
                return None
            ts = running(self.live(), svc)
            if len(ts) != 1:
                return None
            where = [w for tid in {t.id for t in tasks(self.live(), svc, all_=True)} for w in self.copies(tid)]
            return ts[0].node if where == [ts[0].node] else None

        node: str = wait_for(ok, 60, f"{svc}: one running copy")
        return node

    def migrations(self) -> list[cpb.MigrationInfo]:
        return list(self.live().stub.ListMigrations(cpb.Empty(), timeout=5).migrations)

    def settled(self, task_id: str) -> str:
        """Waits for no migration record, one running copy, and the task running where that copy is."""
        def ok() -> str | None:
            if self.migrations():
                return None
            where = self.copies(task_id)
            t = self.task(task_id)
            if len(where) == 1 and t.state == "running" and t.node == where[0]:
                return where[0]
            return None

        node: str = wait_for(ok, 60, f"task {task_id} settled with one copy")
        return node


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")
    base = tmp_path_factory.mktemp("mig")
    old = os.environ.get("DOCKYARD_FAULT_INJECTION")
    os.environ["DOCKYARD_FAULT_INJECTION"] = "1"  # the schedulers' hook (scheduler/migrate.py)
    # Replicas on one etcd share the secrets key, as an operator must give them (README, "Secrets"):
    # whichever replica seals a secret, the other opens it.
    os.environ["DOCKYARD_SCHEDULER_SECRETS_KEY"] = str(base / "secrets.key")
    try:
        with cluster(3, base, busybox_tar_path) as c:
            etcd = EtcdServer.start()
            # A node lease longer than the default 3 s: the tests that kill an agent and start it
            # again expect a rollback, which needs the agent back before its node is declared down,
            # and on a loaded machine (load 10-20) a restarted agent takes 3-6 s to register again.
            # (Within the lease or not is the only difference: the down path has its own test.)
            scheds = [SchedulerProcess(base / f"s{i}", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}",
                                       ttl=NODE_TTL) for i in (1, 2)]
            try:
                for s in scheds:
                    s.start()
                addresses = ",".join(s.address for s in scheds)
                for h in c:
                    join(h, addresses)
                # ready, and with the CRIU capability known (agents re-register once `criu check` ran)
                wait_for(lambda: len([n for n in scheds[0].stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                      if n.status == "ready" and n.capabilities.criu]) == 3, 40,
                         "3 nodes ready with CRIU")
                yield Env(c, scheds, base)
            finally:
                for s in scheds:
                    s.stop()
                etcd.stop()
    finally:
        os.environ.pop("DOCKYARD_SCHEDULER_SECRETS_KEY", None)
        if old is None:
            os.environ.pop("DOCKYARD_FAULT_INJECTION", None)
        else:
            os.environ["DOCKYARD_FAULT_INJECTION"] = old


def _numbers(h: Host, ref: str) -> list[int]:
    return [int(x) for x in h.cli("logs", ref).stdout.split() if x.isdigit()]


def _other(env: Env, node: str) -> str:
    return next(h.name for h in env.c if h.name != node and not h.dead)


def test_live_migration_keeps_memory_and_the_published_port_answers_on_the_new_host(env: Env) -> None:
    (t,) = env.deploy("lv", service("app", port="8080:80"))
    src = env.host(t.node)
    name = f"{t.name}.{t.id}"
    wait_for(lambda: len(_numbers(src, name)) > 20, 20, "counting")
    assert http_get(f"http://{src.ip}:8080/") == "hi\n"
    to = _other(env, t.node)
    r = cli(env.addresses, "migrate", t.name, "--to", to, "--live")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "downtime" in r.stdout and f"to {to} (live)" in r.stdout, r.stdout
    print("\n" + r.stdout.strip())
    assert env.settled(t.id) == to
    dst = env.host(to)
    wait_for(lambda: len(_numbers(dst, name)) > 3, 20, "counting on the target")
    assert _numbers(dst, name)[0] > 20  # went on from where it was, not from 1
    assert wait_for(lambda: http_get(f"http://{dst.ip}:8080/"), 20, "the port on the new host") == "hi\n"
    assert env.task(t.id).node == to


def test_cold_migration_keeps_written_files(env: Env) -> None:
    (t,) = env.deploy("cd", service("files"))
    src = env.host(t.node)
    name = f"{t.name}.{t.id}"
    assert src.cli("exec", name, "sh", "-c", "echo before > /root/f").returncode == 0
    to = _other(env, t.node)
    r = cli(env.addresses, "migrate", t.name, "--to", to, "--cold")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(cold)" in r.stdout, r.stdout
    assert env.settled(t.id) == to
    assert env.host(to).cli("exec", name, "cat", "/root/f").stdout == "before\n"


def test_drain_empties_a_node_by_moving_its_tasks_and_rebalance_fills_it_again(env: Env) -> None:
    ts = env.deploy("dr", service("w", replicas=3), replicas=3)
    busy = Counter(t.node for t in ts).most_common(1)[0][0]
    ids = {t.id for t in ts}
    try:
        r = cli(env.addresses, "node", "drain", busy)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{busy} drained" in r.stdout
        print("\n" + r.stdout.strip())
        now = running(env.live(), "dr_w")
        assert {t.id for t in now} == ids  # moved, not replaced
        assert all(t.node != busy for t in now)
        assert not [t for t in ids if busy in env.copies(t)]
        for t in ids:
            env.settled(t)
        wait_for(lambda: not env.host(busy).stub.ListContainers(
            apb.ListContainersRequest(filters={"label": "dockyard.task"}), timeout=10).containers, 30,
            f"{busy} empty")  # every service's tasks moved off it
    finally:  # back in service, empty: rebalance moves tasks onto it
        assert cli(env.addresses, "node", "activate", busy).returncode == 0
    r = cli(env.addresses, "rebalance")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "migrated" in r.stdout, r.stdout
    print(r.stdout.strip())
    moved = wait_for(lambda: [t for t in tasks(env.live()) if t.node == busy and t.state == "running"
                              and t.desired_state == "running"], 30,
                     "tasks moved onto the emptied node")
    for t in [*ids, *(t.id for t in moved)]:
        env.settled(t)
    per = Counter(t.node for t in tasks(env.live()) if t.state == "running" and t.desired_state == "running")
    assert max(per.values()) - min(per.values()) <= 1, per


def _migrate_in_background(env: Env, task: str, to: str, *mode: str) -> subprocess.Popen[str]:
    e = _env()
    e["DOCKYARD_SCHEDULER"] = env.addresses
    return subprocess.Popen([*CLI, "migrate", task, "--to", to, *mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=e, cwd=REPO)


def _wait_phase(env: Env, phase: str) -> cpb.MigrationInfo:
    m: cpb.MigrationInfo = wait_for(lambda: next((m for m in env.migrations() if m.phase == phase), None), 30,
                                    f"a migration at phase {phase}")
    return m


def test_source_agent_killed_mid_migration_leaves_one_copy(env: Env) -> None:
    (t,) = env.deploy("fs", service("a", pause="running:4"))
    src, to = env.host(t.node), _other(env, t.node)
    proc = _migrate_in_background(env, t.name, to, "--live")
    _wait_phase(env, "running")
    src.kill9()  # the agent only: its containers keep running under their shims, unreachable
    out, _ = proc.communicate(timeout=90)
    print("\n" + out.strip())
    # Down for longer than its lease: the record is dropped and the task replaced like any task of
    # a lost node; when the agent is back its stale copy is fenced.
    src.restart_agent()
    env.slot_settled("fs_a")

def _lazy_dumps(root: Path) -> list[int]:
    """Pids of `criu dump --lazy-pages` runs on containers under this agent root."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dump" in argv and b"--lazy-pages" in argv and any(str(root).encode() in a for a in argv):
            found.append(int(d.name))
    return found


def test_source_agent_killed_during_the_criu_dump_leaves_one_copy(env: Env) -> None:
    """Killed with CRIU's dump running (the container frozen, its pages held by criu for a target
    that has not been told yet): the agent that comes back ends that dump, CRIU unfreezes the
    container, and it counts on where it was; nothing stays frozen, no copy is made on the target."""
    (t,) = env.deploy("fk", service("a"))
    src, to = env.host(t.node), _other(env, t.node)
    name = f"{t.name}.{t.id}"
    wait_for(lambda: len(_numbers(src, name)) > 20, 20, "counting")
    pause = src.root / "fault-pause-after-dump"  # agent/migration.py: it waits there after the dump
    pause.write_text("30")
    try:
        proc = _migrate_in_background(env, t.name, to, "--live")
        # ready: the tree frozen, its images written, the agent's note for its successor written
        # (agent/containers.py checkpoint_lazy); a kill before that is a dump that fails on its own
        wait_for(lambda: _lazy_dumps(src.root) and list((src.root / "containers").glob("*/lazy-dump.json")),
                 30, "criu dump running on the source")
        assert src.inspect(name)["State"]["Running"]
        frozen_at = _numbers(src, name)[-1]
        src.kill9()
    finally:
        pause.unlink()
    assert _lazy_dumps(src.root), "the dump must outlive the agent (its own session), not die with it"
    src.restart_agent()
    out, _ = proc.communicate(timeout=90)
    print("\n" + out.strip())
    assert env.settled(t.id) == t.node  # rolled back: only the source runs it
    wait_for(lambda: not _lazy_dumps(src.root), 20, "the stale dump ended")
    wait_for(lambda: _numbers(src, name)[-1] > frozen_at + 5, 20, "counting again after the dump")
    nums = _numbers(src, name)
    assert nums.count(1) == 1  # went on, never started over
    assert not list((src.root / "containers").glob("*/lazy-[cd]*"))  # no lazy-checkpoint/ or lazy-dump.json left
    # CRIU's network lock is gone too (a failed lazy dump leaves it: agent/checkpoint/lazy.py)
    r = src.cli("exec", name, "timeout", "5", "wget", "-q", "-O-", "http://127.0.0.1/index.html")
    assert r.stdout == "hi\n", r


def test_target_agent_killed_mid_migration_leaves_one_copy(env: Env) -> None:
    (t,) = env.deploy("ft", service("a", pause="running:4"))
    to = _other(env, t.node)
    proc = _migrate_in_background(env, t.name, to, "--live")
    _wait_phase(env, "running")
    env.host(to).kill9()
    out, _ = proc.communicate(timeout=90)
    print("\n" + out.strip())
    assert env.settled(t.id) == t.node  # rolled back: still (only) on the source
    env.host(to).restart_agent()
    time.sleep(2)
    assert env.settled(t.id) == t.node


def test_leader_killed_after_the_move_before_the_record_is_finished(env: Env) -> None:
    (t,) = env.deploy("fl", service("a", pause="finishing:6"))
    to = _other(env, t.node)
    leader = next(s for s in env.scheds if s.alive() and s.status().leader)
    proc = _migrate_in_background(env, t.name, to, "--live")
    _wait_phase(env, "running")
    wait_for(lambda: env.copies(t.id) == [to], 30, "the container running on the target only")
    leader.kill9()
    proc.communicate(timeout=90)
    # the other replica leads, finds the record, sees the target running it: finishes
    assert env.settled(t.id) == to
    assert env.task(t.id).node == to
    leader.start()  # back as a follower


def test_leader_killed_before_the_agent_is_called_rolls_back(env: Env) -> None:
    (t,) = env.deploy("fb", service("a", pause="running:6"))
    to = _other(env, t.node)
    leader = next(s for s in env.scheds if s.alive() and s.status().leader)
    proc = _migrate_in_background(env, t.name, to, "--live")
    _wait_phase(env, "running")
    leader.kill9()
    out, _ = proc.communicate(timeout=90)
    print("\n" + out.strip())
    assert proc.returncode != 0 and "recorded" in out
    # the new leader finds the record, sees nothing on the target: the source copy stays, record gone
    assert env.settled(t.id) == t.node
    leader.start()


def test_leader_killed_after_the_checkpoint_restores_the_source_copy_from_it(env: Env) -> None:
    """The dump happened (done here through the agent, as MigrateContainer's first step does), then
    the leader died: the next leader finds nothing on the target and restores the source copy from
    its checkpoint, memory intact, and no checkpoint data stays behind."""
    (t,) = env.deploy("fc", service("a", pause="running:8"))
    src, to = env.host(t.node), _other(env, t.node)
    name = f"{t.name}.{t.id}"
    wait_for(lambda: len(_numbers(src, name)) > 20, 20, "counting")
    leader = next(s for s in env.scheds if s.alive() and s.status().leader)
    proc = _migrate_in_background(env, t.name, to, "--live")
    _wait_phase(env, "running")
    for _ in src.stub.CheckpointContainer(apb.CheckpointRequest(id=name), timeout=60):
        pass
    assert src.inspect(name)["State"]["Status"] == "exited"
    before = _numbers(src, name)[-1]
    leader.kill9()
    proc.communicate(timeout=90)
    assert env.settled(t.id) == t.node
    wait_for(lambda: _numbers(src, name)[-1] > before + 3, 20, "counting again")
    nums = _numbers(src, name)
    assert nums.count(1) == 1 and before + 1 in nums  # went on from where it was, not from 1
    assert not list((src.root / "containers").glob("*/checkpoint"))  # no checkpoint data left
    leader.start()


VOLUME_STACK = """
services:
  vol:
    image: busybox:latest
    command: ["sh", "-c", "exec 3>>/data/log; while :; do echo tick >&3; sleep 0.1; done"]
    volumes: ["pgdata:/data", "/scratch"]
    tmpfs: /run
    deploy:
      restart_policy: {condition: any, delay: 1s}
volumes:
  pgdata:
    labels: {app: db}
"""


@pytest.mark.parametrize("how", ["--live", "--cold"])
def test_migration_through_the_scheduler_moves_the_task_volumes(env: Env, how: str) -> None:
    stack = "vl" if how == "--live" else "vc"
    (t,) = env.deploy(stack, VOLUME_STACK)
    src = env.host(t.node)
    name = f"{t.name}.{t.id}"
    r = src.cli("exec", name, "sh", "-c", "head -c 8388608 /dev/urandom > /data/blob; sha256sum /data/blob")
    assert r.returncode == 0, r.stderr
    digest = r.stdout.split()[0]
    assert f"{stack}_pgdata" in src.cli("volume", "ls", "-q").stdout.split()
    to = _other(env, t.node)
    r = cli(env.addresses, "migrate", t.name, "--to", to, how)
    assert r.returncode == 0, r.stdout + r.stderr
    assert env.settled(t.id) == to
    dst = env.host(to)
    assert dst.cli("exec", name, "sha256sum", "/data/blob").stdout.split()[0] == digest
    assert f"{stack}_pgdata" in dst.cli("volume", "ls", "-q").stdout.split()
    assert f"{stack}_pgdata" not in src.cli("volume", "ls", "-q").stdout.split()  # moved, not copied
    r = cli(env.addresses, "stack-rm", stack)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not env.copies(t.id), 30, "the task removed")
    for h in (src, dst):  # its stopped containers (they keep the volumes in use), then its volumes
        for ct in h.stub.ListContainers(apb.ListContainersRequest(all=True, filters={"label": f"dockyard.stack={stack}"}),
                                        timeout=10).containers:
            h.stub.RemoveContainer(apb.RemoveContainerRequest(id=ct.id, force=True, volumes=True), timeout=30)
        names = [n for n in h.cli("volume", "ls", "-q").stdout.split() if n.startswith(f"{stack}_")]
        if names:
            h.cli("volume", "rm", "-f", *names, check=True)


SECRET_STACK = """
services:
  sec:
    image: busybox:latest
    command: ["sleep", "3600"]
    secrets: [{source: mpw, mode: 0400}]
    configs: [{source: mconf, target: /etc/app.conf}]
secrets:
  mpw: {external: true}
configs:
  mconf: {external: true}
"""


@pytest.mark.parametrize("how", ["--live", "--cold"])
def test_migration_brings_the_task_secrets_from_the_scheduler(env: Env, how: str) -> None:
    """The target's agent fetches the task's secrets and configs itself (TaskFiles allows the
    migration's target); they are not in the archive, and the source's tmpfs goes with its copy."""
    stack = "sl" if how == "--live" else "sc"
    value = os.urandom(12).hex()
    (env.tmp / f"{stack}.pw").write_text(value)
    (env.tmp / f"{stack}.conf").write_text("conf\n")
    for kind, name, path in (("secret", "mpw", f"{stack}.pw"), ("config", "mconf", f"{stack}.conf")):
        r = cli(env.addresses, kind, "create", name, str(env.tmp / path))
        assert r.returncode == 0, r.stderr
    try:
        try:
            (t,) = env.deploy(stack, SECRET_STACK)
        except AssertionError as e:
            ps = cli(env.addresses, "service", "ps", "--no-trunc", f"{stack}_sec")
            raise AssertionError(f"{e}\n{ps.stdout}{ps.stderr}") from None
        src = env.host(t.node)
        name = f"{t.name}.{t.id}"
        assert src.cli("exec", name, "cat", "/run/secrets/mpw").stdout == value
        # (this task's: another test's task may still be going from this host)
        mine = f"{src.root}/taskfiles/{t.container_id}"
        src_tmpfs = [m for m in Path("/proc/mounts").read_text().split("\n") if mine in m]
        assert len(src_tmpfs) == 1, src_tmpfs
        to = _other(env, t.node)
        r = cli(env.addresses, "migrate", t.name, "--to", to, how)
        assert r.returncode == 0, r.stdout + r.stderr
        assert env.settled(t.id) == to
        dst = env.host(to)
        assert dst.cli("exec", name, "cat", "/run/secrets/mpw").stdout == value
        assert dst.cli("exec", name, "stat", "-c", "%a", "/run/secrets/mpw").stdout.strip() == "400"
        assert dst.cli("exec", name, "cat", "/etc/app.conf").stdout == "conf\n"
        wait_for(lambda: mine not in Path("/proc/mounts").read_text(), 20, "the source's tmpfs unmounted with its copy")
    finally:
        cli(env.addresses, "stack-rm", stack)
        wait_for(lambda: cli(env.addresses, "secret", "rm", "mpw").returncode == 0, 60, "the secret removed")
        wait_for(lambda: cli(env.addresses, "config", "rm", "mconf").returncode == 0, 60, "the config removed")
