"""A dockyard cluster on Debian 12 VMs (tests/vm_harness.py), bootstrapped the user's way:
`dockyard cluster up -i hosts.yaml` over SSH from this machine; then commands run in the guests.

    with vm_dockyard(2, tmp) as d:
        d.dy(d.vms[0], "node", "ls")         # the dockyard CLI in a guest, scheduler address set
        d.timings                            # what each step took, printed at the end

The guests have the project's dependencies and a CRIU 4 in their box, so `up` runs with
--no-install (copy, check, start); the busybox base image's tar is made here and imported in
each guest.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.vm_harness import VM, VMCluster, wait_until

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "deploy.cli"]
GUEST_PROJECT = "/opt/dockyard"


class VMDockyard:
    def __init__(self, c: VMCluster, inventory: Path) -> None:
        self.c = c
        self.vms = c.vms
        self.inventory = inventory
        self.timings: dict[str, float] = {"boot": c.boot_s}

    @property
    def scheduler(self) -> str:
        return f"{self.vms[0].address}:2377"

    def timed(self, what: str, t0: float) -> float:
        self.timings[what] = time.monotonic() - t0
        return self.timings[what]

    def dy(self, vm: VM, *args: str, timeout: float = 600, check: bool = True, input: str | None = None) -> str:
        cmd = (f"cd {GUEST_PROJECT} && DOCKYARD_SCHEDULER={self.scheduler} .venv/bin/python -m deploy.cli "
               + " ".join(shlex.quote(a) for a in args))
        return vm.sh(cmd, timeout=timeout, check=check, input=input)

    def up(self) -> str:
        t0 = time.monotonic()
        p = subprocess.run([*CLI, "cluster", "up", "-i", str(self.inventory), "--no-install", "--insecure", "--timeout", "60",
                            "--ready-timeout", "900"], capture_output=True, text=True, cwd=REPO, timeout=2400)
        self.timed("cluster up over SSH", t0)
        if p.returncode != 0:
            raise RuntimeError(f"cluster up failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        print("\n" + p.stdout.strip())  # each host's steps with their times
        return p.stdout

    def import_busybox(self, tmp: Path) -> None:
        """busybox:latest on every guest. The rootfs tar is made here, once, and streamed to each guest's
        `dockyard import` over SSH: deploy/images/busybox.sh forks an ln and a dirname per applet (~400),
        which took 189-600+ s on an emulated CPU; the import itself is a few seconds there."""
        t0 = time.monotonic()
        tar = tmp / "busybox.tar"
        subprocess.run(["sh", str(REPO / "deploy" / "images" / "busybox.sh"), "-o", str(tar)], check=True,
                       capture_output=True, timeout=120)
        cmd = (f"cd {GUEST_PROJECT} && .venv/bin/python -m deploy.cli import --change 'CMD [\"sh\"]' "
               "- busybox:latest")

        def one(vm: VM) -> None:
            with open(tar, "rb") as f:
                p = subprocess.run(vm.ssh_argv(cmd), stdin=f, capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"{vm.name}: import of busybox exited {p.returncode}: {p.stderr[-2000:]}")

        with ThreadPoolExecutor(len(self.vms)) as pool:  # side by side: each guest has its own CPU
            list(pool.map(one, self.vms))
        self.timed("busybox image imported on every VM", t0)

    def tasks(self, *services: str) -> list[dict[str, Any]]:
        out = json.loads(self.dy(self.vms[0], "service", "ps", "--running", "--format", "json", *services))
        return [t for t in out if isinstance(t, dict)]

    def running(self, service: str, n: int, timeout: float = 300) -> list[dict[str, Any]]:
        def ok() -> list[dict[str, Any]] | None:
            ts = [t for t in self.tasks(service) if t.get("state") == "running"]
            return ts if len(ts) == n else None

        return wait_until(f"{n} running task(s) of {service}", ok, timeout, every=3)

    def vm(self, node: str) -> VM:
        return next(v for v in self.vms if v.name == node)

    def down(self) -> None:
        subprocess.run([*CLI, "cluster", "down", "-i", str(self.inventory)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)

    def report(self) -> str:
        lines = [f"  {k:<44} {v:8.1f} s" for k, v in self.timings.items()]
        return "VM run timings (TCG):\n" + "\n".join(lines)


@contextlib.contextmanager
def vm_dockyard(n: int, tmp: Path, memory_mib: int = 1024) -> Iterator[VMDockyard]:
    with VMCluster(n, tmp, memory_mib=memory_mib) as c:
        d = VMDockyard(c, c.inventory(tmp / "hosts.yaml"))
        try:
            d.up()
            d.import_busybox(tmp)
            yield d
        finally:
            print("\n" + d.report())
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if all(vm.alive() for vm in c.vms):
                    d.down()


# ================================================================================================
# The cgroup v2 driver on the guest's kernel: what a limit does, read from the guest's cgroupfs
# ================================================================================================

def cgroup_of(d: VMDockyard, vm: VM, container: str) -> str:
    """The container's cgroup directory in the guest (the v2 driver: one directory per container)."""
    got = json.loads(d.dy(vm, "inspect", "--type", "container", container))
    cid = str((got[0] if isinstance(got, list) else got).get("Id", ""))
    assert cid, f"no id for {container}: {got}"
    path = vm.sh(f"find /sys/fs/cgroup -type d -name '{cid}*' | head -n 1").strip()
    assert path, f"no cgroup directory for {cid} in the guest"
    return path


