"""`dockyard service update` with Swarm's flags and `service rollback`, end to end on one host (a real
etcd, a scheduler process, an agent joined to it, the CLI as a user types it). While a rolling
update runs, the tasks are sampled every 50 ms: never more than --update-parallelism slots are
without a running task (stop-first), and none is with start-first."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import cluster_pb2 as cpb
from scheduler import convert
from tests.cluster_harness import (
    JoinedAgent,
    SchedulerProcess,
    cli,
    one_node_cluster,
    running,
    tasks,
    wait_for,
)

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

REPLICAS = 4


class Env:
    def __init__(self, sched: SchedulerProcess, agent: JoinedAgent) -> None:
        self.sched, self.agent = sched, agent

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.sched.address, *args, host=self.agent.host, timeout=180)

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    def spec(self, name: str) -> dict[str, object]:
        info = self.sched.stub.InspectService(cpb.ServiceRef(name=name), timeout=5)
        return convert.spec_dict(convert.spec_from_pb(info.spec))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    base = tmp_path_factory.mktemp("svcupdate")
    with one_node_cluster(base, busybox_tar_path) as (_, sched, agent):
        e = Env(sched, agent)
        e.ok("service", "create", "--name", "roll", "--replicas", str(REPLICAS), "--stop-grace-period", "1s",
             "-p", "80", "-q", "busybox:latest", "sleep", "3600")
        try:
            yield e
        finally:
            e.cli("service", "rm", "roll")
            wait_for(lambda: not agent.task_containers(), 60, "roll's containers gone")


class Sampler:
    """ListTasks every 50 ms on its own channel: per sample, the slots without a running task and the
    tasks running (as their agent reports them)."""

    def __init__(self, env: Env, service: str) -> None:
        self.env, self.service = env, service
        self.down: list[int] = []
        self.running: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from common import transport
        from protos import cluster_pb2_grpc as cpbg

        with transport.dial_blocking(self.env.sched.address, transport.CLI, transport.Role.SCHEDULER) as ch:
            stub = cpbg.SchedulerStub(ch)  # type: ignore[no-untyped-call]
            while not self._stop.is_set():
                try:
                    tasks = stub.ListTasks(cpb.ListTasksRequest(services=[self.service]), timeout=5).tasks
                except grpc.RpcError:
                    continue
                # what serves: a task the agent reports running (an old one wanted shut down serves until
                # its container stops)
                up = [t for t in tasks if t.state == "running"]
                self.running.append(len(up))
                self.down.append(sum(1 for slot in range(1, REPLICAS + 1) if not any(t.slot == slot for t in up)))
                time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _digests(env: Env) -> set[str]:
    return {t.spec_version for t in running(env.sched, "roll")}


def test_stop_first_takes_down_at_most_parallelism_tasks(env: Env) -> None:
    wait_for(lambda: len(running(env.sched, "roll")) == REPLICAS, 60, "4 tasks running")
    before = _digests(env)
    with Sampler(env, "roll") as s:
        out = env.ok("service", "update", "--env-add", "WAVE=1", "--update-parallelism", "2",
                     "--update-order", "stop-first", "--update-monitor", "1s", "roll")
    assert "verify: Service converged" in out, out
    assert len(running(env.sched, "roll")) == REPLICAS and _digests(env).isdisjoint(before)
    assert s.down, "no samples"
    assert max(s.down) <= 2, f"more than 2 slots down at once: {max(s.down)} ({s.down})"
    assert max(s.down) >= 1, "the sampler never saw a task replaced"  # (so the bound above can fail)
    cfg = env.spec("roll")["update_config"]
    assert isinstance(cfg, dict) and cfg["parallelism"] == 2 and cfg["order"] == "stop-first" and cfg["monitor"] == 1.0
    print(f"stop-first, parallelism 2: at most {max(s.down)} of {REPLICAS} slots down ({len(s.down)} samples)")


def test_start_first_keeps_every_slot_up(env: Env) -> None:
    with Sampler(env, "roll") as s:
        env.ok("service", "update", "--env-add", "WAVE=2", "--update-parallelism", "1", "--update-order",
               "start-first", "roll")
    assert s.down and max(s.down) == 0, s.down
    assert max(s.running) <= REPLICAS + 1, s.running
    assert max(s.running) == REPLICAS + 1, "the sampler never saw a new task started beside an old one"


def test_env_labels_and_ports_flags_edit_the_spec(env: Env) -> None:
    env.ok("service", "update", "--env-rm", "WAVE", "--label-add", "tier=web", "--container-label-add", "c=1",
           "--publish-add", "8080/udp", "--publish-rm", "80", "--update-parallelism", "0", "roll")
    spec = env.spec("roll")
    assert ["WAVE", "2"] not in spec["env"]  # type: ignore[operator]
    assert ["tier", "web"] in spec["labels"] and ["c", "1"] in spec["container_labels"]  # type: ignore[operator]
    assert [(p["published"], p["target"], p["protocol"]) for p in spec["ports"]] == \
        [(None, 8080, "udp")]  # type: ignore[attr-defined]
    wait_for(lambda: len(running(env.sched, "roll")) == REPLICAS, 60, "4 tasks running")
    # bad flags: refused before anything is sent
    for args, problem in ((["--publish-rm", "9999"], "publishes no such port"),
                          (["--env-add", "=x"], "expected KEY=VALUE"),
                          (["--secret-rm", "nope"], "has no such secret"),
                          (["--replicas", "2", "--rollback"], "give no other change with it"),
                          (["--update-parallelism", "-1"], "must be 0 or more")):
        r = env.cli("service", "update", *args, "roll")
        assert r.returncode != 0 and problem in r.stderr, (args, r.stderr)


def test_rollback_and_a_failed_update_that_rolls_back(env: Env) -> None:
    before = env.spec("roll")
    env.ok("service", "update", "--env-add", "BAD=1", "roll")
    assert ["BAD", "1"] in env.spec("roll")["env"]  # type: ignore[operator]
    env.ok("service", "rollback", "roll")
    assert env.spec("roll")["env"] == before["env"]
    wait_for(lambda: len(running(env.sched, "roll")) == REPLICAS, 60, "4 tasks running")
    # an image no node has: the first batch is rejected, the update rolls back by itself
    r = env.cli("service", "update", "--image", "busybox:nosuchtag", "--update-failure-action", "rollback",
                "--update-parallelism", "1", "roll")
    assert r.returncode != 0 and "the update was rolled back: rollback completed: update failed: roll." in r.stderr, r.stderr
    assert env.spec("roll")["image"] == "busybox:latest"
    wait_for(lambda: len(running(env.sched, "roll")) == REPLICAS, 60, "4 tasks running the old image")
    # `update --rollback` is `service rollback`: back to the failed spec's predecessor's predecessor
    env.ok("service", "update", "--rollback", "-d", "roll")


def test_a_stale_edit_is_refused(env: Env) -> None:
    info = env.sched.stub.InspectService(cpb.ServiceRef(name="roll"), timeout=5)
    with pytest.raises(grpc.RpcError) as e:
        env.sched.stub.UpdateService(cpb.UpdateServiceRequest(name="roll", spec=info.spec,
                                                              expect_version=info.version - 1), timeout=5)
    assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "changed while it was being edited" in e.value.details()  # type: ignore[attr-defined]


def test_an_unhealthy_task_is_ended_and_replaced(env: Env) -> None:
    """Swarm's rule: the agent ends a task whose container turns unhealthy; the task is failed
    ("unhealthy") and the restart policy gives the slot a new task."""
    env.ok("service", "create", "--name", "sick", "--replicas", "1", "--restart-delay", "0s", "-q",
           "--health-cmd", "test -f /ok", "--health-interval", "1s", "--health-retries", "1",
           # healthy, then unhealthy 3 s later (and so is each replacement)
           "busybox:latest", "sh", "-c", "touch /ok; sleep 3; rm /ok; sleep 3600")
    try:
        first = wait_for(lambda: [t for t in tasks(env.sched, "sick", all_=True) if t.healthy == "healthy"], 60,
                         "the first task healthy")[0]
        failed = wait_for(lambda: [t for t in tasks(env.sched, "sick", all_=True)
                                   if t.id == first.id and t.state == "failed"], 60, "the first task ended")[0]
        assert "unhealthy" in failed.error, failed
        again = wait_for(lambda: [t for t in running(env.sched, "sick") if t.id != first.id], 60, "a replacement")
        assert again[0].slot == first.slot
    finally:
        env.cli("service", "rm", "sick")
        wait_for(lambda: not [c for c in env.agent.task_containers() if "sick" in str(c)], 60, "sick's containers gone")


def test_service_create_mount_reaches_the_task(env: Env) -> None:
    import json

    env.ok("service", "create", "--name", "vol", "--mount", "type=volume,src=svcdata,dst=/data", "--mount",
           "type=tmpfs,dst=/scratch,tmpfs-size=1m", "-q", "busybox:latest", "sh", "-c",
           "echo hi > /data/f; df /scratch | tail -1 > /data/df; sleep 3600")
    try:
        t = wait_for(lambda: running(env.sched, "vol"), 60, "vol running")[0]
        mounts = json.loads(env.cli("inspect", t.container_id).stdout)[0]["Mounts"]
        assert {(m["Type"], m.get("Name", ""), m["Destination"]) for m in mounts} == \
            {("volume", "svcdata", "/data"), ("tmpfs", "", "/scratch")}, mounts
        where = Path(json.loads(env.cli("volume", "inspect", "svcdata").stdout)[0]["Mountpoint"])
        wait_for(lambda: (where / "df").exists() and (where / "df").read_text().strip(), 30, "the task's writes")
        assert (where / "f").read_text() == "hi\n" and (where / "df").read_text().split()[1] == "1024"
    finally:
        env.cli("service", "rm", "vol")
        wait_for(lambda: not [c for c in env.agent.task_containers() if "vol." in str(c)], 60, "vol's containers gone")
        env.cli("volume", "rm", "-f", "svcdata")
