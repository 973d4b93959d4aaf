"""Image benchmarks, dockyard beside docker in the same run on this machine:

* build of a context of 1,000 small files with a RUN step: cold (--no-cache) and cached;
* pull of a 50 MB image (one incompressible layer, gzip) from a local docker-registry;
* save + load round trip of that image.

dockyard runs as a real agent (tests/agent_harness.py); docker as a dockerd started here by hand
(FACTS.md: Debian's docker.io 20.10, its own data/exec roots, no iptables, no bridge), stopped by PID,
with what it leaves behind removed. RUN steps use --network none on both sides (dockerd runs
without a bridge). Every figure is the median of --repeat runs, each timed around the CLI command.

    .venv/bin/python tests/bench/bench_images.py [--repeat 3] [--no-docker]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path[:0] = [str(_HERE.parents[2])]

from tests.agent_harness import AgentProcess, import_busybox  # noqa: E402
from tests.bench.common import Dockerd, run  # noqa: E402,F401  (kept importable from here)
from tests.images import busybox_tar  # noqa: E402
from tests.kernel.test_images_registry import Registry  # noqa: E402

DOCKERFILE = "FROM busybox\nCOPY files /files\nRUN ls /files | wc -l > /count\n"


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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
        f.write(os.urandom(50 * 1000 * 1000))
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY blob.bin /blob.bin\n")
    return ctx


def bench_dockyard(a: AgentProcess, ctx: Path, big: Path, reg: Registry, work: Path, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    cold = [timed(lambda: a.cli("build", "--no-cache", "--network", "none", "-q", "-t", "bench:1", str(ctx),
                                check=True, timeout=600)) for _ in range(repeat)]
    cached = [timed(lambda: a.cli("build", "--network", "none", "-q", "-t", "bench:1", str(ctx), check=True))
              for _ in range(repeat)]
    out["build cold"], out["build cached"] = median(cold), median(cached)
    ref = f"{reg.host}/bench/big:1"
    pulls = []
    for _ in range(repeat):
        a.cli("rmi", "-f", ref)
        pulls.append(timed(lambda: a.cli("pull", "-q", ref, check=True, timeout=600)))
    out["pull 50 MB"] = median(pulls)
    rounds = []
    for i in range(repeat):
        tar = work / f"dy-save-{i}.tar"

        def round_trip(tar: Path = tar) -> None:
            a.cli("save", "-o", str(tar), ref, check=True, timeout=600)
            a.cli("rmi", ref, check=True)
            a.cli("load", "-i", str(tar), check=True, timeout=600)

        rounds.append(timed(round_trip))
        tar.unlink()
    out["save+load 50 MB"] = median(rounds)
    return out


def bench_docker(d: Dockerd, ctx: Path, ref: str, busybox_archive: Path, work: Path, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    d.cli("load", "-i", str(busybox_archive))
    cold = [timed(lambda: d.cli("build", "--no-cache", "--network", "none", "-q", "-t", "bench:1", str(ctx)))
            for _ in range(repeat)]
    cached = [timed(lambda: d.cli("build", "--network", "none", "-q", "-t", "bench:1", str(ctx)))
              for _ in range(repeat)]
    out["build cold"], out["build cached"] = median(cold), median(cached)
    pulls = []
    for _ in range(repeat):
        with contextlib.suppress(RuntimeError):
            d.cli("rmi", "-f", ref)
        pulls.append(timed(lambda: d.cli("pull", "-q", ref)))
    out["pull 50 MB"] = median(pulls)
    rounds = []
    for i in range(repeat):
        tar = work / f"docker-save-{i}.tar"

        def round_trip(tar: Path = tar) -> None:
            d.cli("save", "-o", str(tar), ref)
            d.cli("rmi", ref)
            d.cli("load", "-i", str(tar))

        rounds.append(timed(round_trip))
        tar.unlink()
    out["save+load 50 MB"] = median(rounds)
    return out


BUSYBOX_TAR = Path()


def main() -> None:
    global BUSYBOX_TAR
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-docker", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_images needs root (the agent, overlay mounts, dockerd)")
    work = Path(tempfile.mkdtemp(prefix="bench-images-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    agent = AgentProcess(work / "agent")
    registry = Registry(work / "registry")
    dockerd: Dockerd | None = None
    results: dict[str, dict[str, float]] = {}
    docker_error = ""
    try:
        BUSYBOX_TAR = busybox_tar(work / "busybox.tar")
        ctx = make_context(work)
        big = make_big_context(work)
        registry.start()
        agent.start()
        import_busybox(agent, BUSYBOX_TAR)
        ref = f"{registry.host}/bench/big:1"
        busybox_archive = work / "busybox-archive.tar"
        agent.cli("save", "-o", str(busybox_archive), "busybox:latest", check=True)
        # The 50 MB image: pushed by docker when it runs (gzip layers, as images on registries are),
        # else by dockyard (uncompressed OCI layer).
        if not args.no_docker:
            try:
                dockerd = Dockerd(work / "docker")
                dockerd.base.mkdir()
                dockerd.start()
                dockerd.cli("load", "-i", str(busybox_archive))
                dockerd.cli("build", "-q", "-t", ref, str(big))
                dockerd.cli("push", ref)
                dockerd.cli("rmi", ref)
            except Exception as e:
                docker_error = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
                if dockerd is not None:
                    dockerd.stop()
                dockerd = None
        if dockerd is None:
            agent.cli("build", "-q", "-t", ref, str(big), check=True)
            agent.cli("push", "-q", ref, check=True)
            agent.cli("rmi", ref, check=True)
        results["dockyard"] = bench_dockyard(agent, ctx, big, registry, work, args.repeat)
        if dockerd is not None:
            try:
                results["docker"] = bench_docker(dockerd, ctx, ref, busybox_archive, work, args.repeat)
            except Exception as e:
                docker_error = str(e).strip()[-500:]
    finally:
        if dockerd is not None:
            dockerd.stop()
        agent.destroy()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    dy = results.get("dockyard", {})
    dk = results.get("docker", {})
    print(f"\nimages benchmark (median of {args.repeat}; seconds, CLI to CLI)")
    print(f"{'what':<34}{'dockyard':>10}{'docker':>10}")
    for key, label in (("build cold", "build 1,000 files + RUN, cold"), ("build cached", "build, all steps cached"),
                       ("pull 50 MB", "pull 50 MB from local registry"), ("save+load 50 MB", "save + rmi + load, 50 MB")):
        d = f"{dk[key]:.2f}" if key in dk else "n/a"
        print(f"{label:<34}{dy.get(key, float('nan')):>10.2f}{d:>10}")
    if docker_error:
        print(f"\ndocker could not be measured: {docker_error}")


if __name__ == "__main__":
    main()