def keyed(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


def run_detached(d: VMDockyard, vm: VM, name: str, *args: str) -> str:
    d.dy(vm, "run", "-d", "--name", name, *args)
    return cgroup_of(d, vm, name)


def check_memory_limit(d: VMDockyard, vm: VM) -> dict[str, Any]:
    """-m 32m: memory.max says so, a process over it is OOM-killed (exit 137), memory.events counts it."""
    cg = run_detached(d, vm, "oom", "-m", "32m", "busybox", "sh", "-c",
                      "tail /dev/zero; echo tail exited $?; sleep 100000")
    assert vm.sh(f"cat {cg}/memory.max").strip() == str(32 << 20)
    events = wait_until("oom_kill in memory.events",
                        lambda: (e := keyed(vm.sh(f"cat {cg}/memory.events")))["oom_kill"] >= 1 and e, 120)
    logs = wait_until("the shell's report", lambda: "tail exited" in (o := d.dy(vm, "logs", "oom")) and o, 60)
    assert "tail exited 137" in logs, logs
    d.dy(vm, "rm", "-f", "oom")
    return events


def check_cpu_limit(d: VMDockyard, vm: VM) -> dict[str, Any]:
    """--cpus 0.25: cpu.max is 25000/100000, a busy loop is throttled (cpu.stat) and gets about its quota."""
    cg = run_detached(d, vm, "busy", "--cpus", "0.25", "busybox", "sh", "-c", "while :; do :; done")
    assert vm.sh(f"cat {cg}/cpu.max").split() == ["25000", "100000"]
    before = keyed(vm.sh(f"cat {cg}/cpu.stat"))
    t0 = time.monotonic()
    time.sleep(5)
    after = keyed(vm.sh(f"cat {cg}/cpu.stat"))
    wall = time.monotonic() - t0
    used = (after["usage_usec"] - before["usage_usec"]) / 1e6
    assert after["nr_throttled"] > before["nr_throttled"], (before, after)
    assert after["throttled_usec"] > before["throttled_usec"]
    # The quota is the ceiling; ssh round trips widen the window, so only an upper bound is exact.
    assert used / wall <= 0.25 * 1.2, f"used {used:.2f} s of CPU in {wall:.2f} s"
    d.dy(vm, "rm", "-f", "busy")
    return {"cpu_share": round(used / wall, 3), **{k: after[k] for k in ("nr_periods", "nr_throttled")}}


def check_pids_limit(d: VMDockyard, vm: VM) -> dict[str, Any]:
    """--pids-limit 5: pids.max is 5, a fork past it is refused (EAGAIN), pids.events counts it.
    The forks are made in a subshell: busybox sh exits when a fork fails, and the container must live
    on to be read (its cgroup goes with it); `exec sleep` at the end needs no fork."""
    cg = run_detached(d, vm, "forks", "--pids-limit", "5", "busybox", "sh", "-c",
                      "exec 2>&1; (for i in 1 2 3 4 5 6 7 8; do sleep 100000 & done); echo forked; "
                      "exec sleep 100000")
    assert vm.sh(f"cat {cg}/pids.max").strip() == "5"
    logs = wait_until("the loop's end", lambda: "forked" in (o := d.dy(vm, "logs", "forks")) and o, 60)
    assert "can't fork" in logs or "Resource temporarily unavailable" in logs, logs
    events = keyed(vm.sh(f"cat {cg}/pids.events"))
    assert events["max"] >= 1, events
    assert int(vm.sh(f"cat {cg}/pids.current")) <= 5
    d.dy(vm, "rm", "-f", "forks")
    return events
