"""Scheduler replicas and joined agents for tests: real processes, stopped by their PIDs.

    s = SchedulerProcess(base, etcd=server.endpoint); s.start()
    a = JoinedAgent(base / "agent", join=s.address); a.start()
    r = cli(s.address, "service", "ps", "web")
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from common import transport
from protos import cluster_pb2 as cpb
from protos import cluster_pb2_grpc as cpbg
from tests.agent_harness import CLI, REPO, STARTED, AgentProcess, _env, free_port

BUSYBOX = "busybox:latest"


def cli(scheduler: str, *args: str, timeout: float = 60, host: str = "",
        cert_path: str = "") -> subprocess.CompletedProcess[str]:
    env = _env()
    env["DOCKYARD_SCHEDULER"] = scheduler
    if cert_path:
        env["DOCKYARD_CERT_PATH"] = cert_path
    pre = ["-H", host] if host else []
    return subprocess.run([*CLI, *pre, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def wait_for(pred: Any, timeout: float = 20, what: str = "condition", every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = pred()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port_pair() -> int:
    """A free loopback port whose successor is free too (a --tls scheduler's join port is port + 1)."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port + 1))
            return port
    raise RuntimeError("no two free consecutive loopback ports")


class SchedulerProcess:
    def __init__(self, base: Path, etcd: str = "", listen: str = "", metrics: bool = True,
                 netns: str = "", ttl: int = 0, tls: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.extra_args = extra_args
        self.ttl = ttl  # node and leader lease TTL, seconds (0: the scheduler's default)
        self.etcd = etcd
        self.tls = tls  # --tls: mutual TLS; this harness talks to it with the admin bundle it writes
        self.address = listen or f"127.0.0.1:{free_port_pair() if tls else free_port()}"
        self.metrics_addr = f"127.0.0.1:{free_port()}" if metrics else ""
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "scheduler.log"
        self._channel: grpc.Channel | None = None

    def argv(self) -> list[str]:
        args = [*CLI, "scheduler", "--listen", self.address, "--state-dir", str(self.base / "state"),
                "--metrics-addr", self.metrics_addr]
        if self.etcd:
            args += ["--etcd", self.etcd]
        # TLS is the scheduler's default; the plaintext tests say so (TLS's own: tests/cluster/test_tls_*.py)
        args += ["--tls" if self.tls else "--insecure"]
        if self.ttl:
            args += ["--ttl", str(self.ttl)]
        return args + list(self.extra_args)

    @property
    def cert_path(self) -> Path:
        """The admin client bundle a --tls scheduler writes (DOCKYARD_CERT_PATH for the CLI)."""
        return self.base / "state" / "client"

    def identity(self) -> transport.Identity:
        if not self.tls:
            return transport.CLI
        from common import pki

        return transport.CLI.with_tls(pki.read_bundle(self.cert_path))

    def spawn(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
                                         start_new_session=True)

    def start(self, timeout: float = 30) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scheduler exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(grpc.RpcError, OSError, ValueError):  # a --tls bundle not written yet
                self.status()
                return
            time.sleep(0.1)
        raise RuntimeError(f"scheduler did not come up:\n{self.log.read_text()[-3000:]}")

    @property
    def stub(self) -> cpbg.SchedulerStub:
        if self._channel is None:
            self._channel = transport.dial_blocking(self.address, self.identity(), transport.Role.SCHEDULER)
        return cpbg.SchedulerStub(self._channel)  # type: ignore[no-untyped-call]

    def status(self) -> cpb.SchedulerStatus:
        s: cpb.SchedulerStatus = self.stub.Status(cpb.Empty(), timeout=2)
        return s

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def kill9(self) -> None:
        """A power cut of the scheduler process (its embedded etcd, if any, is left to stop())."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def embedded_etcd_pid(self) -> int | None:
        """The PID of the etcd this scheduler started (its child), if any."""
        ports = self.base / "state" / "etcd.json"
        if not ports.exists() or self.proc is None:
            return None
        port = json.loads(ports.read_text())["client"]
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                if cmd and cmd[0].endswith(b"etcd") and any(f"{s}://127.0.0.1:{port}".encode() in cmd
                                                            for s in ("http", "https")):
                    return int(p.name)
        return None


class JoinedAgent(AgentProcess):
    """A test agent (tests/agent_harness.py) that also serves TCP and joins a scheduler."""

    def __init__(self, base: Path, join: str, name: str = "", token: str = "") -> None:
        super().__init__(base)
        self.join = join
        self.token = token  # a join token: the agent joins a --tls scheduler by it
        self.listen = f"127.0.0.1:{free_port()}"
        self.node = name or f"node-{self.bridge}"

    def start(self) -> None:
        if self not in STARTED:
            STARTED.append(self)
        self.base.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "agent", "--root", str(self.root), "--socket", str(self.socket), "--bridge", self.bridge,
                 "--subnet", self.subnet, "--name", self.node, "--cgroup-parent", self.cgroup_parent,
                 "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--listen", self.listen, "--join", self.join,
                 "--docker-socket", str(self.docker_socket), *(["--token", self.token] if self.token else ["--insecure"]),
                 "--ip-forward=false", "--ip-masq=false"],  # the machine's own namespace: left alone
                stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 30
        from protos import agent_pb2 as pb

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.socket.exists():
                with contextlib.suppress(grpc.RpcError):
                    self.stub.Info(pb.Empty(), timeout=2)
                    return
            time.sleep(0.05)
        raise RuntimeError(f"agent did not come up:\n{self.log.read_text()[-3000:]}")

    def task_containers(self, running_only: bool = True) -> list[Any]:
        from protos import agent_pb2 as pb

        cs = self.stub.ListContainers(pb.ListContainersRequest(all=not running_only,
                                                               filters={"label": "dockyard.task"}), timeout=10)
        return list(cs.containers)


def tasks(s: SchedulerProcess, *services: str, all_: bool = False) -> list[cpb.TaskInfo]:
    r = s.stub.ListTasks(cpb.ListTasksRequest(services=list(services), all=all_), timeout=5)
    return list(r.tasks)


def running(s: SchedulerProcess, service: str) -> list[cpb.TaskInfo]:
    return [t for t in tasks(s, service) if t.desired_state == "running" and t.state == "running"]


@contextlib.contextmanager
def one_node_cluster(base: Path, busybox_tar: Path, name: str = "solo"
                     ) -> Iterator[tuple[Any, SchedulerProcess, JoinedAgent]]:
    """A real etcd, a scheduler on it and one agent joined to it (busybox imported, node ready);
    every process stopped by its PID afterwards, the agent's containers removed."""
    from tests.agent_harness import import_busybox
    from tests.etcd_server import EtcdServer

    etcd = EtcdServer.start()
    sched = SchedulerProcess(base / "sched", etcd=etcd.endpoint)
    agent = JoinedAgent(base / "agent", join=sched.address, name=name)
    try:
        sched.start()
        agent.start()
        import_busybox(agent, busybox_tar)
        wait_for(lambda: [n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes if n.status == "ready"],
                 20, "the node ready")
        yield etcd, sched, agent
    finally:
        try:
            agent.destroy()
        finally:
            sched.stop()
            etcd.stop()


@contextlib.contextmanager
def tls_one_node_cluster(base: Path, busybox_tar: Path, name: str, sched_args: tuple[str, ...] = ()
                         ) -> Iterator[tuple[SchedulerProcess, JoinedAgent]]:
    """A real etcd, a `--tls` scheduler on it (``sched_args`` added) and one agent joined by the
    worker token (busybox imported, node ready); every process stopped by its PID afterwards."""
    from tests.agent_harness import import_busybox
    from tests.etcd_server import EtcdServer

    etcd = EtcdServer.start()
    sched = SchedulerProcess(base / "s", etcd=etcd.endpoint, tls=True, extra_args=sched_args)
    agent: JoinedAgent | None = None
    try:
        sched.start()
        r = cli(sched.address, "cluster", "join-token", "worker", "-q", cert_path=str(sched.cert_path))
        assert r.returncode == 0, r.stderr
        agent = JoinedAgent(base / "a", join=sched.address, name=name, token=r.stdout.strip())
        agent.start()
        wait_for(lambda: [n for n in sched.stub.ListNodes(cpb.Empty(), timeout=2).nodes if n.status == "ready"],
                 20, "the node ready")
        import_busybox(agent, busybox_tar)
        yield sched, agent
    finally:
        try:
            if agent is not None:
                agent.destroy()
        finally:
            sched.stop()
            etcd.stop()
