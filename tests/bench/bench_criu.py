"""CRIU dump and restore time of a container holding 10, 100 and 500 MiB of touched memory, with
agent.checkpoint's wrapper and, in the same run, with `runc checkpoint` + `runc restore`.

Both sides run the same workload: the host's python3 (its /usr bind-mounted read-only into a tiny
rootfs) allocating N MiB and writing to every page, as pid 1 of new pid/mnt/uts/ipc/net namespaces.
runc finds criu on PATH, so it gets our criu's directory first on PATH: both use the same criu.
Images go to a directory under $TMPDIR (disk, not tmpfs) on both sides.

    .venv/bin/python tests/bench/bench_criu.py [--sizes 10,100,500] [--repeat 1] [--no-runc]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path[:0] = [str(_HERE.parents[2]), str(_HERE.parents[1])]

from test_criu import add_container_dirs, child_subreaper, kill_and_reap, spawn_container  # noqa: E402

from agent.checkpoint import Criu, find_criu  # noqa: E402

TIME_BUDGET = 270.0  # seconds: stop starting new runs after this, to stay under 5 minutes
PYTHON = "/usr/bin/python3"
WORKLOAD = """
import sys, time
buf = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1 + (i >> 12) % 255
open('/tmp/ready', 'w').close()
while True:
    time.sleep(1)
"""


@dataclass
class Sample:
    dump: float
    restore: float
    images_mib: float


def make_python_rootfs(root: Path) -> None:
    """Empty /usr (the host's is bind-mounted over it) and the usr-merge links Debian has."""
    (root / "usr").mkdir(parents=True)
    for link, target in (
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ):
        os.symlink(target, root / link)
    add_container_dirs(root)


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"workload not ready: no {path}")
        time.sleep(0.02)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_dockyard(criu: Criu, base: Path, mib: int) -> Sample:
    root = base / "rootfs"
    images = base / "images"
    make_python_rootfs(root)
    pids: list[int] = []
    # criu must map the /usr bind mount to the host's /usr: it is outside the container's rootfs.
    dump_mounts = {"/usr": "usr"}
    restore_mounts = {"usr": "/usr"}
    try:
        pid = spawn_container(
            root,
            [PYTHON, "-I", "-S", "-c", WORKLOAD, str(mib)],
            binds=[("/usr", "/usr")],
            env={"PATH": "/usr/bin"},
        )
        pids.append(pid)
        wait_file(root / "tmp" / "ready", 60)
        dump = criu.dump(pid, images, root=str(root), ext_mounts=dump_mounts)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        pids.remove(pid)
        start = time.monotonic()
        restored = criu.restore(images, root=str(root), ext_mounts=restore_mounts)
        restore = time.monotonic() - start
        pids.append(restored)
        if rss_mib(restored) < mib:
            raise AssertionError(f"restored process holds {rss_mib(restored):.0f} MiB, not {mib}")
        return Sample(dump, restore, dir_mib(images))
    finally:
        for p in pids:
            kill_and_reap(p)


def runc_config(bundle: Path, mib: int, cgroup: str) -> None:
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = [PYTHON, "-I", "-S", "-c", WORKLOAD, str(mib)]
    cfg["root"] = {"path": "rootfs", "readonly": False}
    cfg["mounts"].append(
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}
    )
    cfg["linux"]["cgroupsPath"] = cgroup  # relative: nested under our own cgroup
    (bundle / "config.json").write_text(json.dumps(cfg))


