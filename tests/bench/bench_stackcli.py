"""Stack-file parsing (issue 17, 19): `dockyard stack config -c FILE` against `docker stack config -c
FILE` (the Docker CLI 28 at /usr/local/bin/docker; both parse, interpolate and print, deploying
nothing), as whole processes from the shell, and dockyard's parse alone in-process.

Files: the example stack; 300 services sharing anchors and merge keys with ${...} in every one; a
port range `1-65535:1-65535`; a billion-laughs file (9 levels of 9 aliases); 5,000 levels of
nesting. Each figure is the median of --repeat runs, dockyard and docker alternating; an error
exit (the hostile files) counts, since refusing quickly is the point.

    .venv/bin/python -m tests.bench stackcli       (or tests/bench/bench_stackcli.py --repeat 7)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve()
REPO = _HERE.parents[2]
sys.path[:0] = [str(REPO)]

from tests.bench.common import load  # noqa: E402

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"


def files(d: Path) -> dict[str, Path]:
    # docker stack config refuses the top-level `name:` (the stack is named on the command line)
    example = (REPO / "deploy" / "examples" / "stack.yaml").read_text().replace("name: example\n", "")
    out = {"example stack": d / "example.yaml"}
    out["example stack"].write_text(example)
    big = ["version: \"3.8\"", "x-base: &base", "  image: busybox:${TAG:-latest}",
           "  deploy: {replicas: 2, resources: {limits: {cpus: \"0.5\", memory: 64M}}}", "services:"]
    for i in range(300):
        big += [f"  svc{i}:", "    <<: *base", f"    command: [\"sh\", \"-c\", \"echo {i}\"]",
                f"    environment: [\"N={i}\", \"HOME_DIR=${{HOME:-/root}}\"]", f"    ports: [\"{20000 + i}:80\"]"]
    out["300 services"] = d / "big.yaml"
    out["300 services"].write_text("\n".join(big) + "\n")
    out["ports 1-65535"] = d / "ports.yaml"
    out["ports 1-65535"].write_text("services:\n  web:\n    image: nginx\n    ports: [\"1-65535:1-65535\"]\n")
    laughs = "services:\n  web:\n    image: nginx\nx-l0: &l0 [" + ", ".join(['"lol"'] * 9) + "]\n"
    for i in range(1, 10):
        laughs += f"x-l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n"
    out["billion laughs"] = d / "laughs.yaml"
    out["billion laughs"].write_text(laughs)
    out["5,000 levels"] = d / "deep.yaml"
    out["5,000 levels"].write_text("services:\n  web:\n    image: nginx\nx-deep: " + "[" * 5000 + "]" * 5000 + "\n")
    return out


def timed(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, int]:
    t = time.perf_counter()
    try:
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return float("inf"), -1
    return time.perf_counter() - t, rc


def in_process(path: Path, repeat: int) -> float:
    from deploy.stack import StackError, load_stack

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        try:
            load_stack(str(path), "bench", environ=dict(os.environ))
        except StackError:
            pass
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(sys.argv[1:])
    env = dict(os.environ, PYTHONPATH=str(REPO), TAG="1.36")
    dockyard = [sys.executable, "-m", "deploy.cli", "stack", "config", "-c"]
    docker = [DOCKER, "stack", "config", "-c"]
    have_docker = os.path.exists(DOCKER)
    print(f"load average {load()}; {args.repeat} runs each, medians")
    print(f"{'file':<16} {'dockyard (ms)':>14} {'exit':>5} {'docker (ms)':>12} {'exit':>5} {'ratio':>7} "
          f"{'parse in-process (ms)':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files(Path(tmp)).items():
            ours, theirs, ours_rc, theirs_rc = [], [], 0, 0
            for _ in range(args.repeat):
                s, ours_rc = timed([*dockyard, str(path), "bench"], env, args.timeout)
                ours.append(s)
                if have_docker:
                    s, theirs_rc = timed([*docker, str(path)], env, args.timeout)
                    theirs.append(s)
            a = statistics.median(ours) * 1000
            b = statistics.median(theirs) * 1000 if theirs else float("nan")
            print(f"{name:<16} {a:>14.1f} {ours_rc:>5} {b:>12.1f} {theirs_rc:>5} {a / b:>6.2f}x "
                  f"{in_process(path, args.repeat) * 1000:>22.1f}", flush=True)
    print(f"load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
