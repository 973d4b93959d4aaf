"""Run-to-exit of /bin/true, dockyard (through the agent's gRPC API) against runc and crun on the
same busybox rootfs in the same run; and the memory the agent adds per idle container.

runc's default spec gives the container its own network namespace with only loopback, so the
like-for-like comparison is dockyard's --network none; --network bridge is reported beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, import_busybox

RUNS = int(os.environ.get("BENCH_RUNS", "30"))
IDLE = int(os.environ.get("BENCH_IDLE", "100"))


def _median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f}"


def _p90_ms(xs: list[float]) -> str:
    return f"{sorted(xs)[int(len(xs) * 0.9) - 1] * 1000:.1f}"


def dockyard_once(a: AgentProcess, network: str) -> float:
    cfg = pb.ContainerConfig(image="busybox:latest", cmd=["/bin/true"], network_mode=network)
    t0 = time.perf_counter()
    c = a.stub.CreateContainer(pb.CreateContainerRequest(config=cfg))
    a.stub.StartContainer(pb.ContainerRef(id=c.id))
    w = a.stub.WaitContainer(pb.ContainerRef(id=c.id))
    a.stub.RemoveContainer(pb.RemoveContainerRequest(id=c.id))
    took = time.perf_counter() - t0
    assert w.exit_code == 0, w
    return took


def dockyard_run_rm_once(a: AgentProcess, network: str) -> float:
    """What `dockyard run --rm IMAGE /bin/true` asks of the agent: one Attach stream that creates
    the container, starts it, and ends with its exit status once it has been removed (docker's
    `run --rm` waits for the removal too). runc run also deletes its container before it returns."""
    cfg = pb.ContainerConfig(image="busybox:latest", cmd=["/bin/true"], network_mode=network, auto_remove=True)
    t0 = time.perf_counter()
    code = None
    for out in a.stub.Attach(iter([pb.StreamInput(open=pb.OpenStream(create=cfg))])):
        if out.HasField("exit"):
            code = out.exit.exit_code
    took = time.perf_counter() - t0
    assert code == 0, code
    return took


def interleaved(contenders: list[tuple[str, Callable[[], float]]]) -> list[tuple[str, list[float]]]:
    """RUNS rounds, each running every contender once, in turn: a machine whose load changes
    during the bench (a shared one) then weighs on all of them alike. Two warm-up rounds."""
    out: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for i in range(RUNS + 2):
        for name, once in contenders:
            took = once()
            if i >= 2:
                out[name].append(took)
    return list(out.items())


def _bundle(tmp: Path, tar: Path, runtime: str) -> Path:
    bundle = tmp / f"bundle-{runtime}"
    (bundle / "rootfs").mkdir(parents=True)
    subprocess.run(["tar", "-C", str(bundle / "rootfs"), "-xf", str(tar)], check=True)
    subprocess.run([runtime, "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = ["/bin/true"]
    spec["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def oci_once(runtime: str, bundle: Path, state: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([runtime, "--root", str(state), "run", "--bundle", str(bundle), f"bench-{secrets.token_hex(4)}"],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - t0


@contextlib.contextmanager
def _hugetlb_on_v1() -> object:
    """crun refuses hybrid cgroups while hugetlb sits in the v2 tree (FACTS.md): move it to v1."""
    d = tempfile.mkdtemp(prefix="hugetlb-")
    mounted = subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", d], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", d], check=False)
        os.rmdir(d)


def _mem_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bench_idle_memory(a: AgentProcess) -> dict[str, float]:
    assert a.proc is not None
    agent_before = _mem_kib(a.proc.pid, "Rss")
    ids = []
    for _ in range(IDLE):
        c = a.stub.CreateContainer(pb.CreateContainerRequest(config=pb.ContainerConfig(
            image="busybox:latest", cmd=["sleep", "3600"], network_mode="none")))
        a.stub.StartContainer(pb.ContainerRef(id=c.id))
        ids.append(c.id)
    time.sleep(2)
    shims = []
    for cid in ids:
        info = json.loads((a.root / "containers" / cid / "init.pid").read_text())
        shims.append(int(info["shim_pid"]))
    pss = sum(_mem_kib(p, "Pss") for p in shims) / len(shims)
    private = sum(_mem_kib(p, "Private_Dirty") + _mem_kib(p, "Private_Clean") for p in shims) / len(shims)
    agent_after = _mem_kib(a.proc.pid, "Rss")
    for cid in ids:
        a.stub.RemoveContainer(pb.RemoveContainerRequest(id=cid, force=True))
    return {"shim_pss_kib": pss, "shim_private_kib": private, "agent_rss_before_kib": agent_before,
            "agent_rss_after_kib": agent_after,
            "per_container_kib": private + (agent_after - agent_before) / IDLE}


def main() -> None:
    from tests.images import busybox_tar

    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    a = AgentProcess(tmp / "agent")
    try:
        tar = busybox_tar(tmp / "busybox.tar")
        a.start()
        import_busybox(a, tar)
        # The pair the target compares, interleaved; bridge apart (its teardown runs iptables, which
        # would land in the next contender's time).
        contenders: list[tuple[str, Callable[[], float]]] = [
            ("dockyard run --rm /bin/true (--network none)", lambda: dockyard_run_rm_once(a, "none")),
            ("dockyard create+start+wait+rm (--network none)", lambda: dockyard_once(a, "none"))]
        if shutil.which("runc"):
            runc_bundle = _bundle(tmp, tar, "runc")
            contenders.append(("runc run /bin/true (own netns, lo only)",
                               lambda: oci_once("runc", runc_bundle, tmp / "runc-state")))
        rows = interleaved(contenders)
        rows += interleaved([("dockyard run --rm /bin/true (--network bridge)",
                              lambda: dockyard_run_rm_once(a, "bridge"))])
        # crun on its own: it needs hugetlb moved to v1, which would give runc one more hierarchy.
        with _hugetlb_on_v1() as ok:
            if ok and shutil.which("crun"):
                crun_bundle = _bundle(tmp, tar, "crun")
                try:
                    rows += interleaved([("crun run /bin/true (own netns, lo only)",
                                          lambda: oci_once("crun", crun_bundle, tmp / "crun-state"))])
                except subprocess.CalledProcessError as e:
                    print(f"crun failed: {e.stderr.decode()[-300:]}")
        # The same again with the kernel's favordynmods on (dockyard agent --cgroup-favor-dynmods): a
        # host-wide setting that makes every cgroup join cheap, so runc is measured under it too.
        fav = AgentProcess(tmp / "agent-favor")
        fav.extra_args = ["--cgroup-favor-dynmods"]
        try:
            fav.start()
            import_busybox(fav, tar)
            favored: list[tuple[str, Callable[[], float]]] = [
                ("dockyard run --rm, none, favordynmods on", lambda: dockyard_run_rm_once(fav, "none"))]
            if shutil.which("runc"):
                favored.append(("runc, favordynmods on", lambda: oci_once("runc", runc_bundle, tmp / "runc-state")))
            rows += interleaved(favored)
        finally:
            fav.destroy()
        print(f"\nrun-to-exit of /bin/true, {RUNS} runs each (ms)")
        print(f"{'what':46} {'median':>8} {'p90':>8}")
        for name, xs in rows:
            print(f"{name:46} {_median_ms(xs):>8} {_p90_ms(xs):>8}")
        mem = bench_idle_memory(a)
        print(f"\nmemory with {IDLE} idle `sleep` containers")
        print(f"  shim PSS per container:          {mem['shim_pss_kib']:.0f} KiB")
        print(f"  shim private per container:      {mem['shim_private_kib']:.0f} KiB")
        print(f"  agent RSS idle -> with {IDLE}:     {mem['agent_rss_before_kib'] / 1024:.1f} MiB -> "
              f"{mem['agent_rss_after_kib'] / 1024:.1f} MiB")
        print(f"  added per container (private + agent growth): {mem['per_container_kib']:.0f} KiB")
    finally:
        a.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
