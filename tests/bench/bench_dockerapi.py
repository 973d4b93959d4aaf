"""The Docker Engine API (agent/dockerapi): `docker run --rm busybox true` through the dockyard
agent's socket against the same docker CLI on a dockerd started by hand, same busybox rootfs,
same run; and the API's added latency per call over the native gRPC path (container inspect,
ps, create + rm; p50 and p99, one keep-alive connection each, interleaved).

dockerd runs with --bridge=none (FACTS.md), so the like-for-like row is --network none on both;
dockyard's bridge network is reported beside it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, import_busybox
from tests.bench.common import Dockerd, load, machine

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
CALLS = int(os.environ.get("BENCH_CALLS", "300"))


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.path)
        self.sock = s


def _ms(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000


def docker_run(sock: Path, conf: Path, network: str, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=str(conf))
    t0 = time.perf_counter()
    r = subprocess.run(["docker", "run", "--rm", "--network", network, *extra, "busybox", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"docker run against {sock} failed: {r.stderr}")
    return took


def dockyard_run(agent: AgentProcess) -> float:
    """dockyard's own CLI, the installed entry point (what a user types), on the same agent."""
    cli = Path(sys.executable).parent / "dockyard"
    t0 = time.perf_counter()
    r = subprocess.run([str(cli), "-H", agent.host, "run", "--rm", "--network", "none", "busybox", "true"],
                       capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"dockyard run failed: {r.stderr}")
    return took


