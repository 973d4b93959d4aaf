"""The Debian 12 guest disk the VM tests boot: built once with vagrant/build-box.sh, then reused.

    box() -> Box(disk, key)     /var/cache/dockyard-vm/box-<hash>/disk.qcow2 and the SSH key

The cache lives outside the repository (DOCKYARD_VM_CACHE overrides it) and is keyed by a hash of
everything the build reads: build-box.sh, the package list, the project's Python dependencies and
the login key. A change to any of them builds a new box (about 3-5 minutes, debootstrap from the
mirror apt uses); otherwise a test starts from the cached one. Builds are serialised by a lock
file, so two runs side by side build once. The guest carries a virtualenv with the dependencies,
because its network reaches nothing but the other guests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DOCKYARD_VM_CACHE", "/var/cache/dockyard-vm"))
BUILD_SCRIPT = REPO / "vagrant" / "build-box.sh"
# What the agent, scheduler and etcd need beyond build-box.sh's base (which has python3, criu,
# iproute2, openssh-server, sudo): the venv module, a C compiler (and zlib's header) for the container monitor,
# iptables, libseccomp, busybox for the base image, Debian's etcd.
PACKAGES = ("python3-venv,gcc,libc6-dev,zlib1g-dev,iptables,util-linux,libseccomp2,busybox-static,"
            "etcd-server,etcd-client")
# The NIC a test links the guests with (PCI slot 5): networkd leaves it alone, the test
# gives it a static address. ens5 under the pc machine's ACPI slot names, enp0s5 otherwise.
LINK_NIC_SLOT = 5
UNMANAGED = "ens5 enp0s5"
# dockyard wants criu >= 4; the guests get this machine's private one (deploy/install-criu.sh).
CRIU_PREFIX = Path("/opt/dockyard/criu")


class BoxError(Exception):
    pass


@dataclass(frozen=True)
class Box:
    disk: Path      # qcow2; guests boot from overlays on top of it, never from it
    key: Path       # private key of the `vagrant` user (passwordless sudo)


def _dependencies() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _login_key() -> Path:
    """One key for every box of this cache: it is part of the box's hash, so it must not change."""
    key = CACHE / "id_ed25519"
    if not key.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = CACHE / f".id_ed25519.{os.getpid()}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dockyard-vm-tests", "-f", str(tmp)],
                       check=True, capture_output=True)
        os.replace(f"{tmp}.pub", f"{key}.pub")
        os.replace(tmp, key)
    return key


def box_hash(pubkey: bytes) -> str:
    h = hashlib.sha256()
    criu = (CRIU_PREFIX / "PACKAGES").read_bytes() if (CRIU_PREFIX / "PACKAGES").exists() else b""
    for part in (BUILD_SCRIPT.read_bytes(), PACKAGES.encode(), "\n".join(_dependencies()).encode(),
                 UNMANAGED.encode(), pubkey, criu):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _wheels(dest: Path) -> None:
    """The project's dependencies as wheels for the guest's Python (3.11, x86_64, Debian 12)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest),
                           "--only-binary=:all:", *_dependencies()], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BoxError(f"pip download of the guest's wheels failed:\n{proc.stderr[-3000:]}")


def box(log: Path | None = None) -> Box:
    """The cached box, built first when there is none for the current inputs."""
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "sfdisk", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise BoxError(f"{tool} is missing: apt-get install --no-install-recommends qemu-system-x86 "
                           "qemu-utils debootstrap fdisk e2fsprogs")
    key = _login_key()
    d = CACHE / f"box-{box_hash(Path(f'{key}.pub').read_bytes())}"
    disk = d / "disk.qcow2"
    if disk.exists():
        return Box(disk, key)
    d.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if disk.exists():
            return Box(disk, key)
        _wheels(d / "wheels")
        logfile = log or d / "build.log"
        env = {**os.environ, "PACKAGES": PACKAGES, "WHEELS": str(d / "wheels"), "UNMANAGED": UNMANAGED,
               "IMAGE": str(disk), "DEBS": str(CACHE / "debs"), "VAGRANT_INSECURE_KEY": f"{key}.pub",
               "CRIU_PREFIX": str(CRIU_PREFIX) if (CRIU_PREFIX / "bin" / "criu").exists() else ""}
        with open(logfile, "w") as out:
            proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=out, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0 or not disk.exists():
            tail = logfile.read_text(errors="replace")[-3000:]
            raise BoxError(f"vagrant/build-box.sh failed (exit {proc.returncode}), log {logfile}:\n{tail}")
        shutil.rmtree(d / "wheels", ignore_errors=True)
        _prune(keep=2)
    return Box(disk, key)


def _prune(keep: int) -> None:
    """Boxes of older inputs go, but the newest `keep` (two worktrees on different inputs would
    otherwise rebuild each other's box every run); a box's overlays live with the tests, not here."""
    boxes = sorted((p for p in CACHE.glob("box-*") if (p / "disk.qcow2").exists()),
                   key=lambda p: (p / "disk.qcow2").stat().st_mtime, reverse=True)
    for old in boxes[keep:]:
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    b = box()
    print(f"box: {b.disk} ({b.disk.stat().st_size // 2**20} MiB), key {b.key}")
