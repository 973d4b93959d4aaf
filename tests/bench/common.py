"""Pieces the benchmarks share: a dockerd started by hand and cleaned up after (FACTS.md), the
machine's description and load, and small /proc helpers.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    """One line: cores, memory, kernel and the load average now."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return (f"{os.cpu_count()} CPUs, {mem_kib / (1 << 20):.1f} GiB, kernel {platform.release()}, "
            f"load average {load()}")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / (1 << 20)


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


class Dockerd:
    """dockerd started by hand as FACTS.md describes; everything it creates is removed afterwards."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "dockerd.log"
        self.etc_before = set(os.listdir("/etc/docker")) if os.path.isdir("/etc/docker") else None
        self.run_before = {p: os.path.exists(p) for p in ("/run/docker", "/run/containerd", "/run/docker.sock")}
        self.cg_before = {p for p in Path("/sys/fs/cgroup").glob("*/docker")}

    def cli(self, *args: str, timeout: float = 600) -> str:
        env = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(self.base / "cli-config")}
        return run(["docker", "-H", f"unix://{self.sock}", *args], env=env, timeout=timeout)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
                 "-H", f"unix://{self.sock}", "--pidfile", str(self.base / "docker.pid"), "--iptables=false",
                 "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
                 "--userland-proxy=false"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.cli("version", timeout=5)
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # What dockerd leaves behind (FACTS.md), only what was not there before.
        with open("/proc/mounts") as f:
            mounts = [ln.split()[1] for ln in f if str(self.base) in ln.split()[1]]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        if self.etc_before is not None:
            for name in set(os.listdir("/etc/docker")) - self.etc_before:
                p = Path("/etc/docker") / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        elif os.path.isdir("/etc/docker"):
            shutil.rmtree("/etc/docker", ignore_errors=True)
        for left, existed in self.run_before.items():
            if not existed and os.path.lexists(left):
                shutil.rmtree(left, ignore_errors=True) if os.path.isdir(left) else os.unlink(left)
        for cg in set(Path("/sys/fs/cgroup").glob("*/docker")) - self.cg_before:
            for sub in sorted(cg.rglob("*"), key=lambda q: len(str(q)), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
        shutil.rmtree(self.base / "data", ignore_errors=True)
        shutil.rmtree(self.base / "exec", ignore_errors=True)




def free_subnet(taken: set[str] | None = None) -> str:
    """A 172.28.X.0/24 that no interface on this host uses now (other engineers' test agents run
    beside the benches: AgentProcess's random pick can collide with theirs)."""
    import random

    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used = {w.split("/")[0].rsplit(".", 1)[0] for w in out.split() if w.startswith("172.28.")} | (taken or set())
    free = [f"172.28.{i}" for i in range(1, 251) if f"172.28.{i}" not in used]
    return f"{random.choice(free)}.0/24"
