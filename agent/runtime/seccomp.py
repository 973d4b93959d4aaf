"""The seccomp filter every container process gets, unless run with --security-opt seccomp=unconfined.

It is docker's default profile: an allow-list. A syscall the list does not name fails with EPERM
(docker's defaultErrnoRet), so a syscall newer than the list, or one a container has no business
making (kernel modules, keyrings, mount and namespace changes, clocks, reboot, swap, accounting,
BPF, perf, userfaultfd, NUMA policy, ...), is refused before the kernel looks at it: a bug in code
a container cannot reach cannot be exploited from one. Denying by default is what makes the filter
worth having; a deny-list lets through every syscall added to the kernel after it was written.

What is allowed (ALLOWED, below) is docker's unconditional list plus its conditional rules as they
apply to a container with docker's default capabilities on x86_64: personality() only with the
personas docker lists, socket() for any family but AF_VSOCK, clone() only without namespace flags
(namespaces need CAP_SYS_ADMIN, which containers lack), chroot() (CAP_SYS_CHROOT is a default
capability), arch_prctl() and modify_ldt(). clone3() reports ENOSYS, as docker's profile does:
its flags live in memory a filter cannot read, and libc then falls back to clone(). 32-bit x86
and x32 programs get the same rules. Names this libseccomp or architecture does not know are
skipped (they are then refused, like any syscall the filter does not allow).

The filter is compiled once (libseccomp, through pyseccomp) when the zygote imports this module,
and each container process loads the compiled program with one seccomp(2) call before execve:
process.become loads it first, while still root with every capability, and everything the init
does after it (chdir, prctl, capset, setgroups/setgid/setuid, execve) is on the list.
CRIU can dump and restore filtered processes: it suspends the filter while it works in them, and
the restored processes get it back.
"""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

import pyseccomp as sp

from agent.runtime.spec import DEFAULT_CAPABILITIES

# Docker's default seccomp profile, read from moby/moby's vendored copy of moby/profiles
# (vendor/github.com/moby/profiles/seccomp/default.json, module v0.2.0, moby commit 4ef2385648a8,
# Docker Engine 29.x). Names only, grouped here by what they are for; docker lists them
# alphabetically. Allowed with no condition on their arguments.
ALLOWED = [
    # Processes: create, exec, wait, signal and leave; thread bookkeeping libc does at start.
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "waitpid",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "process_mrelease",
    "getpid", "getppid", "gettid", "getpgid", "getpgrp", "getsid", "setpgid", "setsid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "restart_syscall",
    "get_thread_area", "set_thread_area", "uretprobe",
    # Process attributes a process may change on itself (the kernel checks capabilities).
    "prctl", "capget", "capset", "seccomp", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self",
    # Credentials (the *32 ones are 32-bit x86's).
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid",
    "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32", "setfsuid",
    "setfsuid32", "setfsgid", "setfsgid32", "setgroups", "setgroups32",
    # Signals.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn", "signalfd", "signalfd4", "pause", "alarm",
    # Memory of the process itself.
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages", "membarrier",
    "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "map_shadow_stack", "mseal", "cachestat",
    # File descriptors and I/O.
    "open", "openat", "openat2", "creat", "close", "close_range", "read", "readv", "pread64",
    "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev", "pwritev2", "lseek",
    "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock", "ioctl", "pipe", "pipe2",
    "splice", "tee", "vmsplice", "sendfile", "sendfile64", "copy_file_range", "fallocate",
    "fadvise64", "fadvise64_64", "readahead", "fsync", "fdatasync", "sync", "syncfs",
    "sync_file_range", "truncate", "truncate64", "ftruncate", "ftruncate64",
    # Files and directories: names, metadata, ownership, permissions, times.
    "access", "faccessat", "faccessat2", "stat", "stat64", "lstat", "lstat64", "fstat",
    "fstat64", "fstatat64", "newfstatat", "statx", "statfs", "statfs64", "fstatfs",
    "fstatfs64", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat",
    "mknod", "mknodat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat",
    "symlink", "symlinkat", "unlink", "unlinkat", "readlink", "readlinkat", "umask", "chmod",
    "fchmod", "fchmodat", "fchmodat2", "chown", "chown32", "fchown", "fchown32", "fchownat",
    "lchown", "lchown32", "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
    "name_to_handle_at", "listmount", "statmount",
    # Extended attributes.
    "getxattr", "lgetxattr", "fgetxattr", "getxattrat", "setxattr", "lsetxattr", "fsetxattr",
    "setxattrat", "listxattr", "llistxattr", "flistxattr", "listxattrat", "removexattr",
    "lremovexattr", "fremovexattr", "removexattrat",
    # Waiting for events: poll/select/epoll, eventfd, inotify, fanotify marks, timerfd.
    "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait",
    "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64",
    # Asynchronous I/O (io_uring is not on docker's list).
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64",
    # Sockets (socket() itself is below: not every family); socketcall is 32-bit x86's.
    "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "send", "sendto", "sendmsg", "sendmmsg", "recv",
    "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64", "shutdown", "socketcall",
    # System V IPC and POSIX message queues (the container has its own IPC namespace).
    "ipc", "msgget", "msgctl", "msgsnd", "msgrcv", "semget", "semctl", "semop", "semtimedop",
    "semtimedop_time64", "shmget", "shmctl", "shmat", "shmdt", "mq_open", "mq_unlink",
    "mq_notify", "mq_getsetattr", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64",
    # Futexes, scheduling and priorities.
    "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "getpriority", "setpriority", "ioprio_get", "ioprio_set",
    "getcpu",
    # Clocks and timers: reading them and sleeping (adjtimex/clock_adjtime only read without
    # CAP_SYS_TIME; setting the clock is not on the list).
    "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep", "gettimeofday", "time", "times",
    "adjtimex", "clock_adjtime", "clock_adjtime64", "getitimer", "setitimer", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64",
    # Resource limits and usage, system information, randomness.
    "getrlimit", "setrlimit", "ugetrlimit", "prlimit64", "getrusage", "sysinfo", "uname",
    "getrandom",
    # Other architectures' (riscv64's) entry on docker's common list.
    "riscv_hwprobe",
]

