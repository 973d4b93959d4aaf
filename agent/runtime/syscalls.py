"""Raw Linux syscalls the runtime needs and Python 3.11 lacks, in one ctypes module.

Every wrapper raises OSError with the real errno and names the operation and path, so an error
from deep inside container setup still says what failed ("mount overlay on /x: EINVAL").
Call these only in a child process made for the job (STYLE.md: never in the asyncio daemon).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Namespace flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMESPACE_FLAGS = {
    "mnt": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "cgroup": CLONE_NEWCGROUP,
}

# mount(2) flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

# prctl(2)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_clone = 56
SYS_pivot_root = 155
SYS_setns = 308
SYS_pidfd_open = 434
SYS_capset = 126
SYS_capget = 125
SYS_seccomp = 317
SYS_rt_sigaction = 13
SECCOMP_SET_MODE_FILTER = 1

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        f"mount {fstype or source or ''} on {target}",
        target,
    )


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def clone(flags: int) -> int:
    """fork(2) straight into new namespaces: returns the child's pid, 0 in the child.

    One process instead of fork + unshare + fork (a pid namespace only applies to children). No
    stack is given, so the child runs on a copy of ours, as after fork. Python's after-fork
    bookkeeping does not run in the child: use it only from a single-threaded process, and have the
    child exec or _exit (as the container init does).
    """
    import signal

    return _check(_libc.syscall(SYS_clone, flags | signal.SIGCHLD, 0, 0, 0, 0), f"clone({flags:#x})")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes) -> None:
    """Install a classic BPF program (struct sock_filter[], 8 bytes each) as this thread's seccomp
    filter; it is inherited across fork and kept across execve. Needs no_new_privs or CAP_SYS_ADMIN."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)), "seccomp")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(SYS_setns, fd, nstype), f"setns(fd {fd})")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), f"pivot_root {new_root}", new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname {name!r}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def pidfd_open(pid: int) -> int:
    """A descriptor that names exactly this process: immune to pid reuse."""
    return _check(_libc.syscall(SYS_pidfd_open, pid, 0), f"pidfd_open({pid})")


# Capabilities: the bounding set is dropped with prctl, the other sets with capset (v3, 64 bits).
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST_CAP = 40


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return CAP_LAST_CAP


