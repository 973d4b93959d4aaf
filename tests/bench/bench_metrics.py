"""Scrape time of the agent's /metrics and the agent's cpu per scrape, with N running `sleep`
containers (default 100), against the target of a scrape under 100 ms.

A real agent (tests/agent_harness.py) on its own root, bridge and free metrics port; containers are
started over gRPC, a few at a time; the agent's cpu is its process's utime + stime from /proc, so
it covers the HTTP thread, the collector and the text encoding. Everything is removed at the end.

    .venv/bin/python tests/bench/bench_metrics.py [--containers 100] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path[:0] = [str(_HERE.parents[2])]

from protos import agent_pb2 as pb  # noqa: E402
from tests.agent_harness import AgentProcess, import_busybox  # noqa: E402
from tests.images import busybox_tar  # noqa: E402

TARGET_MS = 100.0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of pid (the scrape runs on the HTTP server's thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def scrape(url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body: bytes = r.read()
    return time.perf_counter() - t, body


def inside_agent(body: bytes) -> float:
    """dockyard_agent_scrape_duration_seconds: the agent's own time for the previous scrape."""
    m = re.search(rb"^dockyard_agent_scrape_duration_seconds\{[^}]*\} (\S+)$", body, re.M)
    return float(m.group(1)) if m else float("nan")


def start_containers(a: AgentProcess, n: int) -> None:
    def one(i: int) -> None:
        cfg = pb.ContainerConfig(name=f"bench-{i}", image="busybox", cmd=["sleep", "3600"])
        c = a.stub.CreateContainer(pb.CreateContainerRequest(config=cfg), timeout=60)
        a.stub.StartContainer(pb.ContainerRef(id=c.id), timeout=60)

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(one, range(n)))


def measure(a: AgentProcess, scrapes: int) -> dict[str, float]:
    assert a.proc is not None
    scrape(a.metrics_url)  # warm up
    times = []
    inside = []
    body = b""
    cpu0 = cpu_seconds(a.proc.pid)
    for _ in range(scrapes):
        dt, body = scrape(a.metrics_url)
        times.append(dt)
        inside.append(inside_agent(body))
    cpu1 = cpu_seconds(a.proc.pid)
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    times.sort()
    return {"median_ms": statistics.median(times) * 1e3, "p95_ms": times[int(len(times) * 0.95) - 1] * 1e3,
            "max_ms": times[-1] * 1e3, "inside_ms": statistics.median(inside[1:]) * 1e3,
            "cpu_ms": (user + system) / scrapes * 1e3, "sys_ms": system / scrapes * 1e3, "kib": len(body) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_metrics needs root (it runs a real agent)")
    base = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    a = AgentProcess(base / "agent")
    rows = []
    try:
        a.start()
        import_busybox(a, busybox_tar(base / "busybox.tar"))
        rows.append((0, measure(a, args.scrapes)))
        t = time.monotonic()
        start_containers(a, args.containers)
        started = time.monotonic() - t
        rows.append((args.containers, measure(a, args.scrapes)))
    finally:
        a.destroy()
    load = os.getloadavg()
    print(f"agent /metrics, {args.scrapes} scrapes each (containers started in {started:.1f} s; "
          "cpu = the agent process's utime+stime per scrape; in-agent = dockyard_agent_scrape_duration_seconds; "
          f"load average {load[0]:.2f} on {os.cpu_count()} cpus)")
    head = ["containers", "median ms", "p95 ms", "max ms", "in-agent median ms", "agent cpu ms/scrape", "of it kernel ms", "body KiB",
            f"median < {TARGET_MS:.0f} ms"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n, r in rows:
        ok = "yes" if r["median_ms"] < TARGET_MS else "NO"
        print(f"| {n} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} | {r['inside_ms']:.1f} | "
              f"{r['cpu_ms']:.1f} | {r['sys_ms']:.1f} | {r['kib']:.0f} | {ok} |")


if __name__ == "__main__":
    main()
