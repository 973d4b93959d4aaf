"""The seccomp filter every container process gets, unless run with --security-opt seccomp=unconfined.

What it refuses (EPERM) is what docker's default profile documents as blocked for a container
without extra capabilities: kernel modules and keyrings, clocks, mount and namespace changes,
reboot, swap, accounting, BPF, perf, userfaultfd, NUMA policy and the like. Docker's profile is an
allow-list; this one allows by default and refuses those, so a syscall newer than the list is
allowed rather than refused. clone() and unshare() creating namespaces are refused (docker: only
with CAP_SYS_ADMIN, which containers do not have); clone3() reports ENOSYS, as docker's profile
does, because its flags live in memory a filter cannot read and libc then falls back to clone().

The filter is compiled once (libseccomp, through pyseccomp) when the zygote imports this module,
and each container process loads the compiled program with one seccomp(2) call before execve.
CRIU can dump and restore filtered processes: it suspends the filter while it works in them.
"""

from __future__ import annotations

import errno
import tempfile

import pyseccomp as sp

BLOCKED = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "mount_setattr",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "reboot",
    "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapon", "swapoff", "sysfs",
    "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
    "syslog",
]

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (NEWTIME is clone3-only)
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000


def compile_default() -> bytes:
    """The filter as a classic BPF program (struct sock_filter[]), for this machine's architectures."""
    f = sp.SyscallFilter(sp.ALLOW)
    # 32-bit and x32 programs get the same rules instead of being killed as a foreign arch.
    for arch in (sp.Arch.X86, sp.Arch.X32):
        if sp.system_arch() == sp.Arch.X86_64 and not f.exist_arch(arch):
            f.add_arch(arch)
    for name in BLOCKED:
        try:
            f.add_rule(sp.ERRNO(errno.EPERM), name)
        except OSError:
            pass  # not a syscall on this architecture (vm86 on x86_64, ...)
    # clone(flags, ...): flags are the first argument; one rule per flag, as docker's profile does.
    for bit in _bits(NAMESPACE_FLAGS):
        f.add_rule(sp.ERRNO(errno.EPERM), "clone", sp.Arg(0, sp.MASKED_EQ, bit, bit))
    f.add_rule(sp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(mask.bit_length()) if mask >> i & 1]


DEFAULT = compile_default()
