"""The Docker Engine API (agent/dockerapi): `docker run --rm busybox true` through the dockyard
agent's socket against the same docker CLI on a dockerd started by hand, same busybox rootfs,
same run; and the API's added latency per call over the native gRPC path (container inspect,
p50 and p99, one keep-alive connection each).

dockerd runs with --bridge=none (FACTS.md), so the like-for-like row is --network none on both;
dockyard's bridge network is reported beside it.
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

        # the API's own cost: container inspect over HTTP vs over gRPC, one connection each
        cid = agent.run_detached("--network", "none", "busybox", "sleep", "600")
        conn = _UnixHTTP(str(agent.docker_socket))
        http_t: list[float] = []
        grpc_t: list[float] = []
        for i in range(CALLS + 10):
            t0 = time.perf_counter()
            conn.request("GET", f"/v1.45/containers/{cid}/json")
            resp = conn.getresponse()
            resp.read()
            t1 = time.perf_counter()
            agent.stub.InspectContainer(pb.ContainerRef(id=cid))
            t2 = time.perf_counter()
            assert resp.status == 200
            if i >= 10:
                http_t.append(t1 - t0)
                grpc_t.append(t2 - t1)
        conn.close()
        print(f"machine: {machine()}; {RUNS} runs, {CALLS} calls")
        print(f"{'what':60} {'median ms':>10} {'p90 ms':>8}")
        for name, xs in rows:
            print(f"{name:60} {statistics.median(xs) * 1000:10.1f} {_ms(xs, 0.9):8.1f}")
        ratio = statistics.median(dy_none) / statistics.median(dk_none)
        print(f"dockyard / dockerd (network none): {ratio:.2f}x; with a named volume: "
              f"{statistics.median(dy_vol) / statistics.median(dk_vol):.2f}x; the docker CLI on dockyard / "
              f"dockyard's own CLI: {statistics.median(dy_none) / statistics.median(dy_cli):.2f}x")
        print(f"{'inspect, one call':60} {'p50 ms':>10} {'p99 ms':>8}")
        print(f"{'  Docker API (HTTP, keep-alive)':60} {_ms(http_t, 0.5):10.2f} {_ms(http_t, 0.99):8.2f}")
        print(f"{'  native gRPC (InspectContainer)':60} {_ms(grpc_t, 0.5):10.2f} {_ms(grpc_t, 0.99):8.2f}")
        print(f"added by the Docker API: p50 {_ms(http_t, 0.5) - _ms(grpc_t, 0.5):+.2f} ms, "
              f"p99 {_ms(http_t, 0.99) - _ms(grpc_t, 0.99):+.2f} ms; load average {load()}")
        return 0
    finally:
        agent.destroy()
        dockerd.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
