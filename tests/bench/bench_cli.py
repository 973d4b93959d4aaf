"""The `dockyard` command as a user types it, timed as a whole process from the shell, beside its
peers in the same rounds (hyperfine-like: each round runs every contender once, in turn, after two
warm-up rounds):

* `dockyard --version`, `dockyard ps`, `dockyard run --rm --network none busybox /bin/true`;
* `runc run` of /bin/true in a busybox bundle, and docker's `--version`, `ps` and
  `run --rm --network none busybox /bin/true` against a dockerd started here (FACTS.md);
* the interpreter alone (`python -I -S -c pass`), the floor of any Python command;
* 100 containers started from the CLI, 16 at a time (`run -d --network none busybox sleep`),
  dockyard against docker;
* the agent's start-up (process start to its socket answering) and the scheduler's (to its port).

dockyard is the installed form: the launcher deploy/install.sh writes (deploy/launcher.py), here
written to a temporary file. Each figure is the wall time (median, p90) and the CPU time of the
process and its children (median, user + system, from wait4): on this shared 2-core machine the
CPU time moves less with the load than the wall time does. The load average is printed before and
after each part.

    .venv/bin/python -m tests.bench cli          BENCH_RUNS=30 (rounds), BENCH_BURST=100
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path[:0] = [str(_HERE.parents[2])]

from deploy import launcher  # noqa: E402
from tests.agent_harness import REPO, AgentProcess, free_port, import_busybox  # noqa: E402
from tests.bench.bench_runtime import _bundle  # noqa: E402
from tests.bench.common import Dockerd, load  # noqa: E402
from tests.images import busybox_tar  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "30"))
BURST = int(os.environ.get("BENCH_BURST", "100"))
PARALLEL = 16


def timed_wait4(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one run; it must succeed."""
    t = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, env if env is not None else dict(os.environ),
                          file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    _, status, ru = os.wait4(pid, 0)
    took = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}")
    return took, ru.ru_utime + ru.ru_stime


def interleaved(contenders: list[tuple[str, Callable[[], tuple[float, float]]]]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in contenders}
    for i in range(RUNS + 2):
        for name, once in contenders:
            r = once()
            if i >= 2:
                out[name].append(r)
    return out


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def summary(xs: list[tuple[float, float]]) -> tuple[float, float, float]:
    walls = sorted(w for w, _ in xs)
    return statistics.median(walls), walls[max(0, int(len(walls) * 0.9) - 1)], statistics.median(c for _, c in xs)


def burst(start_one: Callable[[int], object]) -> float:
    """Seconds to start BURST containers, PARALLEL CLI processes at a time."""
    t = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(start_one, range(BURST)))
    return time.perf_counter() - t


def agent_startup(base: Path, tar: Path) -> float:
    """Seconds from `dockyard agent` to its socket answering a call (a fresh root each time)."""
    a = AgentProcess(base)
    try:
        t = time.perf_counter()
        a.start()
        return time.perf_counter() - t
    finally:
        a.destroy()


