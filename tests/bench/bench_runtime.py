"""Run-to-exit of /bin/true, dockyard (through the agent's gRPC API) against runc and crun on the
same busybox rootfs in the same run; and the memory the agent adds per idle container.

runc's default spec gives the container its own network namespace with only loopback, so the
like-for-like comparison is dockyard's --network none; --network bridge is reported beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, import_busybox

RUNS = int(os.environ.get("BENCH_RUNS", "30"))
IDLE = int(os.environ.get("BENCH_IDLE", "100"))


def _median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f}"


def _p90_ms(xs: list[float]) -> str:
    return f"{sorted(xs)[int(len(xs) * 0.9) - 1] * 1000:.1f}"


def bench_dockyard(a: AgentProcess, network: str) -> list[float]:
    out = []
    cfg = pb.ContainerConfig(image="busybox:latest", cmd=["/bin/true"], network_mode=network)
    for _ in range(RUNS + 2):
        t0 = time.perf_counter()
        c = a.stub.CreateContainer(pb.CreateContainerRequest(config=cfg))
        a.stub.StartContainer(pb.ContainerRef(id=c.id))
        w = a.stub.WaitContainer(pb.ContainerRef(id=c.id))
        a.stub.RemoveContainer(pb.RemoveContainerRequest(id=c.id))
        out.append(time.perf_counter() - t0)
        assert w.exit_code == 0, w
    return out[2:]  # the first runs warm caches


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


def bench_oci(runtime: str, bundle: Path, state: Path) -> list[float]:
    out = []
    for i in range(RUNS + 2):
        t0 = time.perf_counter()
        subprocess.run([runtime, "--root", str(state), "run", "--bundle", str(bundle), f"bench-{runtime}-{i}"],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out[2:]


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
        rows = []
        none = bench_dockyard(a, "none")
        rows.append(("dockyard run /bin/true (--network none)", none))
        bridge = bench_dockyard(a, "bridge")
        rows.append(("dockyard run /bin/true (--network bridge)", bridge))
        if shutil.which("runc"):
            rows.append(("runc run /bin/true (own netns, lo only)",
                         bench_oci("runc", _bundle(tmp, tar, "runc"), tmp / "runc-state")))
        if shutil.which("crun"):
            with _hugetlb_on_v1() as ok:
                if ok:
                    try:
                        rows.append(("crun run /bin/true (own netns, lo only)",
                                     bench_oci("crun", _bundle(tmp, tar, "crun"), tmp / "crun-state")))
                    except subprocess.CalledProcessError as e:
                        print(f"crun failed: {e.stderr.decode()[-300:]}")
        # The same again with the kernel's favordynmods on (dockyard agent --cgroup-favor-dynmods): a
        # host-wide setting that makes every cgroup join cheap, so runc is measured under it too.
        fav = AgentProcess(tmp / "agent-favor")
        fav.extra_args = ["--cgroup-favor-dynmods"]
        try:
            fav.start()
            import_busybox(fav, tar)
            rows.append(("dockyard --network none, favordynmods on", bench_dockyard(fav, "none")))
            if shutil.which("runc"):
                rows.append(("runc, favordynmods on",
                             bench_oci("runc", tmp / "bundle-runc", tmp / "runc-state-favor")))
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
