"""A real agent for tests: its own root, socket, bridge and subnet, started as a child process and
torn down completely (containers, mounts, cgroups, bridge, iptables chains, state) even on failure.

    from tests.agent_harness import agent  # noqa: F401  (the module-scoped fixture)

    def test_x(agent):
        r = agent.cli("run", "--rm", "busybox", "echo", "hi")
        assert r.stdout == "hi\\n"
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common import transport
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "deploy.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("DOCKYARD_HOST", None)
    return env


_TAKEN: set[str] = set()


def _free_subnet() -> str:
    """A 172.28.X.0/24 that no interface of this host uses (agents refuse overlapping subnets)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(500):
        x = secrets.randbelow(250) + 1
        net = f"172.28.{x}.0/24"
        if net not in _TAKEN and f" 172.28.{x}." not in used:
            _TAKEN.add(net)
            return net
    raise RuntimeError("no free 172.28.X.0/24 subnet for a test agent")


def _own_cgroup() -> str:
    from agent.daemon import own_cgroup

    return own_cgroup()


STARTED: list[AgentProcess] = []  # every agent a test started, checked for leftovers at the end


class AgentProcess:
    def __init__(self, base: Path) -> None:
        tag = secrets.token_hex(3)
        self.base = base
        self.root = base / "root"
        self.socket = base / "agent.sock"
        self.docker_socket = base / "docker.sock"   # Docker's Engine API (agent/dockerapi)
        self.bridge = f"dyk{tag}"
        self.subnet = _free_subnet()
        self.host = f"unix://{self.socket}"
        self.cgroup_parent = _own_cgroup().strip("/") + f"/dockyard-test-{tag}"  # ours alone
        self.extra_args: list[str] = []
        self.root_flag = True   # False: the root comes from elsewhere (daemon.json's data-root)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "agent.log"
        self._channel: grpc.Channel | None = None
        self.metrics_port = 0

    # --- process ------------------------------------------------------------------------------

    @property
    def metrics_url(self) -> str:
        """http://127.0.0.1:PORT/metrics of the running agent (a free port picked at each start)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        if self not in STARTED:
            STARTED.append(self)
        self.base.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "agent", *(["--root", str(self.root)] if self.root_flag else []), "--socket", str(self.socket),
                 "--bridge", self.bridge,
                 "--subnet", self.subnet, "--name", f"test-{self.bridge}", "--cgroup-parent", self.cgroup_parent,
                 "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--docker-socket", str(self.docker_socket),
                 # in the machine's own namespace: leave its forwarding and NAT alone (the network rule)
                 "--ip-forward=false", "--ip-masq=false", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.socket.exists():
                try:
                    self.stub.Info(pb.Empty(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"agent did not come up:\n{self.log.read_text()[-3000:]}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._channel = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._channel = None

    # --- clients ------------------------------------------------------------------------------

    @property
    def stub(self) -> pbg.AgentStub:
        if self._channel is None:
            self._channel = transport.dial_blocking(self.host, transport.CLI, transport.Role.AGENT)
        return pbg.AgentStub(self._channel)  # type: ignore[no-untyped-call]

    def cli(self, *args: str, input: bytes | str | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        data = input.decode() if isinstance(input, bytes) else input
        r = subprocess.run([*CLI, "-H", self.host, *args], input=data, capture_output=True, text=True,
                           timeout=timeout, env=_env(), cwd=REPO)
        if check and r.returncode != 0:
            raise AssertionError(f"dockyard {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def inspect(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.stub.InspectContainer(pb.ContainerRef(id=ref)).json))

    def run_detached(self, *args: str) -> str:
        return self.cli("run", "-d", *args, check=True).stdout.strip()

    def wait_for(self, pred: Any, timeout: float = 10, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    # --- cleanup ------------------------------------------------------------------------------

    def remove_all_containers(self) -> None:
        try:
            cs = self.stub.ListContainers(pb.ListContainersRequest(all=True), timeout=10).containers
        except grpc.RpcError:
            return
        for c in cs:
            with contextlib.suppress(grpc.RpcError):
                self.stub.RemoveContainer(pb.RemoveContainerRequest(id=c.id, force=True), timeout=30)

    def leftovers(self) -> list[str]:
        """What of this agent's containers is still on the host: mounts, cgroups, veths."""
        out = []
        with open("/proc/mounts") as f:
            out += [ln.split()[1] for ln in f if str(self.root) in ln.split()[1]]
        parent = self.cgroup_parent
        for ctl in ("memory", "cpu", "pids", "freezer", "blkio", "devices", "cpuset"):
            d = Path("/sys/fs/cgroup") / ctl / parent
            if d.is_dir():
                # (not the spare a pre-cloned init waits in: shim.SpareCgroup; once the agent is
                # stopped there must be none)
                out += [str(p) for p in d.iterdir()
                        if p.is_dir() and not (p.name.startswith(".spare-") and self.running())]
        links = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True)
        out += [ln.split(":")[1].strip() for ln in links.stdout.splitlines() if ":" in ln]
        return out

    def destroy(self) -> None:
        """Everything: containers, agent, network, cgroup parents, state."""
        self.remove_all_containers()
        self.stop()
        sys.path.insert(0, str(REPO))
        from agent.runtime import network

        with contextlib.suppress(Exception):
            network.BridgeNetwork(self.root / "network", self.bridge, self.subnet).destroy()
        with contextlib.suppress(Exception):   # user-defined networks (docker network create)
            from agent.localnets import LocalNetworks

            LocalNetworks(self.root).destroy_all()
        with open("/proc/mounts") as f:
            mounts = [ln.split()[1] for ln in f if str(self.root) in ln.split()[1]]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        parent = self.cgroup_parent
        for ctl in os.listdir("/sys/fs/cgroup"):
            d = Path("/sys/fs/cgroup") / ctl / parent
            if d.is_dir():
                for sub in sorted(d.rglob("*"), key=lambda p: len(str(p)), reverse=True):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def import_busybox(agent: AgentProcess, tar: Path, ref: str = "busybox:latest") -> None:
    with open(tar, "rb") as f:
        proc = subprocess.run([*CLI, "-H", agent.host, "import", "--change", 'CMD ["sh"]', "-", ref],
                              stdin=f, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"import failed: {proc.stderr}")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[AgentProcess]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    a = AgentProcess(tmp_path_factory.mktemp("agent"))
    try:
        a.start()
        import_busybox(a, busybox_tar_path)
        yield a
    finally:
        a.destroy()


@pytest.fixture
def clean_agent(agent: AgentProcess) -> Iterator[AgentProcess]:
    """The module's agent, with every container removed after the test (and checked gone)."""
    yield agent
    agent.remove_all_containers()
    left = agent.leftovers()
    assert not left, f"left on the host after rm: {left}"
