"""What device rules cost a container's start (issue 17): `run --rm /bin/true` through the agent's
API with docker's default rules, with a --device, and --privileged, interleaved with runc run on the
same busybox rootfs (runc applies the same default list); then, with DOCKYARD_TRACE on a second
agent, how long the start waits for the container's cgroups (made ahead on cgroup v1: shim.SpareCgroup).

`python -m tests.bench sec-devices`. The rows with a device or --privileged are left out where the
agent's API has no such fields (a tree from before them, for a before/after comparison).
"""

from __future__ import annotations

import collections
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, import_busybox
from tests.bench.bench_runtime import RUNS, _bundle, _median_ms, _p90_ms, interleaved, oci_once

TRACED = int(os.environ.get("BENCH_TRACED", "40"))


def _run_rm(a: AgentProcess, **extra: object) -> float:
    cfg = pb.ContainerConfig(image="busybox:latest", cmd=["/bin/true"], network_mode="none", auto_remove=True,
                             **extra)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    code, error = None, ""
    for out in a.stub.Attach(iter([pb.StreamInput(open=pb.OpenStream(create=cfg))])):
        if out.HasField("exit"):
            code, error = out.exit.exit_code, out.exit.error
    took = time.perf_counter() - t0
    assert code == 0, f"exit {code}: {error}"
    return took


def cgroup_waits(trace: Path) -> tuple[list[float], list[float]]:
    """Per start, from the shim's trace: ms from the clone to the cgroups being ready, and ms the
    start waited for them after the init was ready to exec (what it costs the user)."""
    events: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for line in trace.read_text().splitlines():
        t, pid, what = line.split(" ", 2)
        events[pid].setdefault(what.strip(), float(t))
    step, waited = [], []
    for e in events.values():
        done = e.get("joined cgroup") or e.get("cgroup taken from the spare")
        if done and "forked" in e and "ready" in e:
            step.append((done - e["forked"]) * 1000)
            waited.append(max(0.0, done - e["ready"]) * 1000)
    return step, waited


def main() -> None:
    from tests.images import busybox_tar

    tmp = Path(tempfile.mkdtemp(prefix="bench-sec-devices-"))
    a = AgentProcess(tmp / "agent")
    try:
        tar = busybox_tar(tmp / "busybox.tar")
        a.start()
        import_busybox(a, tar)
        contenders: list[tuple[str, Callable[[], float]]] = [
            ("dockyard run --rm (default device rules)", lambda: _run_rm(a))]
        if "devices" in pb.ContainerConfig.DESCRIPTOR.fields_by_name:
            dev = pb.DeviceMapping(path_on_host="/dev/loop0", path_in_container="/dev/xloop", permissions="r")
            contenders += [("dockyard run --rm --device /dev/loop0", lambda: _run_rm(a, devices=[dev])),
                           ("dockyard run --rm --privileged", lambda: _run_rm(a, privileged=True))]
        if shutil.which("runc"):
            bundle = _bundle(tmp, tar, "runc")
            contenders.append(("runc run (own netns, lo only)", lambda: oci_once("runc", bundle, tmp / "runc-state")))
        rows = interleaved(contenders)
        print(f"\nrun-to-exit of /bin/true, {RUNS} runs each, interleaved (ms)")
        print(f"{'what':46} {'median':>8} {'p90':>8}")
        for name, xs in rows:
            print(f"{name:46} {_median_ms(xs):>8} {_p90_ms(xs):>8}")
        runc = dict(rows).get("runc run (own netns, lo only)")
        if runc:
            for name, xs in rows[:-1]:
                print(f"  {name}: {statistics.median(xs) / statistics.median(runc):.2f}x runc")
    finally:
        a.destroy()
    trace = tmp / "trace"
    os.environ["DOCKYARD_TRACE"] = str(trace)
    t = AgentProcess(tmp / "traced")
    try:
        t.start()
        import_busybox(t, tar)
        for _ in range(TRACED + 2):
            _run_rm(t)
    finally:
        os.environ.pop("DOCKYARD_TRACE", None)
        t.destroy()
    step, waited = cgroup_waits(trace)
    if step:
        print(f"\ncgroups of a start, {len(step)} traced starts (ms): ready after the clone median "
              f"{statistics.median(step):.2f}; the start waited for them: median {statistics.median(waited):.2f}, "
              f"mean {statistics.mean(waited):.2f}, max {max(waited):.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
