"""v2 devices: cgroup v2 has no devices files; a BPF_PROG_TYPE_CGROUP_DEVICE program attached to
the container's cgroup decides each open and mknod, as runc and crun do it.

The program is assembled here from the rules (program()): it reads the request from its context
(struct bpf_cgroup_dev_ctx: access_type = access << 16 | type, major, minor), returns 1 as soon as
one rule allows it and 0 when none does. It is loaded and attached with BPF_F_ALLOW_MULTI, which
keeps whatever an ancestor attached in force too (the kernel asks every program on the path); an
update attaches the new program first and then detaches the old ones, so there is no instant
without rules.
"""

from __future__ import annotations

import contextlib
import os
import struct

from .._devices import ANY, DeviceRule
from .._errors import CgroupError
from .._resources import Resources, Stats

# struct bpf_cgroup_dev_ctx values (linux/bpf.h)
DEV_BLOCK = 1
DEV_CHAR = 2
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# eBPF opcodes (linux/bpf_common.h, linux/bpf.h)
LDX_MEM_W = 0x61   # dst = *(u32 *)(src + off)
ALU_AND_K = 0x54   # (u32) dst &= imm
ALU_RSH_K = 0x74   # (u32) dst >>= imm
ALU_MOV_K = 0xB4   # (u32) dst = imm
ALU_MOV_X = 0xBC   # (u32) dst = src
JMP_JNE_K = 0x55   # if dst != imm: pc += off
JMP_JNE_X = 0x5D   # if dst != src: pc += off
JMP_EXIT = 0x95
R0, R1, R2, R3, R4, R5 = range(6)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn: code, dst_reg:4 | src_reg:4, s16 off, s32 imm (little-endian, as x86-64)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _rule_block(rule: DeviceRule) -> list[tuple[int, int, int, int]]:
    """(code, dst, src, imm) of one rule; every conditional jump skips to the next rule (filled in later)."""
    out = [(JMP_JNE_K, R2, 0, _TYPES[rule.type])]
    access = sum(_ACCESS[c] for c in set(rule.access))
    if access != ACC_MKNOD | ACC_READ | ACC_WRITE:
        # the request must be a subset of the rule's access: (req & allowed) == req
        out += [(ALU_MOV_X, R1, R3, 0), (ALU_AND_K, R1, 0, access), (JMP_JNE_X, R1, R3, 0)]
    if rule.major != ANY:
        out.append((JMP_JNE_K, R4, 0, rule.major))
    if rule.minor != ANY:
        out.append((JMP_JNE_K, R5, 0, rule.minor))
    return [*out, (ALU_MOV_K, R0, 0, 1), (JMP_EXIT, 0, 0, 0)]


def program(rules: tuple[DeviceRule, ...]) -> bytes:
    """The eBPF program that allows exactly what the rules allow and denies the rest."""
    if any(rule.type == "a" for rule in rules):
        # (the verifier refuses a program with code that no path reaches)
        return insn(ALU_MOV_K, R0, imm=1) + insn(JMP_EXIT)
    code = [
        insn(LDX_MEM_W, R2, R1, 0), insn(ALU_AND_K, R2, imm=0xFFFF),   # R2 = type
        insn(LDX_MEM_W, R3, R1, 0), insn(ALU_RSH_K, R3, imm=16),       # R3 = access
        insn(LDX_MEM_W, R4, R1, 4),                                     # R4 = major
        insn(LDX_MEM_W, R5, R1, 8),                                     # R5 = minor
    ]
    for rule in rules:
        block = _rule_block(rule)
        for i, (op, dst, src, imm) in enumerate(block):
            off = len(block) - i - 1 if op in (JMP_JNE_K, JMP_JNE_X) else 0  # to the next block
            code.append(insn(op, dst, src, off, imm))
    code += [insn(ALU_MOV_K, R0, imm=0), insn(JMP_EXIT)]
    return b"".join(code)


def attach(path: str, prog: bytes) -> None:
    """Load prog and make it the device program of the cgroup at path (replacing ours before it).
    Tests on a fake cgroupfs tree replace this function."""
    from agent.runtime import syscalls as sc

    try:
        dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"open {path}: {e.strerror}", op="devices", path=path, errno=e.errno) from e
    try:
        old = sc.bpf_prog_query(dirfd, sc.BPF_CGROUP_DEVICE, path)
        fd = sc.bpf_prog_load(sc.BPF_PROG_TYPE_CGROUP_DEVICE, prog)
        try:
            sc.bpf_prog_attach(dirfd, fd, sc.BPF_CGROUP_DEVICE, sc.BPF_F_ALLOW_MULTI, path)
        finally:
            os.close(fd)
        for prog_id in old:
            with contextlib.suppress(FileNotFoundError):  # (gone already)
                ofd = sc.bpf_prog_get_fd_by_id(prog_id)
                try:
                    sc.bpf_prog_detach(dirfd, ofd, sc.BPF_CGROUP_DEVICE, path)
                finally:
                    os.close(ofd)
    except OSError as e:
        raise CgroupError(f"device rules of {path}: {e.strerror or e}", op="devices", path=path,
                          errno=e.errno) from e
    finally:
        os.close(dirfd)


class Devices:
    """Not a controller in cgroup.controllers: the driver applies it to every container."""

    name = "devices"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        attach(path, program(r.devices))

    def stat(self, path: str, s: Stats) -> None:
        pass
