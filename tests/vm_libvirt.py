"""vagrant-libvirt for real: `vagrant up` of vagrant/ on a libvirtd that the test starts and owns.

    with Libvirt(tmp) as lv:                  # netns dy-vag-XXXXXX, libvirtd + virtlogd in it
        with VagrantNodes(lv, 2, box) as v:   # the cached test box as a libvirt box, `vagrant up`
            v.hosts                           # the inventory the Vagrantfile wrote
            lv.run([...])                     # a command in the namespace: it reaches the VMs

Why a network namespace of the test's own: libvirt's isolated network is a bridge, a dnsmasq and
LIBVIRT_* iptables chains. Made inside a netns that only has `lo`, they reach nothing but the VMs,
and they vanish with it (no chains left in the machine's tables, no route out: the network rule
holds by construction). Why a mount namespace: libvirtd's config, sockets, pool and caches are
directories of this test bound over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt
and /var/cache/libvirt, so neither the machine's nor another run's libvirt sees them. Vagrant's
state (VAGRANT_HOME, the .vagrant dotfile dir) and the inventory are this test's files too.

What FACTS.md says works here, and only that: libvirt-daemon, libvirt-daemon-driver-qemu,
libvirt-clients and dnsmasq-base without recommends (deploy/install.sh), qemu.conf running qemu as
root with no security driver nor ownership changes, domains under qemu's emulator (KVM hangs).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from tests.vm_box import Box
from tests.vm_harness import wait_until

REPO = Path(__file__).resolve().parent.parent
# Where libvirtd reads and writes, each bound over by a directory of the test.
LIBVIRT_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}
QEMU_CONF = """\
# The test's libvirtd (tests/vm_libvirt.py): qemu as root, no labels, no chown, no cgroups of its
# own (they would outlive the run in the machine's hierarchy).
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
"""
LIBVIRTD_CONF = """\
# Its sockets are in the test's own /run/libvirt, reachable only from its mount namespace.
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0700"
log_outputs = "3:stderr"
"""


class Libvirt:
    def __init__(self, base: Path) -> None:
        self.tag = secrets.token_hex(3)
        self.netns = f"dy-vag-{self.tag}"
        self.dir = base / f"libvirt-{self.tag}"
        self.proc: subprocess.Popen[bytes] | None = None   # libvirtd (in the foreground)
        self.made_mountpoints: list[Path] = []
        self.started_s = 0.0

    # -- commands in the namespace --------------------------------------------------------------
    def prefix(self) -> list[str]:
        assert self.proc is not None
        return ["nsenter", f"--net=/run/netns/{self.netns}", f"--mount=/proc/{self.proc.pid}/ns/mnt"]

    def run(self, argv: list[str], timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=cwd)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def virsh(self, *args: str, check: bool = True) -> str:
        return self.run(["virsh", "-c", "qemu:///system", *args], check=check).stdout

    # -- life -----------------------------------------------------------------------------------
    def __enter__(self) -> Libvirt:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def start(self) -> None:
        t0 = time.monotonic()
        for name in LIBVIRT_DIRS:
            (self.dir / name).mkdir(parents=True, exist_ok=True)
        (self.dir / "lib" / "images").mkdir()
        (self.dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.dir / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        for target in LIBVIRT_DIRS.values():  # a bind needs its mount point (left empty, removed after)
            p = Path(target)
            if not p.exists():
                p.mkdir(parents=True)
                self.made_mountpoints.append(p)
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        binds = "".join(f'mount --bind "{self.dir / k}" {v}\n' for k, v in LIBVIRT_DIRS.items())
        script = ("set -e\n" + binds +
                  "virtlogd -d -p /run/libvirt/virtlogd.pid\n"
                  "exec libvirtd -p /run/libvirt/libvirtd.pid\n")
        with open(self.dir / "libvirtd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        sock = self.dir / "run" / "libvirt-sock"

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited {self.proc.returncode}: "
                                   f"{(self.dir / 'libvirtd.log').read_text()[-3000:]}")
            return sock.exists() and self.run(["virsh", "-c", "qemu:///system", "version"], check=False,
                                              timeout=30).returncode == 0

        wait_until("libvirtd answering", ready, 60, every=0.5)
        # The storage pool vagrant-libvirt puts the box and the VMs' disks in ("default").
        self.virsh("pool-define-as", "default", "dir", "--target", "/var/lib/libvirt/images")
        self.virsh("pool-start", "default")
        self.started_s = time.monotonic() - t0

    def pids(self) -> list[int]:
        p = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(x) for x in p.stdout.split()]

    def destroy(self) -> None:
        """Domains, networks and the pool first (libvirtd stops qemu and dnsmasq), then the daemons by
        PID, then whatever process is still in the netns (only this test's can be), then the netns."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
                for dom in self.virsh("list", "--all", "--name", check=False).split():
                    self.virsh("destroy", dom, check=False)
                    self.virsh("undefine", dom, "--remove-all-storage", check=False)
                for net in self.virsh("net-list", "--all", "--name", check=False).split():
                    self.virsh("net-destroy", net, check=False)
                    self.virsh("net-undefine", net, check=False)
                for vol in self.virsh("vol-list", "default", check=False).splitlines()[2:]:
                    if vol.split():
                        self.virsh("vol-delete", vol.split()[0], "--pool", "default", check=False)
                self.virsh("pool-destroy", "default", check=False)
            virtlogd = self.dir / "run" / "virtlogd.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(virtlogd.read_text().strip()), signal.SIGTERM)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - 15 else signal.SIGTERM)
            time.sleep(0.5)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        for p in reversed(self.made_mountpoints):
            with contextlib.suppress(OSError):
                p.rmdir()
        subprocess.run(["rm", "-rf", str(self.dir)], capture_output=True)


def libvirt_box(box: Box, dest: Path) -> Path:
    """The test box (a qcow2) as a Vagrant box for the libvirt provider: metadata.json, a Vagrantfile
    and box.img in a tar, as vagrant/build-box.sh makes one. box.img is a hard link where it can be."""
    work = dest.with_suffix(".d")
    work.mkdir(parents=True)
    (work / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": 4}))
    (work / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\n'
                                      '  config.vm.provider :libvirt do |lv|\n    lv.driver = "qemu"\n  end\nend\n')
    try:
        os.link(box.disk, work / "box.img")
    except OSError:
        subprocess.run(["cp", "--reflink=auto", str(box.disk), str(work / "box.img")], check=True)
    with tarfile.open(dest, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(work / name, arcname=name)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return dest


class VagrantNodes:
    """`vagrant up --no-provision` of vagrant/ with n nodes on the Libvirt of the test.

    --no-provision: provision.sh runs deploy/install.sh in each guest, which needs the whole package
    list in the box (build-box.sh's default box); the test box carries dockyard's own dependencies
    instead, and `dockyard cluster up -i --no-install` on the inventory the Vagrantfile writes is
    what starts the cluster (the user's other road, README section 4)."""

    def __init__(self, lv: Libvirt, n: int, box: Box) -> None:
        self.lv = lv
        self.n = n
        self.box = box
        self.box_name = f"dockyard/test-{lv.tag}"
        self.hosts = lv.dir / "hosts.yaml"
        self.env = {**os.environ, "VAGRANT_HOME": str(lv.dir / "vagrant.d"),
                    "VAGRANT_DOTFILE_PATH": str(lv.dir / "dot"), "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                    "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DISABLE_VBOXSYMLINKCREATE": "1",
                    "LIBVIRT_DEFAULT_URI": "qemu:///system",
                    "DOCKYARD_NODES": str(n), "DOCKYARD_BOX": self.box_name,
                    "DOCKYARD_SSH_KEY": str(box.key), "DOCKYARD_HOSTS_FILE": str(self.hosts)}
        self.timings: dict[str, float] = {}

    def vagrant(self, *args: str, timeout: float = 600) -> str:
        p = self.lv.run(["vagrant", *args], timeout=timeout, env=self.env, cwd=REPO / "vagrant", check=False)
        if p.returncode != 0:
            raise RuntimeError(f"vagrant {' '.join(args)} exited {p.returncode}:\n{p.stdout[-5000:]}\n"
                               f"{p.stderr[-3000:]}")
        return p.stdout

    def __enter__(self) -> VagrantNodes:
        try:
            t0 = time.monotonic()
            boxfile = libvirt_box(self.box, self.lv.dir / "box" / "dockyard.box")
            self.vagrant("box", "add", "--name", self.box_name, str(boxfile))
            boxfile.unlink()
            self.timings["box add"] = time.monotonic() - t0
            t0 = time.monotonic()
            # node1 first: the order `vagrant up` keeps with --no-parallel (the README's command).
            self.up_log = self.vagrant("up", "--no-parallel", "--no-provision", timeout=1800)
            self.timings[f"vagrant up ({self.n} nodes)"] = time.monotonic() - t0
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def destroy(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
            self.vagrant("destroy", "-f", timeout=300)
        with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
            self.vagrant("box", "remove", "--force", self.box_name, timeout=120)
