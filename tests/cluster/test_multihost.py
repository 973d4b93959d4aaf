"""The multi-host harness itself: 3 netns hosts with their own agents, reachability between them and
from the root namespace, partition/heal, a host's death, and a destroy that leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from protos import agent_pb2 as pb
from tests.agent_harness import REPO
from tests.multihost import (  # noqa: F401  (fixtures)
    Cluster,
    Host,
    cluster,
    http_get,
    make_cluster_fixture,
    multihost_session_check_fixture,
    pids_in_netns,
    sweep_stale,
    tagged_leftovers,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.multinode]

WEB = "mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def c3(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
       multihost_session_check: None) -> Iterator[Cluster]:
    """3 hosts, each running web server "web" published on 8080 and answering its host's name."""
    t0 = time.monotonic()
    with cluster(3, tmp_path_factory.mktemp("mh"), busybox_tar_path) as c:
        print(f"TIMING cluster of 3 up with busybox: {time.monotonic() - t0:.2f}s")
        for h in c:
            run_web(h)
        yield c


def run_web(h: Host) -> str:
    return h.run_detached("--name", "web", "-p", "8080:80", "busybox", "sh", "-c", WEB.format(name=h.name))


def web_answers(h: Host, timeout: float = 10) -> str:
    def get() -> str:
        try:
            return http_get(f"http://{h.ip}:8080/", timeout=1)
        except OSError:
            return ""
    return str(wait_for(get, timeout, f"{h.name}'s web server"))


def init_pid(h: Host, ref: str) -> int:
    return int(h.inspect(ref)["State"]["Pid"])


def test_hosts_come_up_each_with_a_running_container(c3: Cluster) -> None:
    assert [h.name for h in c3] == ["host1", "host2", "host3"]
    for h in c3:
        state = h.inspect("web")["State"]
        assert state["Running"], state
        assert h.ip == str(c3.subnet.network_address + 10 + h.n)
    assert len({h.subnet for h in c3}) == 3
    assert len({h.cgroup_parent for h in c3}) == 3


def test_root_namespace_reaches_each_agent_over_tcp(c3: Cluster) -> None:
    for h in c3:
        info = h.tcp_stub.Info(pb.Empty(), timeout=5)
        assert info.name == h.name
        assert info.root == str(h.root)
        assert info.containers_running == 1


def test_published_ports_answer_from_root_namespace(c3: Cluster) -> None:
    for h in c3:
        assert web_answers(h).strip() == h.name


def test_host1_reaches_host2_published_port(c3: Cluster) -> None:
    h1, h2 = c3[1], c3[2]
    assert h1.http_get(f"http://{h2.ip}:8080/").strip() == "host2"
    assert h2.http_get(f"http://{h1.ip}:8080/").strip() == "host1"
    # and host2's agent metrics answer host1 (hosts reach each other's agent ports)
    assert "host2" in h1.http_get(c3[2].metrics_url)


@pytest.mark.slow
def test_partition_and_heal(c3: Cluster) -> None:
    h2 = c3[2]
    pid = init_pid(h2, "web")
    h2.partition()
    try:
        with pytest.raises(grpc.RpcError) as e:
            h2.tcp_stub.Info(pb.Empty(), timeout=1)
        assert e.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        with pytest.raises(OSError):
            http_get(f"http://{h2.ip}:8080/", timeout=1)
        with pytest.raises(OSError):
            c3[1].http_get(f"http://{h2.ip}:8080/", timeout=1)
        # cut off, not dead: the agent answers on its unix socket and the container runs on
        assert h2.stub.Info(pb.Empty(), timeout=5).name == "host2"
        assert h2.inspect("web")["State"]["Running"]
    finally:
        h2.heal()
    wait_for(lambda: _answers_tcp(h2), 10, "host2's agent over TCP after heal")
    assert web_answers(h2).strip() == "host2"
    assert init_pid(h2, "web") == pid  # the same process: it never stopped


def _answers_tcp(h: Host) -> bool:
    try:
        return bool(h.tcp_stub.Info(pb.Empty(), timeout=1).name == h.name)
    except grpc.RpcError:
        return False