def drop_bounding(keep: set[int]) -> None:
    for cap in range(last_cap() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


def capset(effective: set[int], permitted: set[int], inheritable: set[int]) -> None:
    def words(caps: set[int]) -> tuple[int, int]:
        v = sum(1 << c for c in caps)
        return v & 0xFFFFFFFF, v >> 32

    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    e, p, i = words(effective), words(permitted), words(inheritable)
    data = struct.pack("IIIIII", e[0], p[0], i[0], e[1], p[1], i[1])
    hbuf = ctypes.create_string_buffer(header)
    dbuf = ctypes.create_string_buffer(data)
    _check(_libc.syscall(SYS_capset, hbuf, dbuf), "capset")


def clear_ambient() -> None:
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass


def default_signals() -> None:
    """Every signal's disposition back to SIG_DFL (but KILL and STOP, which have no other), with the
    raw rt_sigaction: glibc's sigaction refuses its own 32 and 33, which a parent that is no glibc
    program may have left ignored, and an ignored signal survives execve."""
    sa = ctypes.create_string_buffer(32)   # struct kernel_sigaction: handler 0 = SIG_DFL, no flags, empty mask
    for sig in range(1, 65):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            _libc.syscall(SYS_rt_sigaction, sig, sa, None, 8)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


# Network interface flags through the classic ioctls: no netlink library needed, so a fresh
# network namespace (--network none) gets its loopback up in microseconds.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def set_interface_up(name: str) -> None:
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh22x", name.encode(), 0)
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
            flags = struct.unpack("16sh22x", res)[1]
            if not flags & IFF_UP:
                fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", name.encode(), flags | IFF_UP))
        except OSError as e:
            raise OSError(e.errno, f"set {name} up: {os.strerror(e.errno or 0)}", name) from None


# An IPv4 address and a default route, the same way (SIOCSIFADDR, SIOCSIFNETMASK, SIOCADDRT): in a
# container's fresh namespace that is all there is to set, and a netlink session through pyroute2
# costs about 10 ms of a start (measured: BENCHMARKS.md).
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCADDRT = 0x890B
RTF_UP = 0x1
RTF_GATEWAY = 0x2


def _sockaddr_in(addr: str) -> bytes:
    import socket

    return struct.pack("=H2s4s8x", socket.AF_INET, b"\0\0", socket.inet_aton(addr))


def set_ipv4_address(name: str, address: str, prefixlen: int) -> None:
    import fcntl
    import socket

    mask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for req, value, what in ((SIOCSIFADDR, address, "address"), (SIOCSIFNETMASK, mask, "netmask")):
            try:
                fcntl.ioctl(s.fileno(), req, struct.pack("16s16s8x", name.encode(), _sockaddr_in(value)))
            except OSError as e:
                raise OSError(e.errno, f"set {name} {what} {value}: {os.strerror(e.errno or 0)}", name) from None


# struct rtentry on 64-bit Linux: pad, dst, gateway, genmask, flags, pad, pad, pad, metric, dev,
# mtu, window, irtt (120 bytes).
_RTENTRY = struct.Struct("=Q16s16s16sHh4xQQh6xQQQH6x")


def add_default_route(gateway: str) -> None:
    """`ip route add default via GATEWAY`; one that is already there is left alone."""
    import errno
    import fcntl
    import socket

    any_ = _sockaddr_in("0.0.0.0")
    rt = _RTENTRY.pack(0, any_, _sockaddr_in(gateway), any_, RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCADDRT, rt)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise OSError(e.errno, f"default route via {gateway}: {os.strerror(e.errno or 0)}") from None



# Idmapped mounts (Linux 5.12; overlayfs takes idmapped layers since 5.19): a --userns remap
# container sees the image's files owned by its own root, and its writes land owned by host root.
SYS_open_tree = 428
SYS_move_mount = 429
SYS_mount_setattr = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
_MOUNT_ATTR = struct.Struct("=QQQQ")  # attr_set, attr_clr, propagation, userns_fd


def setfsuid(uid: int) -> None:
    _libc.setfsuid(uid)


def setfsgid(gid: int) -> None:
    _libc.setfsgid(gid)


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Bind source at target, with the ids of userns_fd's mapping (a file owned by host uid 0 is
    seen as the mapping's uid for 0, and a write as that uid lands as 0)."""
    fd = _check(_libc.syscall(SYS_open_tree, AT_FDCWD, _b(source), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
                f"open_tree {source}", source)
    try:
        attr = ctypes.create_string_buffer(_MOUNT_ATTR.pack(MOUNT_ATTR_IDMAP, 0, 0, userns_fd), _MOUNT_ATTR.size)
        _check(_libc.syscall(SYS_mount_setattr, fd, b"", AT_EMPTY_PATH, attr, ctypes.c_size_t(_MOUNT_ATTR.size)),
               f"mount_setattr idmap {source}", source)
        _check(_libc.syscall(SYS_move_mount, fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
               f"move_mount {source} to {target}", target)
    finally:
        os.close(fd)


# A container's own mounts (volumes, binds): cloned as detached trees before pivot_root, while the
# host's paths are still in view, and attached under the new root after it (agent/runtime/mounts.py).
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_T_EMPTY_PATH = 0x40


def open_tree(path: str, recursive: bool = True) -> int:
    """A detached copy of the mount tree at `path` (a bind not yet attached anywhere): an fd."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(SYS_open_tree, AT_FDCWD, _b(path), flags), f"open_tree {path}", path)


def set_tree_readonly(fd: int) -> None:
    """Every mount of a detached tree read-only (mount_setattr, recursively)."""
    attr = ctypes.create_string_buffer(_MOUNT_ATTR.pack(MOUNT_ATTR_RDONLY, 0, 0, 0), _MOUNT_ATTR.size)
    _check(_libc.syscall(SYS_mount_setattr, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, attr,
                         ctypes.c_size_t(_MOUNT_ATTR.size)), "mount_setattr read-only")


def move_mount(fd: int, target: str) -> None:
    """Attach the detached tree `fd` at `target`."""
    _check(_libc.syscall(SYS_move_mount, fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount to {target}", target)


# Peer groups by descriptor (Linux 5.15): CRIU's restore puts a bind that shared the host source's
# peer group into a group of its own; agent/checkpoint/sharing.py puts it back with these.
MOVE_MOUNT_SET_GROUP = 0x100


def set_propagation(fd: int, flag: int) -> None:
    """MS_PRIVATE, MS_SHARED or MS_SLAVE on the one mount `fd` is the root of (not its children);
    an attached mount must be in this process's mount namespace."""
    attr = ctypes.create_string_buffer(_MOUNT_ATTR.pack(0, 0, flag, 0), _MOUNT_ATTR.size)
    _check(_libc.syscall(SYS_mount_setattr, fd, b"", AT_EMPTY_PATH, attr, ctypes.c_size_t(_MOUNT_ATTR.size)),
           f"mount_setattr propagation {flag:#x}")


def join_peer_group(source_fd: int, target_fd: int) -> None:
    """Make the private mount `target_fd` a peer of the mount `source_fd` (a slave of its master
    too, if it has one): same filesystem, and the target's root at or below the source's."""
    _check(_libc.syscall(SYS_move_mount, source_fd, b"", target_fd, b"",
                         MOVE_MOUNT_SET_GROUP | MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
           "move_mount set-group")
# openat2(2) (Linux 5.6): resolve a path inside a directory fd with the kernel's own checks, so no
# symlink at any component (RESOLVE_NO_SYMLINKS) and no `..` above it (RESOLVE_BENEATH) can lead
# elsewhere. Unlike the wrappers above, it touches no process-wide state: safe in any process.
SYS_openat2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_OPEN_HOW = struct.Struct("=QQQ")  # flags, mode, resolve


_hows: dict[tuple[int, int, int], ctypes.Array[ctypes.c_char]] = {}  # a layer apply uses two or three
_HOW_SIZE = ctypes.c_size_t(_OPEN_HOW.size)


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """A new descriptor for ``path`` below ``dir_fd``; OSError with the kernel's errno otherwise
    (ELOOP: a symlink on the way, EXDEV: it would leave dir_fd, ENOSYS: a kernel before 5.6)."""
    key = (flags, mode, resolve)
    how = _hows.get(key)
    if how is None:
        how = _hows[key] = ctypes.create_string_buffer(_OPEN_HOW.pack(flags, mode, resolve), _OPEN_HOW.size)
    ret = _libc.syscall(SYS_openat2, dir_fd, os.fsencode(path), how, _HOW_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(ret)


# bpf(2): load a program and attach it to a cgroup (cgroup v2's device access control).
SYS_bpf = 321
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_BPF_ATTR_SIZE = 128  # the fields we use; the kernel zero-fills the rest of its union


def _bpf(cmd: int, attr: bytes, what: str, path: str | None = None) -> int:
    buf = ctypes.create_string_buffer(attr.ljust(_BPF_ATTR_SIZE, b"\0"), _BPF_ATTR_SIZE)
    return _check(_libc.syscall(SYS_bpf, cmd, buf, _BPF_ATTR_SIZE), what, path)


def bpf_prog_load(prog_type: int, insns: bytes, license: str = "Apache") -> int:
    """Load eBPF instructions (8 bytes each); returns the program's fd (close-on-exec). When the
    verifier refuses, the OSError carries its log."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(65536)

    def attr(log_level: int) -> bytes:
        return struct.pack("=IIQQIIQ", prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
                           log_level, len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0)

    try:
        return _bpf(BPF_PROG_LOAD, attr(0), "bpf prog load")
    except OSError as e:
        if e.errno not in (1, 13, 22):  # EPERM, EACCES, EINVAL: ask the verifier why
            raise
        try:
            _bpf(BPF_PROG_LOAD, attr(1), "bpf prog load")
        except OSError:
            pass
        raise OSError(e.errno, f"bpf prog load: {os.strerror(e.errno or 0)}: "
                      f"{log.value.decode(errors='replace').strip()[-500:]}") from None


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int, path: str) -> None:
    _bpf(BPF_PROG_ATTACH, struct.pack("=IIII", target_fd, prog_fd, attach_type, flags), "bpf prog attach", path)


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int, path: str) -> None:
    _bpf(BPF_PROG_DETACH, struct.pack("=III", target_fd, prog_fd, attach_type), "bpf prog detach", path)


def bpf_prog_query(target_fd: int, attach_type: int, path: str) -> list[int]:
    """Ids of the programs attached to this cgroup itself (not its ancestors)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(struct.pack("=IIIIQI", target_fd, attach_type, 0, 0, ctypes.addressof(ids),
                                                   64).ljust(_BPF_ATTR_SIZE, b"\0"), _BPF_ATTR_SIZE)
    _check(_libc.syscall(SYS_bpf, BPF_PROG_QUERY, attr, _BPF_ATTR_SIZE), "bpf prog query", path)
    count = struct.unpack_from("=I", attr.raw, 24)[0]
    return list(ids[:count])


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("=I", prog_id), f"bpf prog get fd by id {prog_id}")