def scheduler_startup(base: Path) -> float:
    """Seconds from `dockyard scheduler` to its port accepting a connection (with its own etcd)."""
    from tests.etcd_server import EtcdServer

    etcd = EtcdServer.start()
    port = free_port()
    proc = None
    try:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "scheduler", "--etcd", etcd.endpoint,
                                 "--listen", f"127.0.0.1:{port}", "--metrics-addr", "", "--insecure",
                                 "--state-dir", str(base / "sched")],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.perf_counter() - t
            time.sleep(0.005)
        raise RuntimeError("the scheduler did not listen")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        etcd.stop()


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_cli needs root (the agent, runc, dockerd)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    a = AgentProcess(tmp / "agent")
    dockerd: Dockerd | None = None
    rows: dict[str, list[tuple[float, float]]] = {}
    bursts: dict[str, float] = {}
    try:
        tar = busybox_tar(tmp / "busybox.tar")
        a.start()
        import_busybox(a, tar)
        dy = str(tmp / "dockyard")
        launcher.write(dy)
        H = ["-H", a.host]
        contenders: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("python -I -S -c pass", lambda: timed_wait4([sys.executable, "-I", "-S", "-c", "pass"])),
            ("dockyard --version", lambda: timed_wait4([dy, "--version"])),
            ("dockyard ps", lambda: timed_wait4([dy, *H, "ps"])),
            ("dockyard run --rm /bin/true", lambda: timed_wait4([dy, *H, "run", "--rm", "--network", "none",
                                                                 "busybox", "/bin/true"])),
        ]
        if shutil.which("runc"):
            bundle = _bundle(tmp, tar, "runc")
            contenders.append(("runc run /bin/true", lambda: timed_wait4(
                ["runc", "--root", str(tmp / "runc-state"), "run", "--bundle", str(bundle),
                 f"bench-{os.urandom(4).hex()}"])))
        docker: list[str] = []
        denv = dict(os.environ)
        if shutil.which("dockerd") and shutil.which("docker"):
            dockerd = Dockerd(tmp / "docker")
            dockerd.base.mkdir()
            dockerd.start()
            archive = tmp / "busybox-archive.tar"
            a.cli("save", "-o", str(archive), "busybox:latest", check=True)
            dockerd.cli("load", "-i", str(archive))
            docker = ["docker", "-H", f"unix://{dockerd.sock}"]
            denv = {**os.environ, "DOCKER_CONFIG": str(dockerd.base / "cli-config")}
            contenders += [
                ("docker --version", lambda: timed_wait4([*docker, "--version"], denv)),
                ("docker ps", lambda: timed_wait4([*docker, "ps"], denv)),
                ("docker run --rm /bin/true", lambda: timed_wait4([*docker, "run", "--rm", "--network", "none",
                                                                   "busybox", "/bin/true"], denv)),
            ]
        print(f"whole-process rounds: {RUNS} (load average {load()})", flush=True)
        rows = interleaved(contenders)
        print(f"  done (load average {load()})", flush=True)

        print(f"burst: {BURST} containers, {PARALLEL} at a time (load average {load()})", flush=True)
        bursts["dockyard run -d"] = burst(lambda i: timed_wait4(
            [dy, *H, "run", "-d", "--network", "none", "busybox", "sleep", "600"]))
        a.remove_all_containers()
        if docker:
            bursts["docker run -d"] = burst(lambda i: timed_wait4(
                [*docker, "run", "-d", "--network", "none", "busybox", "sleep", "600"], denv))
            ids = subprocess.run([*docker, "ps", "-aq"], capture_output=True, text=True, env=denv).stdout.split()
            if ids:
                subprocess.run([*docker, "rm", "-f", *ids], capture_output=True, env=denv)
        print(f"  done (load average {load()})", flush=True)
        starts = [agent_startup(tmp / f"agent-start-{i}", tar) for i in range(3)]
        with contextlib.suppress(Exception):
            bursts["scheduler start-up"] = statistics.median(scheduler_startup(tmp / f"sched-{i}") for i in range(3))
        bursts["agent start-up"] = statistics.median(starts)
    finally:
        if dockerd is not None:
            dockerd.stop()
        a.destroy()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nwhole process, {RUNS} interleaved rounds (ms)")
    print(f"{'what':34} {'median':>8} {'p90':>8} {'CPU':>8}")
    med = {}
    for name, xs in rows.items():
        m, p90, cpu = summary(xs)
        med[name] = m
        print(f"{name:34} {ms(m):>8} {ms(p90):>8} {ms(cpu):>8}")
    if "runc run /bin/true" in med:
        print(f"\ndockyard run --rm / runc run: {med['dockyard run --rm /bin/true'] / med['runc run /bin/true']:.2f}x")
    if "docker run --rm /bin/true" in med:
        print(f"docker run --rm / dockyard run --rm: "
              f"{med['docker run --rm /bin/true'] / med['dockyard run --rm /bin/true']:.2f}x")
        print(f"docker ps / dockyard ps: {med['docker ps'] / med['dockyard ps']:.2f}x")
    print()
    for name, s in bursts.items():
        print(f"{name:34} {s:8.2f} s")
    print(f"(load average {load()})")


if __name__ == "__main__":
    main()
