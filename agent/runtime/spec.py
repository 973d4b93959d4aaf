"""The runtime spec: everything the shim and the container init need to start one container.

The agent (which owns names, images, addresses) computes it; the shim executes it. It is plain
data, saved as JSON in the container's state directory, so a restarted agent can re-read it and a
checkpoint can carry it (like runc's config.json under containerd).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from agent.runtime.cgroups import Resources

# Docker's default capability set (moby/oci/caps/defaults.go).
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

CAPABILITY_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}

# Docker's defaults: hidden (masked) and read-only paths under /proc and /sys.
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ProcessSpec:
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    user: str = ""                # "name", "uid", "uid:gid", "name:group"; resolved inside the rootfs
    tty: bool = False
    stdin: bool = False
    init: bool = False            # --init: a pid-1 reaper runs the command as its child
    capabilities: list[str] = field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    no_new_privileges: bool = True
    seccomp: bool = True          # the default filter (agent/runtime/seccomp.py); False: unconfined
    seccomp_program: str = ""     # base64 BPF compiled by the agent (other caps, a profile); "": the default
    rlimits: list[list[int]] = field(default_factory=list)   # [resource, soft, hard] (-1: unlimited)
    additional_groups: list[str] = field(default_factory=list)   # --group-add: names or gids


@dataclass
class MountSpec:
    type: str
    source: str
    options: list[str]



def mount_key(target: str) -> str:
    """CRIU's name for a container's mount at `target` (a ContainerMount's key): the same on every
    host, so that a restore elsewhere finds the mount by it."""
    return "dym-" + hashlib.sha256(os.path.normpath(target).encode()).hexdigest()[:16]

@dataclass
class ContainerMount:
    """A volume, bind or tmpfs the init mounts in the container (agent/runtime/mounts.py)."""
    type: str                    # bind (volumes too: their directory on the host) | tmpfs
    source: str                  # host path; "" for a tmpfs
    target: str                  # in the container
    readonly: bool = False
    options: list[str] = field(default_factory=list)   # tmpfs: mount(8) options
    copy_up: bool = False        # an empty volume is filled from the image's content at target
    key: str = ""                # CRIU's name for it (external on dump, mapped to source on restore)
    propagation: str = "rprivate"  # a bind's: [r]private, [r]shared, [r]slave (set once it is attached)


@dataclass
class DeviceNode:
    """A device node the init makes in the container's /dev beyond docker's default ones (--device,
    --privileged); the devices cgroup's rules, in the cgroup resources, are what let it be opened."""

    path: str          # absolute, in the container (under /dev)
    type: str          # "c" or "b"
    major: int
    minor: int
    mode: int = 0o666  # permission bits, as the host's node has them
    uid: int = 0
    gid: int = 0
    host_path: str = ""  # bound instead in a user namespace (no mknod there)


@dataclass
class IdMap:
    container: int
    host: int
    size: int


@dataclass
class Restore:
    """Restore a CRIU checkpoint instead of starting the process."""
    images_dir: str
    stdio: list[str]                             # the dumped keys of fds 0-2 ("pipe:[N]"; "" = none)
    netns_key: str = ""                          # the network namespace CRIU was told is external
    old_ip: str = ""                             # moved from an address this host does not give it
    lazy: bool = False                           # post-copy: memory from the agent's lazy-pages daemon


@dataclass
class RuntimeSpec:
    id: str
    state_dir: str
    rootfs: str                                  # where the shim mounts the rootfs on the host
    mounts: list[MountSpec]                      # rootfs mounts from the snapshotter, applied in order
    process: ProcessSpec
    hostname: str = ""
    namespaces: list[str] = field(default_factory=lambda: ["mnt", "uts", "ipc", "pid", "net"])
    uid_map: list[IdMap] = field(default_factory=list)   # set when "user" is among namespaces
    gid_map: list[IdMap] = field(default_factory=list)
    cgroup: Resources = field(default_factory=Resources)   # the container's cgroup, its device rules in
    cgroup_parent: str | None = None
    cgroup_root: str = "/sys/fs/cgroup"
    network: dict[str, Any] | None = None        # an Endpoint (bridge mode) as a dict
    network_state_dir: str = ""
    bridge: str = ""
    subnet: str = ""
    etc_hosts: str = ""
    etc_resolv: str = ""
    log_path: str = ""                           # "": no log (the none driver)
    log_max_size: int = 0                        # rotate before the log passes this many bytes; 0 = never
    log_max_file: int = 1                        # files kept in all (1: truncated instead)
    log_compress: bool = False                   # gzip the rotated files
    log_format: str = "json"                     # json (json-file's lines) | local (docker local's records)
    log_attrs: list[list[str]] = field(default_factory=list)  # [key, value] in every entry (tag, labels, env)
    hold: bool = False                           # wait for an attach client's release before exec
    restore: Restore | None = None               # set: restore a checkpoint, not start
    masked_paths: list[str] = field(default_factory=lambda: list(MASKED_PATHS))
    readonly_paths: list[str] = field(default_factory=lambda: list(READONLY_PATHS))
    volumes: list[ContainerMount] = field(default_factory=list)   # the container's own mounts
    read_only: bool = False                      # --read-only rootfs
    sysctls: dict[str, str] = field(default_factory=dict)   # namespaced ones (agent/hostconfig.py checks)
    shm_size: int = 0                            # bytes; 0: 64 MiB
    devices: list[DeviceNode] = field(default_factory=list)
    readonly_sysfs: bool = True                  # False with --privileged

    def to_json(self) -> str:
        return dumps(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuntimeSpec:
        d = dict(d)
        d["process"] = ProcessSpec(**d["process"])
        d["mounts"] = [MountSpec(**m) for m in d.get("mounts", [])]
        d["uid_map"] = [IdMap(**m) for m in d.get("uid_map", [])]
        d["gid_map"] = [IdMap(**m) for m in d.get("gid_map", [])]
        d["volumes"] = [ContainerMount(**m) for m in d.get("volumes", [])]
        d["devices"] = [DeviceNode(**n) for n in d.get("devices", [])]
        d["cgroup"] = Resources.from_dict(d.get("cgroup") or {})
        d["restore"] = Restore(**d["restore"]) if d.get("restore") else None
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> RuntimeSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _fields(o: Any) -> Any:
    if is_dataclass(o):
        return o.__dict__
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """JSON of dataclasses, nested or not, as dataclasses.asdict gives it, but nine times as fast
    for a container's record (written at each start and exit): asdict deep-copies every value,
    and an indent sends json to its pure-Python encoder."""
    return json.dumps(obj, default=_fields)


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644, fsync: bool = False) -> None:
    """Write to a temporary name, rename: a reader sees the old file or the new one.

    No fsync unless asked (image layers' records ask): these are the runtime's state files (a container's record, its pid, its exit code),
    written several times per container on the start and exit paths, where an fsync costs ~3 ms
    each here. The rename keeps them whole across a killed process, which is the failure we
    recover from (agent or shim kill -9); like runc's state.json they are not meant to survive a
    power loss (the processes they describe do not either).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
