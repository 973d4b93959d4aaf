"""Migration between two agents on this machine over loopback, beside runc and docker in the same run.

* live: a busybox container whose shell holds N MiB (10, 100, 500) of touched memory in a variable,
  moved with the MigrateContainer RPC. Both agents can do post-copy here, so: CRIU dump without the
  memory pages -> the small archive streamed over TCP to the target agent -> restore there with lazy
  pages (downtime ends) -> the target pulls every page from the source's CRIU page server -> the
  source copy is removed (total ends). Downtime and total time are the agent's own figures
  (MigrateProgress "done"); the client's wall time around the RPC is shown beside them. The RSS on
  the target is checked after the move: every page arrived. Beside it: `runc checkpoint` +
  `runc restore` of the same workload in a bundle of the same busybox rootfs, with the same criu
  (its directory first on PATH), on one host (no transfer): for runc the process is down from the
  start of the checkpoint to the end of the restore.
* cold: a container that wrote 100 MiB of random data into its writable layer (10 files of 10 MiB),
  moved with MigrateContainer(live=false) (stop -> writable layer + config streamed -> the target
  creates and starts it). Beside it, on a dockerd started here and cleaned up after (FACTS.md):
  `docker stop` + `docker export` + `docker import` + `docker run` of the same container (no
  transfer), with export + import shown on their own.

The memory is base64 of random bytes, so the zstd-compressed checkpoint archive cannot shrink it to
nothing (it compresses to about 3/4). Every figure is the median of --repeat runs (3).

    .venv/bin/python tests/bench/bench_migration.py [--sizes 10,100,500] [--repeat 3] [--no-runc] [--no-docker]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path[:0] = [str(_HERE.parents[2])]

from protos import agent_pb2 as pb  # noqa: E402
from tests.agent_harness import AgentProcess, free_port, import_busybox  # noqa: E402
from tests.bench.common import Dockerd, dir_mib, free_subnet, load, machine, rss_mib, wait_until  # noqa: E402

# A shell holding N MiB: base64 of 3/4 N MiB of random bytes in a variable. SIGTERM ends it at once
# (sleep in the background + wait, so the trap runs), as the cold path stops the container first.
HOLD = ("trap 'exit 0' TERM; x=$(head -c {n} /dev/urandom | base64 -w 0); touch /tmp/ready; "
        "sleep 1000000 & wait")
# 100 MiB of random data in the writable layer, written once (the cold path starts the command
# again on the target: it must not write again).
FILES = ("trap 'exit 0' TERM; if ! test -e /data/ready; then mkdir -p /data; for i in $(seq 0 9); do "
         "head -c 10485760 /dev/urandom > /data/f$i; done; sync; touch /data/ready; fi; "
         "sleep 1000000 & wait")
COLD_MIB = 100
TARGET_LIVE_100_MS = 500
TARGET_COLD_S = 3.0


def hold_cmd(mib: int) -> str:
    return HOLD.format(n=mib * (1 << 20) * 3 // 4)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@dataclass
class Live:
    downtime: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    error: str = ""


# --- dockyard ---------------------------------------------------------------------------------


PHASES: dict[str, list[float]] = {}  # "live 100 MiB: transfer" -> seconds per run, seen by the client


def _migrate(a: AgentProcess, cid: str, target: str, live: bool, what: str) -> tuple[pb.MigrateProgress, float]:
    t0 = time.perf_counter()
    done = None
    marks: list[tuple[str, float]] = []
    for p in a.stub.MigrateContainer(pb.MigrateRequest(id=cid, target=target, live=live), timeout=600):
        if not marks or marks[-1][0] != p.phase:
            marks.append((p.phase, time.perf_counter()))
        if p.phase == "done":
            done = p
    wall = time.perf_counter() - t0
    if done is None:
        raise RuntimeError("migration ended without a 'done' message")
    for (phase, t), (_, t_next) in itertools.pairwise(marks):
        PHASES.setdefault(f"{what}: {phase}", []).append(t_next - t)
    return done, wall


def _run(a: AgentProcess, name: str, cmd: str) -> str:
    c = a.stub.CreateContainer(pb.CreateContainerRequest(config=pb.ContainerConfig(
        image="busybox:latest", cmd=["sh", "-c", cmd], network_mode="none", name=name)))
    a.stub.StartContainer(pb.ContainerRef(id=c.id))
    return str(c.id)


def _pid(a: AgentProcess, ref: str) -> int:
    return int(a.inspect(ref)["State"]["Pid"])


def dockyard_live(a: AgentProcess, b: AgentProcess, mib: int, rep: int) -> tuple[float, float, float, float]:
    name = f"live-{mib}-{rep}"
    cid = _run(a, name, hold_cmd(mib))
    try:
        pid = _pid(a, cid)
        wait_until(lambda: a.cli("exec", cid, "test", "-e", "/tmp/ready").returncode == 0, 120, f"{mib} MiB held")
        rss = rss_mib(pid)
        if rss < mib * 0.95:
            raise AssertionError(f"the container's shell holds {rss:.0f} MiB, not {mib}")
        done, wall = _migrate(a, cid, b.tcp, True, f"live {mib} MiB")  # type: ignore[attr-defined]
        after = rss_mib(_pid(b, name))
        if after < mib * 0.95:
            raise AssertionError(f"restored shell holds {after:.0f} MiB, not {mib}")
        return done.downtime_seconds, done.total_seconds, wall, rss
    finally:
        for x in (a, b):
            with contextlib.suppress(Exception):
                x.stub.RemoveContainer(pb.RemoveContainerRequest(id=name, force=True))


def dockyard_cold(a: AgentProcess, b: AgentProcess, rep: int) -> tuple[float, float, float]:
    name = f"cold-{rep}"
    cid = _run(a, name, FILES)
    try:
        wait_until(lambda: a.cli("exec", cid, "test", "-e", "/data/ready").returncode == 0, 120, "100 MiB written")
        done, wall = _migrate(a, cid, b.tcp, False, f"cold {COLD_MIB} MiB")  # type: ignore[attr-defined]
        du = b.cli("exec", name, "du", "-sm", "/data").stdout.split()
        if not du or int(du[0]) < COLD_MIB:
            raise AssertionError(f"after cold migration /data holds {du} MiB, not {COLD_MIB}")
        if not b.inspect(name)["State"]["Running"]:
            raise AssertionError("the cold-migrated container is not running on the target")
        return done.downtime_seconds, done.total_seconds, wall
    finally:
        for x in (a, b):
            with contextlib.suppress(Exception):
                x.stub.RemoveContainer(pb.RemoveContainerRequest(id=name, force=True))


# --- runc -------------------------------------------------------------------------------------


def runc_live(criu_bin: str, base: Path, tar: Path, mib: int) -> tuple[float, float, float, float]:
    """(checkpoint s, restore s, images MiB, RSS MiB) of runc with the same workload."""
    bundle, state, images, work = base / "bundle", base / "state", base / "images", base / "work"
    for d in (bundle / "rootfs", state, work):
        d.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(bundle / "rootfs"), "-xf", str(tar)], check=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["sh", "-c", hold_cmd(mib)]
    cfg["root"] = {"path": "rootfs", "readonly": False}
    cid = f"dockyard-bench-mig-{os.getpid()}-{mib}"
    cfg["linux"]["cgroupsPath"] = cid  # relative: nested under our own cgroup
    (bundle / "config.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PATH": f"{criu_bin}:{os.environ.get('PATH', os.defpath)}"}
    held: list[int] = []

    def runc(*args: str) -> float:
        # Pipes for stdio, as bench_criu.py explains: criu cannot dump fds on outside files.
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.set_blocking(out_r, False)
        held.extend((in_w, out_r))
        t0 = time.perf_counter()
        try:
            r = subprocess.run(["runc", "--root", str(state), *args], cwd=bundle, env=env, stdin=in_r,
                               stdout=out_w, stderr=out_w, timeout=300, check=False)
        finally:
            os.close(in_r)
            os.close(out_w)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            with contextlib.suppress(BlockingIOError):
                msg = os.read(out_r, 65536).decode(errors="replace")
                raise RuntimeError(f"runc {args[0]} failed: {msg.strip()[-300:]}")
            raise RuntimeError(f"runc {args[0]} failed ({r.returncode})")
        return elapsed

    def pid() -> int:
        st = subprocess.run(["runc", "--root", str(state), "state", cid], capture_output=True, text=True, check=True)
        return int(json.loads(st.stdout)["pid"])

    try:
        runc("run", "--detach", cid)
        wait_until(lambda: (bundle / "rootfs" / "tmp" / "ready").exists(), 120, f"{mib} MiB held (runc)")
        rss = rss_mib(pid())
        if rss < mib * 0.95:
            raise AssertionError(f"runc's shell holds {rss:.0f} MiB, not {mib}")
        dump = runc("checkpoint", "--image-path", str(images), "--work-path", str(work), cid)
        restore = runc("restore", "--detach", "--image-path", str(images), "--work-path", str(work),
                       "--bundle", str(bundle), cid)
        if rss_mib(pid()) < mib * 0.95:
            raise AssertionError(f"runc's restored shell holds {rss_mib(pid()):.0f} MiB, not {mib}")
        return dump, restore, dir_mib(images), rss
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", cid], env=env, capture_output=True,
                       timeout=60, check=False)
        for fd in held:
            os.close(fd)


# --- docker -----------------------------------------------------------------------------------


def docker_cold(d: Dockerd, work: Path, rep: int) -> tuple[float, float, float, float, float]:
    """(stop, export, import, run, export+import MiB) of the docker equivalent of a cold move."""
    name, new = f"bench-cold-{rep}", f"bench-cold-{rep}-moved"
    tar = work / f"docker-export-{rep}.tar"
    try:
        d.cli("run", "-d", "--network", "none", "--name", name, "busybox:latest", "sh", "-c", FILES)

        def ready() -> bool:
            try:
                d.cli("exec", name, "test", "-e", "/data/ready", timeout=30)
                return True
            except RuntimeError:
                return False

        wait_until(ready, 120, "100 MiB written (docker)")

        def timed(*args: str) -> float:
            t0 = time.perf_counter()
            d.cli(*args)
            return time.perf_counter() - t0

        stop = timed("stop", name)
        export = timed("export", "-o", str(tar), name)
        imp = timed("import", tar.as_posix(), f"bench-moved:{rep}")
        start = timed("run", "-d", "--network", "none", "--name", new, f"bench-moved:{rep}", "sh", "-c", FILES)
        du = d.cli("exec", new, "du", "-sm", "/data").split()
        if not du or int(du[0]) < COLD_MIB:
            raise AssertionError(f"docker's moved container has {du} MiB in /data")
        return stop, export, imp, start, tar.stat().st_size / (1 << 20)
    finally:
        for c in (name, new):
            with contextlib.suppress(RuntimeError):
                d.cli("rm", "-f", c)
        with contextlib.suppress(RuntimeError):
            d.cli("rmi", "-f", f"bench-moved:{rep}")
        tar.unlink(missing_ok=True)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from agent.checkpoint.criu import find_criu
    from tests.images import busybox_tar

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,500", help="MiB of touched memory, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-runc", action="store_true")
    ap.add_argument("--no-docker", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_migration: needs root", file=sys.stderr)
        return 2
    criu = find_criu()
    if criu is None:
        print("bench_migration: no criu >= 4 (run deploy/install-criu.sh)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine at start: {machine()}")
    print(f"criu {'.'.join(map(str, criu.version()))} at {criu.path}")
    work = Path(tempfile.mkdtemp(prefix="bench-migration-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    a, b = AgentProcess(work / "source"), AgentProcess(work / "target")
    a.subnet = free_subnet()
    b.subnet = free_subnet({a.subnet.rsplit(".", 1)[0]})
    for x in (a, b):
        x.tcp = f"127.0.0.1:{free_port()}"  # type: ignore[attr-defined]
        x.extra_args = ["--listen", x.tcp, "--insecure"]  # type: ignore[attr-defined]
    live: dict[tuple[str, int], Live] = {}
    cold: dict[str, list[tuple[float, ...]]] = {"dockyard": [], "docker": []}
    errors: list[str] = []
    dockerd: Dockerd | None = None
    try:
        tar = busybox_tar(work / "busybox.tar")
        a.start()
        b.start()
        import_busybox(a, tar)
        import_busybox(b, tar)  # the image is already there: the figures are the container's move alone
        for mib in sizes:
            for rep in range(args.repeat):
                r = live.setdefault(("dockyard", mib), Live())
                if not r.error:
                    try:
                        down, total, wall, rss = dockyard_live(a, b, mib, rep)
                        r.downtime.append(down)
                        r.total.append(total)
                        r.wall.append(wall)
                        r.rss.append(rss)
                    except Exception as e:
                        r.error = f"failed: {str(e).strip().splitlines()[-1][:90] if str(e).strip() else repr(e)}"
                        print(f"dockyard live {mib} MiB: {e}", file=sys.stderr)
                if args.no_runc or not shutil.which("runc"):
                    continue
                r = live.setdefault(("runc", mib), Live())
                if r.error:
                    continue
                base = Path(tempfile.mkdtemp(prefix="runc-", dir=work))
                try:
                    dump, restore, _images, rss = runc_live(str(criu.bin_dir), base, tar, mib)
                    r.downtime.append(dump + restore)
                    r.total.append(dump + restore)
                    r.wall.append(dump + restore)
                    r.rss.append(rss)
                except Exception as e:
                    r.error = f"failed: {str(e).strip().splitlines()[0][:90]}"
                    print(f"runc {mib} MiB: {e}", file=sys.stderr)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
        for rep in range(args.repeat):
            try:
                cold["dockyard"].append(dockyard_cold(a, b, rep))
            except Exception as e:
                errors.append(f"dockyard cold: {e}")
                print(f"dockyard cold: {e}", file=sys.stderr)
                break
        if not args.no_docker and shutil.which("dockerd"):
            try:
                dockerd = Dockerd(work / "docker")
                dockerd.base.mkdir()
                dockerd.start()
                dockerd.cli("import", str(tar), "busybox:latest")
                for rep in range(args.repeat):
                    cold["docker"].append(docker_cold(dockerd, work, rep))
            except Exception as e:
                errors.append(f"docker cold: {str(e).strip()[-300:]}")
                print(f"docker cold: {e}", file=sys.stderr)
    finally:
        if dockerd is not None:
            dockerd.stop()
        a.destroy()
        b.destroy()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nlive migration (median of {args.repeat}; seconds). dockyard: agent to agent over loopback TCP, "
          "post-copy: downtime = dump without the pages +\ntransfer of the rest + restore with lazy pages; "
          "total adds the pull of every page and the source's cleanup;\nrunc: checkpoint + restore on one host, "
          "no transfer (the process is down for both)")
    print(f"{'memory':>8} {'engine':<9} {'RSS MiB':>8} {'downtime':>9} {'total':>8} {'client wall':>12}")
    for mib in sizes:
        for eng in ("dockyard", "runc"):
            got = live.get((eng, mib))
            if got is None:
                continue
            if got.error and not got.downtime:
                print(f"{mib:>5} MiB {eng:<9} {got.error}")
                continue
            print(f"{mib:>5} MiB {eng:<9} {med(got.rss):>8.0f} {med(got.downtime):>9.3f} {med(got.total):>8.3f} "
                  f"{med(got.wall):>12.3f}" + (f"  ({got.error})" if got.error else ""))
    r100 = live.get(("dockyard", 100))
    if r100 and r100.downtime:
        ms = med(r100.downtime) * 1000
        print(f"target: 100 MiB live downtime <= {TARGET_LIVE_100_MS} ms: {ms:.0f} ms, "
              f"{'met' if ms <= TARGET_LIVE_100_MS else 'NOT met'}")

    print(f"\ncold migration of a container with {COLD_MIB} MiB of changed files (median of {args.repeat}; seconds)")
    dy, dk = cold["dockyard"], cold["docker"]
    if dy:
        print(f"  dockyard migrate --cold: downtime {med([x[0] for x in dy]):.3f}, total {med([x[1] for x in dy]):.3f}, "
              f"client wall {med([x[2] for x in dy]):.3f}")
        t = med([x[2] for x in dy])
        print(f"  target: end to end <= {TARGET_COLD_S:.0f} s: {t:.2f} s, {'met' if t <= TARGET_COLD_S else 'NOT met'}")
    if dk:
        ei = med([x[1] + x[2] for x in dk])
        allx = med([x[0] + x[1] + x[2] + x[3] for x in dk])
        print(f"  docker: stop {med([x[0] for x in dk]):.3f} + export {med([x[1] for x in dk]):.3f} + import "
              f"{med([x[2] for x in dk]):.3f} + run {med([x[3] for x in dk]):.3f}; export + import {ei:.3f}; "
              f"stop to running {allx:.3f} (export tar {med([x[4] for x in dk]):.0f} MiB, no transfer)")
    for err in errors:
        print(f"  {err.splitlines()[0][:200] if err else err}")
    if PHASES:
        print("\ndockyard's phases as the client sees them (median s, from one progress phase to the next)")
        for what in dict.fromkeys(k.split(": ")[0] for k in PHASES):
            parts = [f"{k.split(': ')[1]} {med(v):.3f}" for k, v in PHASES.items() if k.startswith(what + ":")]
            print(f"  {what}: " + ", ".join(parts))
    print(f"\nmachine at end: load average {load()}")
    failed = [k for k, v in live.items() if v.error] + [err.split(":")[0] for err in errors]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
