"""Volumes: what two volumes and a tmpfs add to `run --rm /bin/true`, beside what the same mounts
add to runc in the same run; and migrating 100 MiB held in a named volume, cold and live, beside
the same 100 MiB in the container's writable layer.

    python -m tests.bench volumes        (BENCH_RUNS=30 rounds; BENCH_MIGRATIONS=3 moves of each kind;
                                          BENCH_VOLUMES_PARTS=run or migration for one half)
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, free_port, import_busybox
from tests.bench.bench_runtime import _bundle, _median_ms, _p90_ms, interleaved, oci_once
from tests.bench.common import load
from tests.images import busybox_tar

MIGRATIONS = int(os.environ.get("BENCH_MIGRATIONS", "3"))


def _mounts() -> list[pb.Mount]:
    return [pb.Mount(type="volume", source="benchv1", target="/a"), pb.Mount(type="volume", source="benchv2", target="/b"),
            pb.Mount(type="tmpfs", target="/t", tmpfs_options=["noexec", "nosuid", "nodev"])]


def run_rm_once(a: AgentProcess, mounts: list[pb.Mount]) -> float:
    cfg = pb.ContainerConfig(image="busybox:latest", cmd=["/bin/true"], network_mode="none", auto_remove=True,
                             mounts=mounts)
    t0 = time.perf_counter()
    code = None
    for out in a.stub.Attach(iter([pb.StreamInput(open=pb.OpenStream(create=cfg))])):
        if out.HasField("exit"):
            code = out.exit.exit_code
    took = time.perf_counter() - t0
    assert code == 0, code
    return took


CLI_CPU: dict[str, list[float]] = {}   # the CLI process's own CPU (user + sys) per contender: the load moves it less


def _process(cmd: list[str], key: str = "") -> float:
    """A whole CLI process, as the user waits for it (its CPU time kept under `key`)."""
    import subprocess

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    took = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, (cmd, p.returncode)
    CLI_CPU.setdefault(key, []).append(usage.ru_utime + usage.ru_stime)
    return took


def _runc_with_mounts(tmp: Path, tar: Path) -> Path:
    bundle = _bundle(tmp / "with", tar, "runc")
    spec = json.loads((bundle / "config.json").read_text())
    for name in ("v1", "v2"):
        (tmp / name).mkdir()
    spec["mounts"] += [
        {"destination": "/a", "type": "bind", "source": str(tmp / "v1"), "options": ["rbind", "rprivate"]},
        {"destination": "/b", "type": "bind", "source": str(tmp / "v2"), "options": ["rbind", "rprivate"]},
        {"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["noexec", "nosuid", "nodev"]}]
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def bench_run(tmp: Path, tar: Path) -> None:
    import shutil

    a = AgentProcess(tmp / "agent")
    try:
        a.start()
        import_busybox(a, tar)
        from deploy import launcher

        dy = str(tmp / "dockyard")
        launcher.write(dy)   # the installed form of the command (deploy/install.sh), here in tmp
        cli = [dy, "-H", a.host, "run", "--rm", "--network", "none"]
        mount_flags = ["-v", "benchv1:/a", "-v", "benchv2:/b", "--tmpfs", "/t"]
        contenders = [("dockyard run --rm, no mounts", lambda: run_rm_once(a, [])),
                      ("dockyard run --rm, 2 volumes + tmpfs", lambda: run_rm_once(a, _mounts())),
                      ("CLI process, no mounts", lambda: _process([*cli, "busybox", "/bin/true"], "none")),
                      ("CLI process, 2 volumes + tmpfs", lambda: _process([*cli, *mount_flags, "busybox", "/bin/true"], "mounts"))]
        if shutil.which("runc"):
            (tmp / "plain").mkdir()
            plain = _bundle(tmp / "plain", tar, "runc")
            with_mounts = _runc_with_mounts(tmp, tar)
            contenders += [("runc run, no mounts", lambda: oci_once("runc", plain, tmp / "runc-state")),
                           ("runc run, 2 binds + tmpfs", lambda: oci_once("runc", with_mounts, tmp / "runc-state"))]
        rows = dict(interleaved(contenders))
        print(f"\nrun-to-exit of /bin/true (--network none), {len(next(iter(rows.values())))} rounds (ms); "
              f"load average {load()}")
        print(f"{'what':40} {'median':>8} {'p90':>8}")
        for name, xs in rows.items():
            print(f"{name:40} {_median_ms(xs):>8} {_p90_ms(xs):>8}")
        d = statistics.median(rows["dockyard run --rm, 2 volumes + tmpfs"]) - \
            statistics.median(rows["dockyard run --rm, no mounts"])
        print(f"dockyard (API): the mounts add {d * 1000:+.1f} ms (target <= 5 ms)")
        d = statistics.median(rows["CLI process, 2 volumes + tmpfs"]) - statistics.median(rows["CLI process, no mounts"])
        print(f"dockyard (whole CLI process): the mounts add {d * 1000:+.1f} ms (target <= 5 ms)")
        cpu = statistics.median(CLI_CPU["mounts"]) - statistics.median(CLI_CPU["none"])
        print(f"the CLI process's own CPU: {statistics.median(CLI_CPU['none']) * 1000:.1f} ms without mounts, "
              f"{cpu * 1000:+.1f} ms with them")
        if "runc run, no mounts" in rows:
            r = statistics.median(rows["runc run, 2 binds + tmpfs"]) - statistics.median(rows["runc run, no mounts"])
            print(f"runc:     the mounts add {r * 1000:+.1f} ms")
    finally:
        a.destroy()


def _migrate(a: AgentProcess, cid: str, target: str, live: bool) -> tuple[float, float]:
    last = None
    for p in a.stub.MigrateContainer(pb.MigrateRequest(id=cid, target=target, live=live), timeout=600):
        last = p
    assert last is not None and last.phase == "done", last
    return last.total_seconds, last.downtime_seconds


def bench_migration(tmp: Path, tar: Path) -> None:
    src, dst = AgentProcess(tmp / "src"), AgentProcess(tmp / "dst")
    for x in (src, dst):
        x.tcp = f"127.0.0.1:{free_port()}"  # type: ignore[attr-defined]
        x.extra_args = ["--listen", x.tcp, "--insecure"]  # type: ignore[attr-defined]
    try:
        src.start()
        dst.start()
        import_busybox(src, tar)
        import_busybox(dst, tar)
        for x in (src, dst):  # post-copy where both can, as `dockyard migrate --live` does
            x.wait_for(lambda x=x: x.stub.Info(pb.Empty()).criu, 30, what="criu checked")
        results: dict[str, list[tuple[float, float]]] = {}
        for where in ("volume", "layer"):
            for live in (False, True):
                key = f"{'live' if live else 'cold'}, 100 MiB in the {'named volume' if where == 'volume' else 'writable layer'}"
                results[key] = []
                for i in range(MIGRATIONS):
                    name = f"m{where}{int(live)}{i}"
                    path = "/data/big" if where == "volume" else "/root/big"
                    args = ["-v", f"mv{name}:/data"] if where == "volume" else []
                    # (KILL: a stop is immediate, so the cold rows time the move, not a 10 s grace)
                    cid = src.run_detached("--name", name, "--stop-signal", "KILL", *args, "busybox", "sleep", "600")
                    src.cli("exec", cid, "sh", "-c", f"head -c 104857600 /dev/urandom > {path}", check=True)
                    results[key].append(_migrate(src, cid, dst.tcp, live))  # type: ignore[attr-defined]
                    dst.cli("rm", "-f", "-v", name, check=True)
                    dst.cli("volume", "rm", "-f", f"mv{name}")
        print(f"\nmigration between two agents on loopback, {MIGRATIONS} moves each (s, median); load average {load()}")
        print(f"{'what':44} {'total':>7} {'downtime':>9}")
        for key, xs in results.items():
            print(f"{key:44} {statistics.median(t for t, _ in xs):>7.2f} {statistics.median(d for _, d in xs):>9.2f}")
    finally:
        src.destroy()
        dst.destroy()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-volumes-"))
    try:
        tar = busybox_tar(tmp / "busybox.tar")
        parts = os.environ.get("BENCH_VOLUMES_PARTS", "run,migration").split(",")
        if "run" in parts:
            bench_run(tmp, tar)
        if "migration" in parts:
            bench_migration(tmp, tar)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
