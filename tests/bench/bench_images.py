"""Image benchmarks, dockyard beside docker in the same rounds on this machine, each command a
whole CLI process as a user types it (dockyard as installed: the `python -I -S` launcher):

* build of a context of 1,000 small files with a RUN step, every step cached (cold with --cold);
* pull of a 50 MB image (one incompressible layer, gzip, pushed by docker) from a local
  docker-registry, and the disk that image then takes (du of the store before and after);
* save of that image to a file; load of that archive back (after rmi);
* load of docker's own `docker save` archive of it (by both);
* import of a 52 MB rootfs tar (busybox + 50 MB of random bytes).

Beside each time: the bytes the daemon wrote (agent / dockerd and its children: /proc/PID/io
write_bytes) plus the CLI's (ru_oublock), the CLI's own CPU and the daemon's (its process tree's
utime + stime: on a loaded machine the wall time follows it). Rounds are interleaved (one
dockyard, one docker, alternating which goes first), medians of --repeat. dockerd is Debian's 20.10
started by hand (FACTS.md), stopped by PID, with what it leaves behind removed.

    .venv/bin/python -m tests.bench images [--repeat 3] [--no-docker] [--cold]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path[:0] = [str(_HERE.parents[2])]

from deploy import launcher  # noqa: E402
from tests.agent_harness import AgentProcess, import_busybox  # noqa: E402
from tests.bench.common import Dockerd, load, machine  # noqa: E402
from tests.images import busybox_tar  # noqa: E402
from tests.kernel.test_images_registry import Registry  # noqa: E402

DOCKERFILE = "FROM busybox\nCOPY files /files\nRUN ls /files | wc -l > /count\n"
BIG = 50 * 1000 * 1000


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def make_context(base: Path) -> Path:
    ctx = base / "context"
    (ctx / "files").mkdir(parents=True)
    for i in range(1000):
        (ctx / "files" / f"f{i:04d}.txt").write_text(f"small file {i}\n" * 4)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def make_big_context(base: Path) -> Path:
    ctx = base / "big"
    ctx.mkdir()
    with open(ctx / "blob.bin", "wb") as f:
        f.write(os.urandom(BIG))
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY blob.bin /blob.bin\n")
    return ctx


def make_rootfs(base: Path, busybox: Path, blob: Path) -> Path:
    """busybox's rootfs with the 50 MB blob added: the import input."""
    out = base / "rootfs.tar"
    with tarfile.open(busybox) as src, tarfile.open(out, "w") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        dst.add(blob, "data/blob.bin")
    return out


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def written(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


def daemon_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread, and waited-for children) of pid and its descendants:
    what the daemon side spent, which decides the wall time once the machine is loaded."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def du(path: Path) -> int:
    """Bytes of the blocks used under ``path`` (du -s --block-size=1: what the disk holds)."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


@dataclass
class Sample:
    wall: float
    cpu: float  # the CLI's user + system
    daemon_cpu: float  # the daemon's (agent / dockerd and its children) user + system
    written: int  # daemon write_bytes + CLI output blocks


@dataclass
class Side:
    name: str
    cli: Callable[..., list[str]]  # args -> argv
    daemon_pid: Callable[[], int]
    store: Path
    env: dict[str, str] | None = None
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    disk: list[int] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.Popen(self.cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        out, err = proc.communicate(timeout=600)
        if check and proc.returncode:
            raise RuntimeError(f"{self.name} {' '.join(args)} exited {proc.returncode}: {err.decode()[-1500:]}")
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    def timed(self, key: str, *args: str) -> None:
        with tempfile.TemporaryFile() as errf:
            before = written(self.daemon_pid())
            cpu0 = daemon_cpu(self.daemon_pid())
            t = time.perf_counter()
            proc = subprocess.Popen(self.cli(*args), stdout=subprocess.DEVNULL, stderr=errf, env=self.env)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t
            proc.returncode = os.waitstatus_to_exitcode(status)
            errf.seek(0)
            err = errf.read().decode(errors="replace")
        if proc.returncode:
            raise RuntimeError(f"{self.name} {' '.join(args)} failed: {err[-1500:]}")
        w = written(self.daemon_pid()) - before + ru.ru_oublock * 512
        dcpu = daemon_cpu(self.daemon_pid()) - cpu0
        self.samples.setdefault(key, []).append(Sample(wall, ru.ru_utime + ru.ru_stime, dcpu, w))

    def rmi(self, ref: str) -> None:
        self.run("rmi", "-f", ref, check=False)


def one_round(side: Side, ref: str, ctx: Path, work: Path, docker_archive: Path, rootfs: Path, cold: bool) -> None:
    tag = side.name
    if cold:
        side.timed("build cold", "build", "--no-cache", "--network", "none", "-q", "-t", "bench:1", str(ctx))
    side.timed("build cached", "build", "--network", "none", "-q", "-t", "bench:1", str(ctx))
    side.rmi(ref)
    before = du(side.store)
    side.timed("pull", "pull", "-q", ref)
    side.disk.append(du(side.store) - before)
    own = work / f"{tag}-save.tar"
    side.timed("save", "save", "-o", str(own), ref)
    side.rmi(ref)
    side.timed("load own archive", "load", "-q", "-i", str(own))
    own.unlink()
    side.rmi(ref)
    side.timed("load docker's archive", "load", "-q", "-i", str(docker_archive))
    side.rmi(ref)
    side.timed("import 52 MB rootfs", "import", str(rootfs), f"bench/imported-{tag}:1")
    side.rmi(f"bench/imported-{tag}:1")
    side.run("pull", "-q", ref)


ROWS = (("build cold", "build, 1,000 files + RUN, cold"), ("build cached", "build, all steps cached"),
        ("pull", "pull 50 MB from a local registry"), ("save", "save -o, 50 MB"),
        ("load own archive", "load -i its own save"), ("load docker's archive", "load -i docker's save"),
        ("import 52 MB rootfs", "import a 52 MB rootfs tar"))


def report(dy: Side, dk: Side | None, repeat: int, loads: list[str]) -> None:
    print(f"\nimages benchmark, median of {repeat} interleaved rounds; whole CLI processes; "
          f"load average {' -> '.join(loads)}")
    print(f"{'what':<34}{'dockyard s':>11}{'docker s':>10}{'ratio':>7}{'dy CPU':>8}{'dk CPU':>8}"
          f"{'dy dmn CPU':>11}{'dk dmn CPU':>11}{'dy written':>12}{'dk written':>12}")
    for key, label in ROWS:
        if key not in dy.samples:
            continue
        a = dy.samples[key]
        b = dk.samples.get(key, []) if dk is not None else []
        aw, bw = median([s.wall for s in a]), median([s.wall for s in b])
        ratio = f"{aw / bw:.2f}x" if b else "n/a"
        bcpu = f"{median([s.cpu for s in b]):.3f}" if b else "n/a"
        bdcpu = f"{median([s.daemon_cpu for s in b]):.3f}" if b else "n/a"
        bwr = f"{median([s.written for s in b]) / 1e6:.1f} MB" if b else "n/a"
        print(f"{label:<34}{aw:>11.3f}{(f'{bw:.3f}' if b else 'n/a'):>10}{ratio:>7}"
              f"{median([s.cpu for s in a]):>8.3f}{bcpu:>8}{median([s.daemon_cpu for s in a]):>11.3f}{bdcpu:>11}"
              f"{median([s.written for s in a]) / 1e6:>9.1f} MB{bwr:>12}")
    a_disk = median([float(x) for x in dy.disk])
    line = f"{'disk taken by the pulled image':<34}{a_disk / 1e6:>9.1f} MB"
    if dk is not None and dk.disk:
        b_disk = median([float(x) for x in dk.disk])
        line += f"{b_disk / 1e6:>8.1f} MB{a_disk / b_disk:>6.2f}x"
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--cold", action="store_true", help="also time a build with --no-cache")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_images needs root (the agent, overlay mounts, dockerd)")
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="bench-images-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    agent = AgentProcess(work / "agent")
    registry = Registry(work / "registry")
    dockerd: Dockerd | None = None
    loads = [load()]
    try:
        bbtar = busybox_tar(work / "busybox.tar")
        ctx = make_context(work)
        big = make_big_context(work)
        rootfs = make_rootfs(work, bbtar, big / "blob.bin")
        registry.start()
        agent.start()
        import_busybox(agent, bbtar)
        dy_cmd = str(work / "dockyard")
        launcher.write(dy_cmd)
        assert agent.proc is not None
        agent_proc = agent.proc
        dy = Side("dockyard", lambda *a: [dy_cmd, "-H", agent.host, *a], lambda: agent_proc.pid,
                  agent.root / "images")
        ref = f"{registry.host}/bench/big:1"
        bb_archive = work / "busybox-archive.tar"
        dy.run("save", "-o", str(bb_archive), "busybox:latest")
        docker_archive = work / "docker-archive.tar"
        dk: Side | None = None
        if not args.no_docker:
            dockerd = Dockerd(work / "docker")
            dockerd.base.mkdir()
            dockerd.start()
            d = dockerd
            assert d.proc is not None
            dproc = d.proc
            env = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(d.base / "cli-config")}
            dk = Side("docker", lambda *a: ["docker", "-H", f"unix://{d.sock}", *a], lambda: dproc.pid,
                      d.base / "data", env)
            dk.run("load", "-i", str(bb_archive))
            dk.run("build", "-q", "-t", ref, str(big))
            dk.run("push", ref)
            dk.run("save", "-o", str(docker_archive), ref)
            dk.rmi(ref)
            dk.run("build", "--network", "none", "-q", "-t", "bench:1", str(ctx))
        else:
            dy.run("build", "-q", "-t", ref, str(big))
            dy.run("push", "-q", ref)
            dy.run("save", "-o", str(docker_archive), ref)
            dy.rmi(ref)
        dy.run("build", "--network", "none", "-q", "-t", "bench:1", str(ctx))
        for side in (dy, dk):  # one untimed round each: page cache, .pyc files, the registry warm
            if side is not None:
                side.run("pull", "-q", ref)
        loads.append(load())
        for i in range(args.repeat):
            order = [s for s in (dy, dk) if s is not None]
            for side in order if i % 2 == 0 else reversed(order):
                one_round(side, ref, ctx, work, docker_archive, rootfs, args.cold)
        loads.append(load())
    finally:
        if dockerd is not None:
            dockerd.stop()
        agent.destroy()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(dy, dk, args.repeat, loads)


if __name__ == "__main__":
    main()