def docker_version(sock: Path, conf: Path) -> float:
    """The docker CLI's own floor: a Go process start and one API call."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=str(conf))
    t0 = time.perf_counter()
    subprocess.run(["docker", "version", "--format", "{{.Server.APIVersion}}"], env=env, capture_output=True,
                   check=True, timeout=60)
    return time.perf_counter() - t0


def series(fn: object, n: int) -> list[float]:
    assert callable(fn)
    fn()  # warm: page cache, the agent's spare processes, dockerd's first container
    return [fn() for _ in range(n)]


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-dockerapi-"))
    agent = AgentProcess(base / "agent")
    dockerd = Dockerd(base / "docker")
    conf = base / "cli-config"
    rows: list[tuple[str, list[float]]] = []
    try:
        agent.start()
        tar = base / "busybox.tar"
        subprocess.run(["sh", "deploy/images/busybox.sh", "-o", str(tar)], check=True)
        import_busybox(agent, tar)
        dockerd.base.mkdir(parents=True, exist_ok=True)
        dockerd.start()
        with open(tar, "rb") as f:
            subprocess.run(["docker", "-H", f"unix://{dockerd.sock}", "import", "--change", 'CMD ["sh"]', "-",
                            "busybox:latest"], stdin=f, check=True, capture_output=True,
                           env={**os.environ, "DOCKER_CONFIG": str(conf)})
        # interleaved, so that load changes hit both alike
        dy_none: list[float] = []
        dk_none: list[float] = []
        dy_bridge: list[float] = []
        dy_cli: list[float] = []
        dy_vol: list[float] = []
        dk_vol: list[float] = []
        floor: list[float] = []
        vol = ("-v", "benchvol:/data")
        docker_run(agent.docker_socket, conf, "none")
        docker_run(dockerd.sock, conf, "none")
        docker_run(agent.docker_socket, conf, "none", *vol)
        docker_run(dockerd.sock, conf, "none", *vol)
        dockyard_run(agent)
        for _ in range(RUNS):
            dy_none.append(docker_run(agent.docker_socket, conf, "none"))
            dk_none.append(docker_run(dockerd.sock, conf, "none"))
            dy_cli.append(dockyard_run(agent))
            dy_bridge.append(docker_run(agent.docker_socket, conf, "bridge"))
            dy_vol.append(docker_run(agent.docker_socket, conf, "none", *vol))
            dk_vol.append(docker_run(dockerd.sock, conf, "none", *vol))
            floor.append(docker_version(agent.docker_socket, conf))
        rows += [("docker run --rm --network none busybox true -> dockyard", dy_none),
                 ("docker run --rm --network none busybox true -> dockerd", dk_none),
                 ("dockyard run --rm --network none busybox true (own CLI)", dy_cli),
                 ("docker run --rm busybox true (bridge) -> dockyard", dy_bridge),
                 ("docker run --rm --network none -v benchvol:/data ... -> dockyard", dy_vol),
                 ("docker run --rm --network none -v benchvol:/data ... -> dockerd", dk_vol),
                 ("docker version (the CLI's floor: its start + one call) -> dockyard", floor)]

        # the API's own cost over the native gRPC path, one keep-alive connection each, interleaved:
        # container inspect, ps (list; 5 containers), create + rm of a container
        cid = agent.run_detached("--network", "none", "busybox", "sleep", "600")
        for _ in range(4):
            agent.run_detached("--network", "none", "busybox", "sleep", "600")
        conn = _UnixHTTP(str(agent.docker_socket))

        def http(method: str, path: str, body: bytes | None = None, want: int = 200) -> bytes:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == want, (path, resp.status, data)
            return data

        def http_create_rm() -> None:
            new = json.loads(http("POST", "/v1.45/containers/create", b'{"Image": "busybox", "Cmd": ["true"], '
                                  b'"HostConfig": {"NetworkMode": "none"}}', 201))["Id"]
            http("DELETE", f"/v1.45/containers/{new}", want=204)

        def grpc_create_rm() -> None:
            new = agent.stub.CreateContainer(pb.CreateContainerRequest(config=pb.ContainerConfig(
                image="busybox", cmd=["true"], network_mode="none"))).id
            agent.stub.RemoveContainer(pb.RemoveContainerRequest(id=new))

        calls: dict[str, tuple[Any, Any, int]] = {
            "container inspect": (lambda: http("GET", f"/v1.45/containers/{cid}/json"),
                                  lambda: agent.stub.InspectContainer(pb.ContainerRef(id=cid)), CALLS),
            "ps (5 containers)": (lambda: http("GET", "/v1.45/containers/json"),
                                  lambda: agent.stub.ListContainers(pb.ListContainersRequest()), CALLS),
            "create + rm": (http_create_rm, grpc_create_rm, max(20, CALLS // 10)),
        }
        lat: dict[str, tuple[list[float], list[float]]] = {}
        for what, (via_http, via_grpc, n) in calls.items():
            http_t: list[float] = []
            grpc_t: list[float] = []
            for i in range(n + 5):
                t0 = time.perf_counter()
                via_http()
                t1 = time.perf_counter()
                via_grpc()
                t2 = time.perf_counter()
                if i >= 5:
                    http_t.append(t1 - t0)
                    grpc_t.append(t2 - t1)
            lat[what] = (http_t, grpc_t)
        conn.close()
        print(f"machine: {machine()}; {RUNS} runs, {CALLS} calls")
        print(f"{'what':60} {'median ms':>10} {'p90 ms':>8}")
        for name, xs in rows:
            print(f"{name:60} {statistics.median(xs) * 1000:10.1f} {_ms(xs, 0.9):8.1f}")
        ratio = statistics.median(dy_none) / statistics.median(dk_none)
        print(f"dockyard / dockerd (network none): {ratio:.2f}x; with a named volume: "
              f"{statistics.median(dy_vol) / statistics.median(dk_vol):.2f}x; the docker CLI on dockyard / "
              f"dockyard's own CLI: {statistics.median(dy_none) / statistics.median(dy_cli):.2f}x")
        for what, (http_t, grpc_t) in lat.items():
            print(f"{what + f', one call ({len(http_t)} each)':60} {'p50 ms':>10} {'p99 ms':>8}")
            print(f"{'  Docker API (HTTP, keep-alive)':60} {_ms(http_t, 0.5):10.2f} {_ms(http_t, 0.99):8.2f}")
            print(f"{'  native gRPC':60} {_ms(grpc_t, 0.5):10.2f} {_ms(grpc_t, 0.99):8.2f}")
            print(f"  added by the Docker API: p50 {_ms(http_t, 0.5) - _ms(grpc_t, 0.5):+.2f} ms, "
                  f"p99 {_ms(http_t, 0.99) - _ms(grpc_t, 0.99):+.2f} ms")
        print(f"load average {load()}")
        return 0
    finally:
        agent.destroy()
        dockerd.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
