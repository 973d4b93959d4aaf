"""Log write throughput: MB/s of a container writing lines to stdout as fast as it can, through the
monitor into the log (json-file without and with rotation, rotation with compression, the none
driver), beside runc running the same command with its stdout on a file (no logger between: the
bound a log can only approach), in the same rounds.

What is timed is what the user waits for: `dockyard run -d ...` then `dockyard wait ID`, two whole
CLI processes, until the container has exited (its output in the log by then); for runc, `runc run`
until it returns. Also reported: the disk the log holds at the end (the rotation's bound).

    python -m tests.bench logs        (BENCH_RUNS=5 rounds; BENCH_LOG_MB=100 MB written per run)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.agent_harness import CLI, REPO, AgentProcess, _env, import_busybox
from tests.bench.bench_runtime import _bundle
from tests.bench.common import load
from tests.images import busybox_tar

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
MB = int(os.environ.get("BENCH_LOG_MB", "100"))
LINE = "x" * 99   # 100-byte lines with the newline
WRITER = f"yes {LINE} | head -c {MB * 1_000_000}"


def _cli(a: AgentProcess, *args: str) -> str:
    r = subprocess.run([*CLI, "-H", a.host, *args], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"dockyard {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def dockyard_once(a: AgentProcess, opts: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    cid = _cli(a, "run", "-d", *opts, "busybox", "sh", "-c", WRITER)
    code = _cli(a, "wait", cid)
    took = time.perf_counter() - t0
    assert code == "0", code
    disk = sum(p.stat().st_size for p in (a.root / "containers" / cid).glob("container.log*"))
    _cli(a, "rm", cid)
    return took, disk


def runc_once(bundle: Path, state: Path, out: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle), f"bench-{secrets.token_hex(4)}"],
                       check=True, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    disk = out.stat().st_size
    out.unlink()
    return took, disk


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    a = AgentProcess(tmp / "agent")
    try:
        tar = busybox_tar(tmp / "busybox.tar")
        a.start()
        import_busybox(a, tar)
        contenders: list[tuple[str, object]] = [
            ("json-file, no rotation", lambda: dockyard_once(a, [])),
            ("json-file, max-size=10m max-file=3", lambda: dockyard_once(a, ["--log-opt", "max-size=10m",
                                                                              "--log-opt", "max-file=3"])),
            ("json-file, 10m x 3, compress=true", lambda: dockyard_once(a, ["--log-opt", "max-size=10m", "--log-opt",
                                                                             "max-file=3", "--log-opt", "compress=true"])),
            ("none driver (no log written)", lambda: dockyard_once(a, ["--log-driver", "none"])),
        ]
        if shutil.which("runc"):
            bundle = _bundle(tmp, tar, "runc")
            spec = json.loads((bundle / "config.json").read_text())
            spec["process"]["args"] = ["sh", "-c", WRITER]
            (bundle / "config.json").write_text(json.dumps(spec))
            contenders.append(("runc run, stdout on a file", lambda: runc_once(bundle, tmp / "runc-state",
                                                                             tmp / "runc.out")))
        rows: dict[str, list[tuple[float, int]]] = {name: [] for name, _ in contenders}
        print(f"load average before: {load()}", flush=True)
        for i in range(RUNS + 1):   # one warm-up round
            for name, once in contenders:
                r = once()  # type: ignore[operator]
                if i:
                    rows[name].append(r)
        print(f"\n{MB} MB of 100-byte lines to stdout, {RUNS} interleaved rounds; load average {load()}")
        print(f"{'what':40} {'median s':>9} {'MB/s':>7} {'vs runc':>8} {'disk at end':>12}")
        peer = statistics.median(t for t, _ in rows["runc run, stdout on a file"]) \
            if "runc run, stdout on a file" in rows else None
        for name, xs in rows.items():
            t = statistics.median(x for x, _ in xs)
            disk = max(d for _, d in xs)
            ratio = f"{peer / t:.2f}x" if peer else "-"
            print(f"{name:40} {t:>9.2f} {MB / t:>7.1f} {ratio:>8} {disk / 1e6:>10.1f} MB")
        return 0
    finally:
        a.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
