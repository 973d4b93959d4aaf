"""Debian 12 VMs under plain qemu (software emulation), for the tests that need a real other kernel.

    with VMCluster(2, tmp) as c:          # boots side by side from the cached box (tests/vm_box.py)
        c.vms[0].sh("cat /sys/fs/cgroup/cgroup.controllers")
        c.inventory                       # hosts.yaml for `dockyard cluster up -i` over SSH
        c.vms[1].kill()                   # SIGKILL of the VM's qemu: the host is gone

Why plain qemu and not vagrant-libvirt: it needs no daemon, no storage pool and no iptables
chains, so a test owns every piece of it and removes it by PID and path (FACTS.md: both work here;
vagrant/ keeps the libvirt route for users). Why TCG: KVM guests hang on this machine (nested
virtualisation), so every guest runs 7-9x slower than the host.

The network rule holds by construction: each VM's first NIC is qemu user networking with
`restrict=on` (the guest reaches nothing outside; the only way in is SSH forwarded from
127.0.0.1:PORT), and the second NIC links the VMs to each other through qemu's socket netdev over
loopback TCP (VM 1 listens, the others connect: a wire of two ends, so at most two VMs are linked).
The link NIC is left alone by the guest's networkd; the harness gives it 10.R.R.1N/24.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from tests.vm_box import LINK_NIC_SLOT, Box, box

T = TypeVar("T")
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10"]
BOOT_TIMEOUT = float(os.environ.get("DOCKYARD_VM_BOOT_TIMEOUT", "420"))  # TCG on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, fn: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = fn()
            if got:
                return got
        except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s" + (f" (last: {last})" if last else ""))
        time.sleep(every)


class VM:
    def __init__(self, cluster: VMCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"node{index}"
        self.dir = cluster.base / self.name
        self.ssh_port = free_port()
        self.address = f"{cluster.net}.{10 + index}"   # on the link between the VMs
        self.proc: subprocess.Popen[bytes] | None = None
        self.booted_in = 0.0

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        disk = self.dir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.cluster.box.disk),
                        str(disk)], check=True, capture_output=True)
        link = (f"socket,id=link,listen=127.0.0.1:{self.cluster.link_port}" if self.index == 1
                else f"socket,id=link,connect=127.0.0.1:{self.cluster.link_port}")
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-smp", "1",
                "-m", str(self.cluster.memory_mib), "-name", f"dockyard-test-{self.cluster.tag}-{self.name}",
                "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}",
                "-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe",
                "-netdev", f"user,id=nat,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                "-device", "virtio-net-pci,netdev=nat,addr=0x3",
                "-netdev", link,
                "-device", f"virtio-net-pci,netdev=link,addr={LINK_NIC_SLOT:#x},mac=52:54:00:d7:{self.cluster.mac}:{self.index:02x}"]
        with open(self.dir / "qemu.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-i", str(self.cluster.box.key), "-p", str(self.ssh_port), *SSH_OPTS, "vagrant@127.0.0.1",
                "sudo sh -c " + shlex.quote(command)]

    def sh(self, command: str, timeout: float = 120, check: bool = True, input: str | None = None) -> str:
        """command as root in the guest; its stdout (a failure raises with stderr)."""
        p = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise RuntimeError(f"{self.name}: {command!r} exited {p.returncode}: {p.stderr.strip()[-2000:]}"
                               f"{p.stdout.strip()[-1000:]}")
        return p.stdout

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_booted(self, t0: float) -> None:
        def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name}: qemu exited: {(self.dir / 'qemu.log').read_text()[-2000:]}")
            return self._ssh_ok()

        wait_until(f"{self.name}: SSH (console {self.console})", up, BOOT_TIMEOUT, every=2)
        self.booted_in = time.monotonic() - t0
        # The link NIC: named by its PCI slot; networkd leaves it alone.
        self.sh(f"dev=$(ls /sys/class/net | grep -E '^(ens|enp0s){LINK_NIC_SLOT}$' | head -n 1); "
                f"[ -n \"$dev\" ] || {{ ls /sys/class/net >&2; exit 1; }}; "
                f"ip link set \"$dev\" up && ip addr add {self.address}/24 dev \"$dev\" && "
                f"hostname {self.name} && echo {self.name} > /etc/hostname && "
                f"echo '127.0.1.1 {self.name}' >> /etc/hosts")
        # What the box's packages start at boot and dockyard does not use, off: under TCG every
        # idle daemon is CPU the agent lacks (Debian's etcd-server starts its own etcd).
        self.sh("systemctl stop etcd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer "
                "fstrim.timer dpkg-db-backup.timer 2>/dev/null; true")

    def _ssh_ok(self) -> bool:
        return subprocess.run(self.ssh_argv("true"), capture_output=True, timeout=30).returncode == 0

    def kill(self) -> None:
        """The host dies: its qemu SIGKILLed, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class VMCluster:
    def __init__(self, n: int, base: Path, memory_mib: int = 1024) -> None:
        if not 1 <= n <= 2:
            raise ValueError("the socket link joins one or two VMs")
        self.tag = secrets.token_hex(3)
        self.base = base / f"vms-{self.tag}"
        self.memory_mib = memory_mib
        self.box: Box = box()
        r = secrets.randbelow(200) + 20
        self.net = f"10.{r}.{secrets.randbelow(250) + 1}"
        self.mac = f"{secrets.randbelow(256):02x}"
        self.link_port = free_port()
        self.vms = [VM(self, i) for i in range(1, n + 1)]
        self.boot_s = 0.0

    def __enter__(self) -> VMCluster:
        try:
            t0 = time.monotonic()
            for vm in self.vms:  # the listener first: the others connect to it
                vm.start()
            for vm in self.vms:
                vm.wait_booted(t0)
            self.boot_s = time.monotonic() - t0
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def destroy(self) -> None:
        for vm in self.vms:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                vm.kill()
        for vm in self.vms:  # the overlays go; the box and its key stay cached
            with contextlib.suppress(OSError):
                (vm.dir / "disk.qcow2").unlink()

    def inventory(self, path: Path, agent_args: list[str] | None = None, ttl: int = 30, heartbeat: float = 3) -> Path:
        """hosts.yaml: SSH to each VM's forwarded port, advertise its link address, node1 the scheduler.
        ttl, heartbeat: the scheduler's leases and the agents' heartbeat interval and deadline (default
        3 s and 1 s). A TCG guest's scheduler at load misses 3 s leases (its leadership flapped), and
        with 10 s and 1 s, at host load 19, it answered heartbeats late for minutes: every node was
        marked down over and over and no task of the stack stayed running."""
        hosts = [{"name": vm.name, "address": "127.0.0.1", "port": vm.ssh_port, "advertise": vm.address,
                  "role": "scheduler" if vm.index == 1 else "agent"} for vm in self.vms]
        doc = {"defaults": {"user": "vagrant", "key": str(self.box.key), "known_hosts": False, "sudo": True,
                            "agent_args": agent_args or [], "scheduler_args": ["--ttl", str(ttl), "--heartbeat", str(heartbeat)]},
               "hosts": hosts}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
