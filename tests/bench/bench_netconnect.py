"""`network connect` + `network disconnect` of a running container (its eth1 added and removed
live: agent/netattach.py), each timed as the whole CLI process a user waits for, against the same
docker CLI on a dockerd started by hand (FACTS.md), same run, interleaved.

    python -m tests.bench netconnect        (BENCH_RUNS=20 by default)

Rows: dockyard's own CLI, the docker CLI on dockyard's Docker API, the docker CLI on dockerd, and
`dockyard inspect` as the floor of a dockyard command that is not one of the fast ones
(deploy/entry.py FAST: those skip click, gRPC and protobuf).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.agent_harness import AgentProcess, import_busybox
from tests.bench.common import Dockerd, free_subnet, load, machine

RUNS = int(os.environ.get("BENCH_RUNS", "20"))


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr}")
    return took


def _ms(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-netconnect-"))
    agent = AgentProcess(base / "agent")
    dockerd = Dockerd(base / "docker")
    conf = base / "cli-config"
    conf.mkdir()
    cli = [str(Path(sys.executable).parent / "dockyard"), "-H", agent.host]
    # byte-compiled as an installed CLI is (a session may run with PYTHONDONTWRITEBYTECODE, which
    # makes every run compile its modules again): the cache kept outside the repository
    pyenv = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pyenv["PYTHONPYCACHEPREFIX"] = str(base / "pycache")

    def denv(sock: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return {**env, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(conf)}

    try:
        agent.start()
        tar = base / "busybox.tar"
        subprocess.run(["sh", "deploy/images/busybox.sh", "-o", str(tar)], check=True)
        import_busybox(agent, tar)
        dockerd.base.mkdir(parents=True, exist_ok=True)
        dockerd.start()
        with open(tar, "rb") as f:
            subprocess.run(["docker", "import", "--change", 'CMD ["sh"]', "-", "busybox:latest"], stdin=f,
                           check=True, capture_output=True, env=denv(dockerd.sock))
        taken: set[str] = set()
        subnets = []
        for _ in range(4):
            s = free_subnet(taken)
            taken.add(s.rsplit(".", 1)[0])
            subnets.append(s)
        subprocess.run([*cli, "network", "create", "-d", "bridge", "--subnet", subnets[0], "bna"], check=True,
                       capture_output=True)
        subprocess.run([*cli, "network", "create", "-d", "bridge", "--subnet", subnets[1], "bnb"], check=True,
                       capture_output=True)
        for net, sub in (("bna", subnets[2]), ("bnb", subnets[3])):
            subprocess.run(["docker", "network", "create", "--subnet", sub, net], check=True, capture_output=True,
                           env=denv(dockerd.sock))
        subprocess.run([*cli, "run", "-d", "--name", "bc1", "--network", "bna", "busybox", "sleep", "3600"],
                       check=True, capture_output=True)
        subprocess.run(["docker", "run", "-d", "--name", "bc1", "--network", "bna", "busybox", "sleep", "3600"],
                       check=True, capture_output=True, env=denv(dockerd.sock))
        sides = {
            "dockyard network connect|disconnect (own CLI)": (cli, pyenv),
            "docker network connect|disconnect -> dockyard": (["docker"], denv(agent.docker_socket)),
            "docker network connect|disconnect -> dockerd": (["docker"], denv(dockerd.sock)),
        }
        # each side once, and what it did checked inside the container
        for argv, env in sides.values():
            _timed([*argv, "network", "connect", "bnb", "bc1"], env)
            links = subprocess.run([*argv, "exec", "bc1", "ip", "-o", "link"], env=env, capture_output=True,
                                   text=True, check=True).stdout
            assert "eth1" in links, links
            _timed([*argv, "network", "disconnect", "bnb", "bc1"], env)
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in sides}
        floor: list[float] = []
        for _ in range(RUNS):   # interleaved: load changes hit every side alike
            floor.append(_timed([*cli, "inspect", "bc1"], pyenv))
            for name, (argv, env) in sides.items():
                times[name][0].append(_timed([*argv, "network", "connect", "bnb", "bc1"], env))
                times[name][1].append(_timed([*argv, "network", "disconnect", "bnb", "bc1"], env))
        print(f"machine: {machine()}; {RUNS} runs each; load average {load()}")
        print(f"{'what':52} {'connect p50/p90 ms':>20} {'disconnect p50/p90 ms':>22}")
        for name, (conn, disc) in times.items():
            print(f"{name:52} {_ms(conn, 0.5):9.1f} /{_ms(conn, 0.9):7.1f} {_ms(disc, 0.5):11.1f} /{_ms(disc, 0.9):7.1f}")
        print(f"{'dockyard inspect bc1 (the CLI floor: click, gRPC, a call)':52} {_ms(floor, 0.5):9.1f} /"
              f"{_ms(floor, 0.9):7.1f}")
        peer = times["docker network connect|disconnect -> dockerd"]
        for name in list(sides)[:2]:
            c, d = times[name]
            print(f"{name} / dockerd: connect {statistics.median(c) / statistics.median(peer[0]):.2f}x, "
                  f"disconnect {statistics.median(d) / statistics.median(peer[1]):.2f}x")
        return 0
    finally:
        subprocess.run([*cli, "rm", "-f", "bc1"], capture_output=True)
        subprocess.run([*cli, "network", "rm", "bna", "bnb"], capture_output=True)
        if dockerd.proc is not None:
            subprocess.run(["docker", "rm", "-f", "bc1"], capture_output=True, env=denv(dockerd.sock))
            subprocess.run(["docker", "network", "rm", "bna", "bnb"], capture_output=True, env=denv(dockerd.sock))
        agent.destroy()
        dockerd.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