@pytest.mark.slow
def test_kill_leaves_nothing_of_host3_running_and_revive(c3: Cluster) -> None:
    h3 = c3[3]
    h3.run_detached("--name", "sleeper", "busybox", "sleep", "1000")
    before = h3.processes()
    assert h3.proc is not None and h3.proc.pid in before
    assert init_pid(h3, "web") in before and init_pid(h3, "sleeper") in before
    assert len(before) >= 6  # agent, zygote, 2 shims, 2 inits (at least)
    netns_inode = h3._netns_inode

    h3.kill()
    assert h3.processes() == set()
    assert pids_in_netns(netns_inode) == set()
    assert not any(_alive(p) for p in before)
    assert not (Path("/sys/fs/cgroup/memory") / h3.cgroup_parent).exists()
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if str(h3.root) in m]
    assert not _answers_tcp(h3)
    # the other hosts do not notice
    assert web_answers(c3[1]).strip() == "host1"

    h3.revive()  # boots again on the same disk: the agent finds its containers dead
    states = {c.name: c.state for c in h3.stub.ListContainers(pb.ListContainersRequest(all=True)).containers}
    assert set(states) == {"web", "sleeper"} and "running" not in states.values(), states
    h3.cli("rm", "-f", "web", "sleeper", check=True)
    run_web(h3)
    assert web_answers(h3).strip() == "host3"
    assert _answers_tcp(h3)


@pytest.mark.slow
def test_restart_agent_keeps_containers(c3: Cluster) -> None:
    h1 = c3[1]
    pid = init_pid(h1, "web")
    h1.restart_agent(hard=True)
    assert init_pid(h1, "web") == pid
    assert _answers_tcp(h1)
    assert web_answers(h1).strip() == "host1"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except OSError:
        return False


@pytest.mark.slow
def test_destroy_leaves_nothing(make_cluster: Callable[[int], Cluster]) -> None:
    c = make_cluster(2)
    for h in c:
        run_web(h)
    web_answers(c[2])
    pids = c.processes()
    assert len(pids) >= 6
    cgroups = [h.cgroup_parent for h in c]
    inodes = [h._netns_inode for h in c]
    c.destroy()
    assert c.leftovers() == []
    assert not any(_alive(p) for p in pids)
    assert all(pids_in_netns(i) == set() for i in inodes)
    assert not any(Path("/sys/fs/cgroup", ctl, cg).exists() for ctl in ("memory", "cpu", "pids", "freezer")
                   for cg in cgroups)
    assert tagged_leftovers(c.tag) == []
    with open("/proc/mounts") as f:
        assert not [ln for ln in f if str(c.base) in ln]
    assert not c.base.exists()
    c.destroy()  # twice is fine


def test_a_failed_start_cleans_up(tmp_path: Path, multihost_session_check: None) -> None:
    c = Cluster(1, tmp_path)
    c.base.mkdir(parents=True)
    bad = Host.agent_argv

    def broken(self: Host) -> list[str]:
        return [*bad(self), "--no-such-flag"]

    Host.agent_argv = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="agent exited"):
            c.start()
    finally:
        Host.agent_argv = bad  # type: ignore[method-assign]
    assert c.leftovers() == []
    assert json.dumps(tagged_leftovers(c.tag)) == "[]"


@pytest.mark.slow
def test_a_killed_session_is_swept_by_the_next(tmp_path: Path, multihost_session_check: None) -> None:
    """A test run killed by a timeout leaves its cluster; the next one to make a cluster removes it."""
    script = ("import os, signal, sys; from pathlib import Path; from tests.multihost import Cluster; "
              "c = Cluster(1, Path(sys.argv[1])).start(); print(c.tag, c[1].proc.pid, flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    tag, agent_pid = r.stdout.split()
    assert r.returncode == -9, r.stderr
    assert _alive(int(agent_pid))  # orphaned, still running in its netns
    assert {kind for kind, _ in tagged_leftovers(tag)} >= {"netns", "link"}
    assert tag in sweep_stale()
    assert tagged_leftovers(tag) == []
    assert not _alive(int(agent_pid))
    assert not list(tmp_path.glob(f"cluster-{tag}/*"))
    assert tag not in sweep_stale()