def run_runc(criu: Criu, base: Path, mib: int) -> Sample:
    bundle = base / "bundle"
    state = base / "runc-state"
    images = base / "images"
    work = base / "work"
    for d in (bundle, state, work):
        d.mkdir(parents=True)
    root = bundle / "rootfs"
    make_python_rootfs(root)
    cid = f"dockyard-bench-{os.getpid()}-{mib}"
    runc_config(bundle, mib, cid)
    env = {**os.environ, "PATH": f"{criu.bin_dir}:{os.environ.get('PATH', os.defpath)}"}

    held: list[int] = []

    def runc(*args: str) -> float:
        # runc gives its stdio to the container (and to the restored one). Pipes, as Docker uses:
        # CRIU cannot dump fds on files outside the container, and runc re-wires pipes on restore.
        # Ours stay open (the container holds their other ends) and are read without blocking.
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.set_blocking(out_r, False)
        held.extend((in_w, out_r))
        start = time.monotonic()
        try:
            proc = subprocess.run(
                ["runc", "--root", str(state), *args],
                cwd=bundle,
                env=env,
                stdin=in_r,
                stdout=out_w,
                stderr=out_w,
                timeout=120,
                check=False,
            )
        finally:
            os.close(in_r)
            os.close(out_w)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            try:
                message = os.read(out_r, 65536).decode(errors="replace").strip()
            except BlockingIOError:
                message = ""
            log = next(iter(sorted(work.glob("*.log"))), None)
            lines = log.read_text(errors="replace").splitlines() if log else []
            tail = [line for line in lines if "Error" in line][:5] or lines[-15:]
            raise RuntimeError(f"runc {args[0]} failed: {message}\n" + "\n".join(tail))
        return elapsed

    try:
        runc("run", "--detach", cid)
        wait_file(root / "tmp" / "ready", 60)
        dump = runc("checkpoint", "--image-path", str(images), "--work-path", str(work), cid)
        restore = runc(
            "restore",
            "--detach",
            "--image-path",
            str(images),
            "--work-path",
            str(work),
            "--bundle",
            str(bundle),
            cid,
        )
        st = subprocess.run(
            ["runc", "--root", str(state), "state", cid], capture_output=True, text=True, check=True
        )
        info = json.loads(st.stdout)
        if info["status"] != "running" or rss_mib(info["pid"]) < mib:
            raise AssertionError(
                f"restored runc container is {info['status']}, holding {rss_mib(info['pid']):.0f} MiB"
            )
        return Sample(dump, restore, dir_mib(images))
    finally:
        subprocess.run(
            ["runc", "--root", str(state), "delete", "--force", cid],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        for fd in held:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,500", help="MiB of touched memory, comma-separated")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size and engine (median shown)")
    ap.add_argument("--no-runc", action="store_true", help="skip the runc baseline")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where images go (e.g. /dev/shm for tmpfs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_criu: needs root", file=sys.stderr)
        return 2
    criu = find_criu()
    if criu is None:
        print("bench_criu: no criu >= 4 (run deploy/install-criu.sh)", file=sys.stderr)
        return 2
    has_runc = not args.no_runc and shutil.which("runc") is not None
    sizes = [int(s) for s in args.sizes.split(",")]
    engines: list[tuple[str, Callable[[Criu, Path, int], Sample]]] = [("dockyard", run_dockyard)]
    if has_runc:
        engines.append(("runc", run_runc))

    started = time.monotonic()
    results: dict[tuple[str, int], list[Sample] | str] = {}
    print(f"criu {'.'.join(map(str, criu.version()))} at {criu.path}; images under {args.dir}")
    with child_subreaper():
        for mib in sizes:
            for rep in range(args.repeat):
                # Alternate the order: the first run of a pair pays for the other's writeback.
                for name, fn in engines if rep % 2 == 0 else engines[::-1]:
                    got = results.setdefault((name, mib), [])
                    if isinstance(got, str):
                        continue
                    if time.monotonic() - started > TIME_BUDGET:
                        results[(name, mib)] = got or "skipped: time budget"
                        continue
                    base = Path(tempfile.mkdtemp(prefix=f"dockyard-bench-{name}-", dir=args.dir))
                    try:
                        got.append(fn(criu, base, mib))
                    except Exception as e:
                        results[(name, mib)] = f"failed: {str(e).splitlines()[0][:70]}"
                        print(f"{name} {mib} MiB: {e}", file=sys.stderr)
                    finally:
                        shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"{'memory':>8} {'engine':<9} {'dump s':>8} {'restore s':>10} {'total s':>8} {'images MiB':>11}")
    for mib in sizes:
        for name, _ in engines:
            r = results.get((name, mib), "not run")
            if isinstance(r, str):
                print(f"{mib:>5} MiB {name:<9} {r}")
                continue
            d = statistics.median(s.dump for s in r)
            rs = statistics.median(s.restore for s in r)
            im = statistics.median(s.images_mib for s in r)
            print(f"{mib:>5} MiB {name:<9} {d:>8.3f} {rs:>10.3f} {d + rs:>8.3f} {im:>11.1f}")
    print(f"\n(medians of {args.repeat}; total bench time {time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