# Docker allows these only on kernels >= 4.8, where ptrace can no longer be used to get around
# seccomp; ptrace is then limited as usual (own children and same-uid processes, Yama).
ALLOWED_SINCE_4_8 = ["ptrace", "process_vm_readv", "process_vm_writev"]

# On x86_64 (docker's "amd64"/"x32"/"x86" entries): thread-pointer setup and LDT programs.
ALLOWED_X86 = ["arch_prctl", "modify_ldt"]

# Docker's capability-gated entries: a syscall is allowed when the container holds the capability.
# Only CAP_SYS_CHROOT is in the default set (spec.DEFAULT_CAPABILITIES), so chroot is the only one
# of these containers get; the others are listed to say why they are refused.
ALLOWED_WITH_CAPABILITY = {
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_ADMIN": [
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
        "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
    ],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}

# personality(2): only these personas (PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and
# 0xffffffff, which queries the current one without changing it).
PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]

AF_VSOCK = 40  # socket(2) for any family but this one (host/guest sockets are not namespaced)

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (NEWTIME is clone3-only):
# clone() is allowed when none of these is set.
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000


def compile_default(capabilities: list[str] | None = None) -> bytes:
    """The filter as a classic BPF program (struct sock_filter[]), for this machine's architectures.
    capabilities: the container's (--cap-add/--cap-drop), which open docker's capability-gated
    entries; the default set if None."""
    caps = DEFAULT_CAPABILITIES if capabilities is None else capabilities
    f = sp.SyscallFilter(sp.ERRNO(errno.EPERM))
    # A binary search on the syscall number instead of a linear scan of ~330 of them: the kernel
    # loads it in about 0.9 ms instead of 1.4 (it runs the filter for every syscall number when it
    # loads it), and syscalls its allow-cache does not cover take fewer steps.
    try:
        f.set_attr(sp.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        pass  # libseccomp < 2.5: the linear program, same rules
    x86 = sp.system_arch() == sp.Arch.X86_64
    # 32-bit and x32 programs get the same rules instead of being killed as a foreign arch.
    for arch in (sp.Arch.X86, sp.Arch.X32):
        if x86 and not f.exist_arch(arch):
            f.add_arch(arch)
    allowed = [*ALLOWED]
    if _kernel_at_least(4, 8):
        allowed += ALLOWED_SINCE_4_8
    if x86:
        allowed += ALLOWED_X86
    for cap, names in ALLOWED_WITH_CAPABILITY.items():
        if cap in caps:
            allowed += names
    for name in allowed:
        _rule(f, sp.ALLOW, name)
    for persona in PERSONALITIES:
        _rule(f, sp.ALLOW, "personality", sp.Arg(0, sp.EQ, persona))
    _rule(f, sp.ALLOW, "socket", sp.Arg(0, sp.NE, AF_VSOCK))
    if "CAP_SYS_ADMIN" not in caps:  # (with it, clone and clone3 are on the list as they are)
        _rule(f, sp.ALLOW, "clone", sp.Arg(0, sp.MASKED_EQ, NAMESPACE_FLAGS, 0))
        _rule(f, sp.ERRNO(errno.ENOSYS), "clone3")
    return _export(f)


def _export(f: sp.SyscallFilter) -> bytes:
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


# docker's profile format: actions, comparison operators, architecture names.
_OPS = {"SCMP_CMP_NE": sp.NE, "SCMP_CMP_LT": sp.LT, "SCMP_CMP_LE": sp.LE, "SCMP_CMP_EQ": sp.EQ,
        "SCMP_CMP_GE": sp.GE, "SCMP_CMP_GT": sp.GT, "SCMP_CMP_MASKED_EQ": sp.MASKED_EQ}
_ARCHES = {"amd64": "SCMP_ARCH_X86_64", "x86_64": "SCMP_ARCH_X86_64", "x86": "SCMP_ARCH_X86", "386": "SCMP_ARCH_X86",
           "x32": "SCMP_ARCH_X32", "arm64": "SCMP_ARCH_AARCH64", "aarch64": "SCMP_ARCH_AARCH64"}


def _action(name: str, errno_ret: int | None, default_errno: int) -> int:
    if name == "SCMP_ACT_ALLOW":
        return int(sp.ALLOW)
    if name == "SCMP_ACT_ERRNO":
        return int(sp.ERRNO(errno_ret if errno_ret is not None else default_errno))
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return int(sp.KILL)
    if name == "SCMP_ACT_KILL_PROCESS":
        return int(sp.KILL_PROCESS)
    if name == "SCMP_ACT_TRAP":
        return int(sp.TRAP)
    if name == "SCMP_ACT_LOG":
        return int(sp.LOG)
    if name == "SCMP_ACT_TRACE":
        return int(sp.TRACE(errno_ret or 0))
    raise ValueError(f"unknown action {name!r}")


def _applies(cond: dict[str, Any] | None, capabilities: list[str], arch: str) -> bool:
    """docker's includes/excludes: all of its caps held, this arch among its arches, a new enough kernel."""
    if not cond:
        return True
    caps: list[str] = list(cond.get("caps") or [])
    arches: list[str] = list(cond.get("arches") or [])
    min_kernel = str(cond.get("minKernel") or "")
    ok = all(c in capabilities or f"CAP_{c}" in capabilities for c in caps)
    if arches:
        ok = ok and any(_ARCHES.get(str(a)) == arch for a in arches)
    if min_kernel:
        parts = min_kernel.split(".")
        ok = ok and _kernel_at_least(int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    return ok


def compile_profile(profile: dict[str, Any], capabilities: list[str]) -> bytes:
    """A docker seccomp profile (its JSON, parsed; agent/hostconfig.py checks its shape) as a
    classic BPF program for this machine."""
    default_errno = int(profile.get("defaultErrnoRet") or errno.EPERM)
    f = sp.SyscallFilter(_action(str(profile["defaultAction"]), None, default_errno))
    arch = "SCMP_ARCH_X86_64" if sp.system_arch() == sp.Arch.X86_64 else ""
    for rule in profile.get("syscalls") or []:
        if not _applies(rule.get("includes"), capabilities, arch):
            continue
        if rule.get("excludes") and _applies(rule.get("excludes"), capabilities, arch):
            continue
        action = _action(rule["action"], rule.get("errnoRet"), default_errno)
        names = rule.get("names") or [rule["name"]]
        args = [sp.Arg(a["index"], _OPS[a["op"]], int(a.get("value", 0)), int(a.get("valueTwo", 0)))
                for a in rule.get("args") or []]
        indexes = [a["index"] for a in rule.get("args") or []]
        # docker: arguments on distinct indexes are one rule (all must match); several on the same
        # index are one rule each (any may match).
        groups = [args] if len(set(indexes)) == len(indexes) else [[a] for a in args]
        for name in names:
            for g in groups or [[]]:
                try:
                    f.add_rule(action, name, *g)
                except OSError as e:
                    # EACCES: the rule is the default action (nothing to add); EINVAL: a syscall this
                    # libseccomp does not know on this architecture, which runc skips as well.
                    if e.errno in (errno.EACCES, errno.EINVAL):
                        continue
                    raise ValueError(f"syscall {name}: {e}") from None
    return _export(f)


def _rule(f: sp.SyscallFilter, action: int, name: str, *args: sp.Arg) -> None:
    try:
        f.add_rule(action, name, *args)
    except OSError:
        pass  # not a syscall this libseccomp knows, or not one on these architectures


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        found = tuple(int(p) for p in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


DEFAULT = compile_default()
