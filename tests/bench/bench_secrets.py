"""Secrets (issue 19): how long a secret takes to reach a new task, against a plain deploy in the same run.

One host: a real etcd, a scheduler process and an agent joined to it (tests/cluster_harness.py). Each
round times what the user waits for, as whole processes from the shell: `dockyard service create`
(which waits for the task to run) and then `dockyard exec TASK cat FILE` until it prints the file:
  plain   a service without secrets, reading /etc/hostname;
  secret  the same with `--secret` (fetched by the agent from the scheduler, written to a tmpfs,
          bound into the container), reading /run/secrets/NAME.
Rounds alternate; medians and the ratio are printed with the load average before and after. The
service is removed between rounds (not timed). Swarm's own figure is not measured here: a swarm
needs `docker swarm init` on a dockerd started by hand, which this bench does not do.

    .venv/bin/python -m tests.bench secrets        (or tests/bench/bench_secrets.py --rounds 7)
"""

from __future__ import annotations

import argparse
import os
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(sys.argv[1:])
    if os.geteuid() != 0:
        print("needs root (the agent runs containers)")
        return 1
    from tests.agent_harness import CLI, _env
    from tests.cluster_harness import one_node_cluster, wait_for
    from tests.images import busybox_tar

    with tempfile.TemporaryDirectory(prefix="bench-secrets-") as tmp:
        base = Path(tmp)
        tar = busybox_tar(base / "busybox.tar")
        with one_node_cluster(base, tar) as (_, sched, agent):
            env = _env()
            env["DOCKYARD_SCHEDULER"] = sched.address
            pre = [*CLI, "-H", agent.host]

            def run(*a: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
                return subprocess.run([*pre, *a], input=stdin, capture_output=True, env=env, timeout=120, cwd=REPO)

            secret = os.urandom(16).hex().encode()
            r = run("secret", "create", "bench_pw", "-", stdin=secret)
            assert r.returncode == 0, r.stderr
            times: dict[str, list[float]] = {"plain": [], "secret": []}
            print(f"load average {load()}; {args.rounds} rounds each, alternating")
            for i in range(args.rounds):
                for kind in ("plain", "secret"):
                    name = f"b{kind}{i}"
                    extra = ["--secret", "bench_pw"] if kind == "secret" else []
                    path, want = ("/run/secrets/bench_pw", secret) if kind == "secret" else ("/etc/hostname", b"")
                    t0 = time.perf_counter()
                    r = run("service", "create", "--name", name, "-q", *extra, "busybox:latest", "sleep", "600")
                    assert r.returncode == 0, r.stderr
                    while True:
                        r = run("exec", f"{name}.1", "cat", path)
                        if r.returncode == 0 and want in r.stdout:
                            break
                        if time.perf_counter() - t0 > 60:
                            raise AssertionError(f"{name}: {path} not readable after 60 s: {r.stderr!r}")
                    times[kind].append(time.perf_counter() - t0)
                    run("service", "rm", name)
                    wait_for(lambda n=name: not [  # type: ignore[misc]
                        c for c in agent.task_containers(running_only=False) if c.labels.get("dockyard.service") == n],
                        60, f"{name} removed")
            run("secret", "rm", "bench_pw")
    a, b = statistics.median(times["secret"]) * 1000, statistics.median(times["plain"]) * 1000
    print(f"{'what':<40} {'median (ms)':>12} {'min':>8} {'max':>8}")
    for kind, label in (("plain", "plain: create -> /etc/hostname read"),
                        ("secret", "secret: create -> /run/secrets/NAME read")):
        ts = [t * 1000 for t in times[kind]]
        print(f"{label:<40} {statistics.median(ts):>12.0f} {min(ts):>8.0f} {max(ts):>8.0f}")
    print(f"secret / plain: {a / b:.2f}x (+{a - b:.0f} ms)")
    print(f"load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
