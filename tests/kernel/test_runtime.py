"""Containers on one host, end to end through the CLI and a real agent, as root on the real kernel."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import process, seccomp
from agent.runtime import syscalls as sc
from agent.runtime.spec import ProcessSpec
from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess

pytestmark = pytest.mark.root


def _pid(a: AgentProcess, ref: str) -> int:
    return int(a.inspect(ref)["State"]["Pid"])


@pytest.mark.slow
def test_run_echo_and_exit_code(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "busybox", "echo", "hello")
    assert (r.returncode, r.stdout) == (0, "hello\n")
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c", "echo oops >&2; exit 3")
    assert r.returncode == 3
    assert r.stderr == "oops\n"
    assert clean_agent.cli("ps", "-a", "-q").stdout == ""  # --rm removed both


def test_run_streams_all_output_from_the_first_byte(clean_agent: AgentProcess) -> None:
    """`run` attaches from the container's birth (the monitor gets the stream with the start):
    a command that writes at once and fast loses nothing, on either stream."""
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c", "seq 1 30000; seq 1 5000 >&2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(i) for i in range(1, 30001)]
    assert r.stderr.split() == [str(i) for i in range(1, 5001)]


def test_run_rm_returns_once_removed(clean_agent: AgentProcess) -> None:
    """As docker's `run --rm`: the exit status comes once the container is gone, so its name can
    be taken again at once (the CLI's own start-up would hide a race: ask the API directly)."""
    for i in range(10):
        cfg = pb.ContainerConfig(image="busybox", cmd=["true"], name="once", auto_remove=True, network_mode="none")
        if i % 2:  # as `dockyard run` does: one call that creates too
            outs = list(clean_agent.stub.Attach(iter([pb.StreamInput(open=pb.OpenStream(create=cfg))])))
        else:
            c = clean_agent.stub.CreateContainer(pb.CreateContainerRequest(config=cfg))
            outs = list(clean_agent.stub.Attach(iter([pb.StreamInput(open=pb.OpenStream(container=c.id, start=True))])))
        assert outs[-1].exit.exit_code == 0
        assert clean_agent.stub.ListContainers(pb.ListContainersRequest(all=True)).containers == []


def test_namespaces_differ_from_the_host(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sleep", "60")
    pid = _pid(clean_agent, cid)
    for ns in ("pid", "net", "mnt", "ipc", "uts"):
        assert os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino, ns
    r = clean_agent.cli("exec", cid, "sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '")
    lines = r.stdout.splitlines()
    assert int(lines[0]) < 10  # a pid of the container's own namespace
    assert lines[1].strip() == "sleep 60"


def test_containers_share_no_namespace_and_hold_no_runtime_descriptor(clean_agent: AgentProcess) -> None:
    """Inits are cloned ahead of their containers, by the zygote's spare child, which holds the
    agent's request socket (shim.Precloned): each container must still get namespaces of its own,
    and nothing open but its stdio."""
    pids = [_pid(clean_agent, clean_agent.run_detached("busybox", "sleep", "60")) for _ in range(3)]
    for ns in ("pid", "net", "mnt", "ipc", "uts"):
        inodes = {os.stat(f"/proc/{pid}/ns/{ns}").st_ino for pid in pids}
        assert len(inodes) == 3, ns
    for pid in pids:
        fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert sorted(fds) == ["0", "1", "2"], fds


def test_pid_one_hostname_env_workdir_user(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "-h", "box1", "-e", "FOO=bar", "-w", "/work/dir", "-u", "nobody",
                        "busybox", "sh", "-c", 'echo $$ $(hostname) $FOO $(pwd) $(id -u)')
    assert r.stdout.split() == ["1", "box1", "bar", "/work/dir", "65534"], r.stderr


def test_env_file_and_entrypoint(clean_agent: AgentProcess, tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("# comment\nA=1\nB=two words\n")
    r = clean_agent.cli("run", "--rm", "--env-file", str(env), "--entrypoint", "/bin/sh", "busybox",
                        "-c", 'echo "$A|$B"')
    assert r.stdout == "1|two words\n", r.stderr


def test_stdin_is_piped(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "-i", "--rm", "busybox", "cat", input="hi there\n")
    assert r.stdout == "hi there\n", r.stderr


def test_rootfs_is_isolated_and_masked(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c",
                        "ls /dev | sort | tr '\\n' ' '; echo; cat /proc/kcore | wc -c; "
                        "(echo x > /proc/sys/kernel/hostname) 2>&1 | grep -c Read-only; grep -c ' / ' /proc/mounts; "
                        "cat /proc/self/status | grep CapEff")
    out = r.stdout.splitlines()
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"):
        assert dev in out[0].split(), out[0]
    assert out[1].strip() == "0"  # /proc/kcore is masked with /dev/null
    assert out[2].strip() == "1"  # /proc/sys is read-only
    # docker's default capability set: 0x00000000a80425fb
    assert out[4].split()[1] == "00000000a80425fb"


@pytest.mark.slow
def test_copy_on_write_leaves_the_image_alone(clean_agent: AgentProcess) -> None:
    clean_agent.cli("run", "--name", "cow", "busybox", "sh", "-c", "echo changed > /bin/sh.txt; rm /bin/ls", check=True)
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c", "test -e /bin/sh.txt; echo $?; test -e /bin/ls; echo $?")
    assert r.stdout.split() == ["1", "0"]


def test_oom_kill_shows_137_and_oomkilled(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--name", "oom", "-m", "16m", "--memory-swap", "16m", "busybox", "sh", "-c",
                        "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived")
    assert r.returncode == 137, (r.stdout, r.stderr)
    assert "survived" not in r.stdout
    state = clean_agent.inspect("oom")["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137


def test_pids_limit(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--pids-limit", "8", "busybox", "sh", "-c",
                        "for i in $(seq 20); do sleep 2 & done 2>&1; wait")
    assert re.search(r"can't fork|Resource temporarily unavailable", r.stdout + r.stderr), (r.stdout, r.stderr)


def _cgroup_dir(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise AssertionError(f"no {controller} cgroup for {pid}")


@pytest.mark.slow
@pytest.mark.slow  # under load the loop may take seconds to get its first 20 ms of a period
def test_cpu_quota_throttles(clean_agent: AgentProcess) -> None:
    start = time.monotonic()
    cid = clean_agent.run_detached("--cpus", "0.2", "busybox", "sh", "-c", "while :; do :; done")
    pid = _pid(clean_agent, cid)
    d = _cgroup_dir(pid, "cpu")
    assert (d / "cpu.cfs_quota_us").read_text().strip() == "20000"

    def throttled() -> int:
        return int(dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())["nr_throttled"])

    # Wait for the condition, not a fixed time: a loaded machine may not give the loop even its
    # 0.2 CPU at first, and then the quota has nothing to throttle yet.
    clean_agent.wait_for(lambda: throttled() >= 3, timeout=60, what="the loop throttled three times")
    usage = int((_cgroup_dir(pid, "cpuacct") / "cpuacct.usage").read_text())
    wall = time.monotonic() - start
    # never more than the quota over the time it has run, give or take one period's burst
    assert usage <= 0.2e9 * wall + 0.05e9, f"{usage / 1e9:.2f} s of CPU in {wall:.2f} s at --cpus 0.2"


def test_memory_limit_is_written(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("-m", "64m", "busybox", "sleep", "60")
    d = _cgroup_dir(_pid(clean_agent, cid), "memory")
    assert int((d / "memory.limit_in_bytes").read_text()) == 64 << 20


def _log_lines(a: AgentProcess, ref: str) -> int:
    return len(a.cli("logs", ref).stdout.splitlines())


@pytest.mark.slow
def test_pause_stops_progress_and_unpause_resumes(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done")
    clean_agent.wait_for(lambda: _log_lines(clean_agent, cid) > 3, what="output")
    clean_agent.cli("pause", cid, check=True)
    assert clean_agent.inspect(cid)["State"]["Status"] == "paused"
    assert "(Paused)" in clean_agent.cli("ps").stdout
    n1 = _log_lines(clean_agent, cid)
    time.sleep(0.6)
    assert _log_lines(clean_agent, cid) == n1
    assert clean_agent.cli("exec", cid, "true").returncode != 0  # docker refuses exec while paused
    clean_agent.cli("unpause", cid, check=True)
    clean_agent.wait_for(lambda: _log_lines(clean_agent, cid) > n1 + 3, what="progress after unpause")


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_published_port_serves_http(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached(
        "-p", "127.0.0.1::80", "--name", "web", "busybox", "sh", "-c",
        "mkdir /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www")
    out = clean_agent.cli("port", cid, "80").stdout.strip()
    host, port = out.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    body = clean_agent.wait_for(lambda: _try(lambda: _http_get(f"http://127.0.0.1:{port}/")), what="httpd")
    assert body == "hello-from-web\n"
    ip = clean_agent.inspect(cid)["NetworkSettings"]["IPAddress"]
    assert _http_get(f"http://{ip}:80/") == "hello-from-web\n"  # the host reaches the container directly


def test_containers_reach_each_other(clean_agent: AgentProcess) -> None:
    a = clean_agent.run_detached("busybox", "sh", "-c", "echo pong > /tmp/i; exec httpd -f -p 8000 -h /tmp")
    ip = clean_agent.inspect(a)["NetworkSettings"]["IPAddress"]
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c",
                        f"for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://{ip}:8000/i && exit 0; sleep 0.2; done; exit 1")
    assert (r.returncode, r.stdout) == (0, "pong\n"), r.stderr


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except OSError:
        return None


@pytest.mark.slow
def test_network_none_and_host(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--network", "none", "busybox", "sh", "-c", "ls /sys/class/net | tr '\\n' ' '")
    assert r.stdout.split() == ["lo"]
    r = clean_agent.cli("run", "--rm", "--network", "host", "busybox", "hostname")
    assert r.stdout.strip() == socket.gethostname()


def test_pid_host(clean_agent: AgentProcess) -> None:
    r = clean_agent.cli("run", "--rm", "--pid", "host", "busybox", "sh", "-c", "test -d /proc/1 && echo $$")
    assert int(r.stdout) > 1


@pytest.mark.slow
def test_logs_tail_follow_timestamps(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo last")
    clean_agent.cli("wait", cid, check=True)
    assert clean_agent.cli("logs", "--tail", "2", cid).stdout == "line5\nlast\n"
    ts = clean_agent.cli("logs", "-t", "--tail", "1", cid).stdout
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z last\n", ts), ts
    cid2 = clean_agent.run_detached("busybox", "sh", "-c", "echo a; sleep 0.5; echo b")
    r = clean_agent.cli("logs", "-f", cid2, timeout=15)
    assert r.stdout == "a\nb\n"


@pytest.mark.slow
def test_stop_kills_after_grace_and_restart_policy(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sleep", "100")  # pid 1 ignores SIGTERM
    t0 = time.monotonic()
    clean_agent.cli("stop", "-t", "1", cid, check=True)
    assert 0.9 < time.monotonic() - t0 < 8
    assert clean_agent.inspect(cid)["State"]["ExitCode"] == 137
    cid = clean_agent.run_detached("--init", "busybox", "sleep", "100")  # --init forwards SIGTERM
    t0 = time.monotonic()
    clean_agent.cli("stop", "-t", "10", cid, check=True)
    assert time.monotonic() - t0 < 5
    assert clean_agent.inspect(cid)["State"]["ExitCode"] == 143
    cid = clean_agent.run_detached("--restart", "on-failure:2", "busybox", "sh", "-c", "exit 1")
    clean_agent.wait_for(lambda: clean_agent.inspect(cid)["RestartCount"] == 2
                         and clean_agent.inspect(cid)["State"]["Status"] == "exited", what="two restarts")


@pytest.mark.slow
def test_kill_signal_and_restart(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sh", "-c", "trap 'echo got-usr1' USR1; while :; do sleep 0.1; done")
    time.sleep(0.3)
    clean_agent.cli("kill", "-s", "USR1", cid, check=True)
    clean_agent.wait_for(lambda: "got-usr1" in clean_agent.cli("logs", cid).stdout, what="trap")
    pid1 = _pid(clean_agent, cid)
    clean_agent.cli("restart", "-t", "0", cid, check=True)
    assert clean_agent.inspect(cid)["State"]["Running"] and _pid(clean_agent, cid) != pid1


@pytest.mark.slow
def test_exec_joins_namespaces_and_cgroup(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("-e", "FROMRUN=1", "busybox", "sleep", "60")
    pid = _pid(clean_agent, cid)
    r = clean_agent.cli("exec", "-e", "X=2", "-w", "/tmp", cid, "sh", "-c",
                        "echo $FROMRUN$X $(pwd) $(hostname); cat /proc/self/cgroup | grep memory; ps -o pid,args")
    lines = r.stdout.splitlines()
    assert lines[0] == f"12 /tmp {cid[:12]}"
    assert lines[1].split(":", 2)[2] == Path(f"/proc/{pid}/cgroup").read_text().split("memory:")[1].splitlines()[0]
    assert any(ln.split()[0] == "1" and "sleep 60" in ln for ln in lines[2:])
    assert clean_agent.cli("exec", cid, "sh", "-c", "exit 5").returncode == 5
    r = clean_agent.cli("exec", cid, "nosuch")
    assert r.returncode in (126, 127) and "executable file not found" in r.stderr


@pytest.mark.slow
def test_top_inspect_ps_format(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("--name", "topme", "-l", "app=x", "busybox", "sleep", "60")
    assert "sleep 60" in clean_agent.cli("top", "topme").stdout
    doc = clean_agent.inspect("topme")
    assert doc["Id"] == cid and doc["Name"] == "/topme" and doc["Config"]["Labels"] == {"app": "x"}
    assert cid[:12] in clean_agent.cli("ps", "-q", "-f", "label=app=x").stdout
    import json

    rows = json.loads(clean_agent.cli("ps", "--format", "json").stdout)
    assert rows[0]["name"] == "topme"


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_input_is_refused_and_leaves_nothing(clean_agent: AgentProcess) -> None:
    cases = [
        (["run", "--rm", "nosuchimage"], "nosuchimage"),
        (["run", "-m", "12x", "busybox", "true"], "12x"),
        (["run", "-p", "99999:80", "busybox", "true"], "99999"),
        (["run", "--cpus", "abc", "busybox", "true"], "abc"),
        (["run", "--restart", "sometimes", "busybox", "true"], "sometimes"),
        (["run", "--name", "bad name!", "busybox", "true"], "bad name!"),
        (["run", "--rm", "busybox", "nosuchcmd"], "nosuchcmd"),
        (["exec", "nosuchcontainer", "true"], "nosuchcontainer"),
        (["rm", "nosuchcontainer"], "nosuchcontainer"),
    ]
    for args, named in cases:
        r = clean_agent.cli(*args)
        assert r.returncode != 0, args
        assert named in r.stderr, (args, r.stderr)
    r = clean_agent.cli("run", "--rm", "busybox", "nosuchcmd")
    assert r.returncode == 127
    assert "executable file not found" in r.stderr
    clean_agent.wait_for(lambda: clean_agent.cli("ps", "-a", "-q").stdout == "", what="--rm after a failed start")


@pytest.mark.slow
def test_name_taken_and_port_in_use(clean_agent: AgentProcess) -> None:
    dup = clean_agent.run_detached("--name", "dup", "-p", "127.0.0.1::80", "busybox", "sleep", "60")
    r = clean_agent.cli("run", "--name", "dup", "busybox", "true")
    assert r.returncode != 0 and "already in use" in r.stderr
    port = int(clean_agent.cli("port", "dup", "80").stdout.strip().rsplit(":", 1)[1])
    r = clean_agent.cli("run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "sleep", "60")
    assert r.returncode != 0 and str(port) in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = clean_agent.cli("run", "-d", "-p", f"127.0.0.1:{busy}:80", "busybox", "sleep", "60")
        assert r.returncode != 0 and str(busy) in r.stderr
    # The failed starts left created containers only, holding no address, mount, cgroup or veth.
    left = clean_agent.leftovers()
    assert [x for x in left if dup not in x and not x.startswith("dy")] == []
    assert len([x for x in left if x.startswith("dy")]) == 1


@pytest.mark.slow
def test_remove_running_needs_force_and_image_in_use(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("--name", "busy", "busybox", "sleep", "60")
    r = clean_agent.cli("rm", cid)
    assert r.returncode != 0 and "Stop the container" in r.stderr
    r = clean_agent.cli("rmi", "busybox")
    assert r.returncode != 0 and "busy" in r.stderr  # names the container that uses it
    clean_agent.cli("rm", "-f", cid, check=True)
    assert clean_agent.cli("ps", "-a", "-q").stdout == ""


def test_resource_flags_reach_the_cgroup(clean_agent: AgentProcess) -> None:
    args = ["--cpu-shares", "512", "-m", "32m", "--memory-swap", "64m", "--pids-limit", "77", "--blkio-weight", "300"]
    disk = next((d for d in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(d)), None)
    if disk:
        args += ["--device-read-bps", f"{disk}:1mb", "--device-write-bps", f"{disk}:2mb"]
    cid = clean_agent.run_detached(*args, "busybox", "sleep", "60")
    pid = _pid(clean_agent, cid)
    assert (_cgroup_dir(pid, "cpu") / "cpu.shares").read_text().strip() == "512"
    mem = _cgroup_dir(pid, "memory")
    assert int((mem / "memory.limit_in_bytes").read_text()) == 32 << 20
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 64 << 20
    assert (_cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "77"
    blkio = _cgroup_dir(pid, "blkio")
    weight = next((blkio / f for f in ("blkio.weight", "blkio.bfq.weight") if (blkio / f).exists()), None)
    if weight is not None:
        assert "300" in weight.read_text()
    if disk:
        st = os.stat(disk).st_rdev
        dev = f"{os.major(st)}:{os.minor(st)}"
        assert f"{dev} 1048576" in (blkio / "blkio.throttle.read_bps_device").read_text()
        assert f"{dev} 2097152" in (blkio / "blkio.throttle.write_bps_device").read_text()
    doc = clean_agent.inspect(cid)["HostConfig"]
    assert (doc["Memory"], doc["MemorySwap"], doc["CpuShares"]) == (32 << 20, 64 << 20, 512)


@pytest.mark.slow
def test_update_changes_only_the_limits_given_on_a_running_container(clean_agent: AgentProcess) -> None:
    """docker update: -m, --cpus, --pids-limit and --restart reach the live cgroup and the record;
    what is not named keeps its value; bad input names the flag and changes nothing."""
    cid = clean_agent.run_detached("--network", "none", "--cpu-shares", "512", "-m", "32m", "--pids-limit", "77",
                                   "busybox", "sleep", "60")
    pid = _pid(clean_agent, cid)
    r = clean_agent.cli("update", "-m", "48m", "--memory-swap", "96m", "--cpus", "0.5", "--pids-limit", "40",
                        "--restart", "on-failure:3", cid)
    assert (r.returncode, r.stdout) == (0, cid + "\n"), r.stderr
    mem = _cgroup_dir(pid, "memory")
    assert int((mem / "memory.limit_in_bytes").read_text()) == 48 << 20
    assert (_cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "40"
    assert (_cgroup_dir(pid, "cpu") / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (_cgroup_dir(pid, "cpu") / "cpu.shares").read_text().strip() == "512"   # not named: kept
    doc = clean_agent.inspect(cid)["HostConfig"]
    assert (doc["Memory"], doc["MemorySwap"], doc["NanoCpus"], doc["CpuShares"], doc["PidsLimit"]) == \
        (48 << 20, 96 << 20, 500_000_000, 512, 40)
    assert doc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    for argv, message in ([[], "you must provide one or more flags"],
                          [["-m", "1m"], "below the minimum of 6 MiB"],
                          [["--restart", "sometimes"], "invalid restart policy 'sometimes'"],
                          [["--cpus", "lots"], 'invalid argument "lots" for "--cpus" flag']):
        r = clean_agent.cli("update", *argv, cid)
        assert r.returncode != 0 and message in r.stderr, (argv, r.stderr)
    assert int((mem / "memory.limit_in_bytes").read_text()) == 48 << 20   # the refusals changed nothing
    r = clean_agent.cli("update", "-m", "64m", "no-such-container")
    assert r.returncode == 1 and "no-such-container" in r.stderr, r.stderr


@pytest.mark.slow
def test_create_then_start_and_rename(clean_agent: AgentProcess) -> None:
    cid = clean_agent.cli("create", "--name", "later", "busybox", "sh", "-c", "echo started-late", check=True).stdout.strip()
    assert clean_agent.inspect(cid)["State"]["Status"] == "created"
    assert "Created" in clean_agent.cli("ps", "-a").stdout
    clean_agent.cli("rename", "later", "later2", check=True)
    r = clean_agent.cli("start", "-a", "later2")
    assert (r.returncode, r.stdout) == (0, "started-late\n")
    assert clean_agent.cli("wait", "later2").stdout.strip() == "0"


@pytest.mark.slow
def test_seccomp_filter_refuses_namespace_and_mount_syscalls_unless_unconfined(clean_agent: AgentProcess) -> None:
    # unshare -U needs no capability: only the seccomp filter can refuse it (EPERM), as docker's does.
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c",
                        "grep Seccomp: /proc/self/status; unshare -U true; echo rc=$?")
    assert "Seccomp:\t2" in r.stdout, r.stdout
    assert "rc=0" not in r.stdout and "Operation not permitted" in r.stderr, (r.stdout, r.stderr)
    r = clean_agent.cli("run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "sh", "-c",
                        "grep Seccomp: /proc/self/status; unshare -U true; echo rc=$?")
    assert "Seccomp:\t0" in r.stdout and "rc=0" in r.stdout, (r.stdout, r.stderr)
    cid = clean_agent.run_detached("busybox", "sleep", "30")
    r = clean_agent.cli("exec", cid, "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true; echo rc=$?")
    assert "Seccomp:\t2" in r.stdout and "rc=0" not in r.stdout, r.stdout  # exec gets it too
    assert clean_agent.inspect(cid)["HostConfig"]["SecurityOpt"] is None
    # (profiles of the user's: tests/test_runflags.py)
    r = clean_agent.cli("run", "--rm", "--security-opt", "seccomp=/nonexistent/profile.json", "busybox", "true")
    assert r.returncode != 0 and "opening seccomp profile (/nonexistent/profile.json) failed" in r.stderr, r.stderr


# x86_64 numbers of the syscalls the seccomp tests make raw.
SYS_PERSONALITY, SYS_KEYCTL, SYS_CLONE3, SYS_IO_URING_SETUP = 135, 250, 435, 425
READ_IMPLIES_EXEC = 0x0400000  # a persona docker's list does not allow
AF_VSOCK = 40

# A static probe for the container test: each argument "name=nr[,arg...]" makes one raw syscall
# (an argument "buf" is a zeroed 4 KiB buffer) and prints name=ok, or name=<errno> when it fails.
PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char buf[4096];
    for (int i = 1; i < argc; i++) {
        char *name = argv[i], *p = strchr(name, '=');
        long a[6] = {0};
        int n = 0;
        *p++ = 0;
        long nr = strtol(p, &p, 0);
        while (*p == ',' && n < 6) {
            p++;
            if (strncmp(p, "buf", 3) == 0) { a[n++] = (long)buf; p += 3; }
            else a[n++] = strtol(p, &p, 0);
        }
        memset(buf, 0, sizeof buf);
        long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
        if (r < 0) printf("%s=%d\n", name, errno); else printf("%s=ok\n", name);
    }
    return 0;
}
"""


def _in_child(fn: Callable[[], Any]) -> Any:
    """fn's JSON result, computed in a forked child (the filter and the identity changes stay there)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"result": fn()}
        except BaseException as e:
            out = {"error": f"{e!r}\n{traceback.format_exc()}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    assert "error" not in out, out["error"]
    return out["result"]


def _errno_of(nr: int, *args: int) -> int:
    """0 if the raw syscall succeeded, else its errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if ret < 0 else 0


@pytest.mark.parametrize("uid", [0, 65534])
def test_seccomp_filter_lets_the_init_finish_its_setup_and_exec(uid: int) -> None:
    """process.become loads the filter first, then the init's own steps run under it: chdir, the
    bounding set, setgroups/setgid/setuid, ambient and (root) capset, no_new_privs, then execve."""
    def run() -> int:
        pid = os.fork()
        if pid == 0:
            try:
                spec = ProcessSpec(args=["sh"], cwd="/tmp")
                prepared = process.Prepared("/bin/sh", ["sh", "-c", 'grep -q "^Seccomp:[[:space:]]2$" /proc/self/status'],
                                            {"PATH": "/usr/bin:/bin"}, process.Identity(uid, uid, [uid], "/"))
                process.become(spec, prepared)
                process.execute(prepared)
            finally:
                os._exit(99)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert _in_child(run) == 0


def test_seccomp_filter_allows_dockers_list_and_refuses_the_rest() -> None:
    def probe() -> dict[str, int]:
        sc.seccomp_set_filter(seccomp.DEFAULT)
        ring_params = ctypes.create_string_buffer(120)
        child = os.fork()  # clone() without namespace flags
        if child == 0:
            os._exit(7)
        forked = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM):
            pass
        os.chroot("/")  # CAP_SYS_CHROOT is a default capability: docker allows chroot
        return {
            "fork": forked,
            "personality query": _errno_of(SYS_PERSONALITY, 0xFFFFFFFF),
            "personality READ_IMPLIES_EXEC": _errno_of(SYS_PERSONALITY, READ_IMPLIES_EXEC),
            "keyctl": _errno_of(SYS_KEYCTL, 0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
            "io_uring_setup": _errno_of(SYS_IO_URING_SETUP, 1, ctypes.addressof(ring_params)),
            "clone3": _errno_of(SYS_CLONE3, 0, 0),
            "unshare user": _errno_of(272, sc.CLONE_NEWUSER),
            "clone newnet": _errno_of(56, sc.CLONE_NEWNET | 17, 0, 0, 0, 0),
            "socket vsock": _errno_of(41, AF_VSOCK, socket.SOCK_STREAM, 0),
            "no such syscall": _errno_of(1000),
        }
    assert _in_child(probe) == {
        "fork": 7, "personality query": 0,
        "personality READ_IMPLIES_EXEC": errno.EPERM, "keyctl": errno.EPERM, "io_uring_setup": errno.EPERM,
        "clone3": errno.ENOSYS, "unshare user": errno.EPERM, "clone newnet": errno.EPERM,
        "socket vsock": errno.EPERM, "no such syscall": errno.EPERM,
    }
    # Unfiltered, the kernel itself answers the ones that need no privilege.
    unfiltered = _in_child(lambda: {"keyctl": _errno_of(SYS_KEYCTL, 0, -3, 0), "no such syscall": _errno_of(1000)})
    assert unfiltered == {"keyctl": 0, "no such syscall": errno.ENOSYS}


@pytest.mark.slow
def test_seccomp_is_an_allow_list_in_containers_unless_unconfined(clean_agent: AgentProcess, tmp_path: Path) -> None:
    """Syscalls docker's list leaves out, that no capability check would refuse first: EPERM under
    the filter, served by the kernel with seccomp=unconfined."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the static probe")
    (tmp_path / "probe.c").write_text(PROBE_C)
    subprocess.run(["cc", "-static", "-O2", "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")], check=True)
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY probe /probe\n")
    clean_agent.cli("build", "-t", "sysprobe", str(tmp_path), check=True, timeout=120)
    probes = ["getpid=39", f"io_uring_setup={SYS_IO_URING_SETUP},1,buf", f"personality_rix={SYS_PERSONALITY},{READ_IMPLIES_EXEC}",
              f"personality_query={SYS_PERSONALITY},0xffffffff", f"clone3={SYS_CLONE3},0,0"]
    script = f"grep Seccomp: /proc/self/status; /probe {' '.join(probes)}; chroot / true && echo chroot=ok"

    def results(*opts: str) -> dict[str, str]:
        r = clean_agent.cli("run", "--rm", *opts, "sysprobe", "sh", "-c", script)
        assert r.returncode == 0, r.stderr
        return dict(ln.replace(":\t", "=").split("=", 1) for ln in r.stdout.splitlines())

    assert results() == {
        "Seccomp": "2", "getpid": "ok", "io_uring_setup": str(errno.EPERM), "personality_rix": str(errno.EPERM),
        "personality_query": "ok", "clone3": str(errno.ENOSYS), "chroot": "ok",
    }
    free = results("--security-opt", "seccomp=unconfined")
    assert (free["Seccomp"], free["personality_rix"], free["clone3"]) == ("0", "ok", str(errno.EINVAL)), free
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        assert free["io_uring_setup"] == "ok", free
    clean_agent.cli("rmi", "sysprobe", check=True)
