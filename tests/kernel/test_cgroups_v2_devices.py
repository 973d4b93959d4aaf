"""cgroup v2 device rules: the BPF_PROG_TYPE_CGROUP_DEVICE program the v2 driver assembles.

Three ways: an interpreter of the few eBPF instructions the program uses checks that it allows
exactly what the rules allow (against a reference written the obvious way); the v2 driver on a fake
cgroupfs tree attaches one program per create and update; and, as root, the real kernel loads
the program (its verifier accepts it), attaches it to a cgroup of this host's unified hierarchy
(which has no controllers, but a device program needs none) and refuses a process in it the
devices the rules leave out, even after mknod.
"""

from __future__ import annotations

import itertools
import os
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import syscalls as sc
from agent.runtime.cgroups import ALL_DEVICES, DEFAULT_DEVICE_RULES, DeviceRule, Resources, V2Driver, _fs
from agent.runtime.cgroups._devices import ANY
from agent.runtime.cgroups._v2 import devices as v2

UNIFIED = "/sys/fs/cgroup/unified"


def run(prog: bytes, kind: str, major: int, minor: int, access: str) -> int:
    """Execute the program on one request, as the kernel would (only the opcodes program() emits)."""
    ctx = struct.pack("<III", (sum(v2._ACCESS[c] for c in access) << 16) | v2._TYPES[kind], major, minor)
    regs = [0] * 11
    pc = 0
    insns = [struct.unpack("<BBhi", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    for _ in range(10_000):
        code, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        pc += 1
        if code == v2.LDX_MEM_W:
            assert src == v2.R1
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == v2.ALU_AND_K:
            regs[dst] = (regs[dst] & imm) & 0xFFFFFFFF
        elif code == v2.ALU_RSH_K:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif code == v2.ALU_MOV_K:
            regs[dst] = imm & 0xFFFFFFFF
        elif code == v2.ALU_MOV_X:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif code == v2.JMP_JNE_K:
            if regs[dst] != imm:
                pc += off
        elif code == v2.JMP_JNE_X:
            if regs[dst] != regs[src]:
                pc += off
        elif code == v2.JMP_EXIT:
            return regs[v2.R0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc - 1}")
    raise AssertionError("the program did not exit")


def reference(rules: tuple[DeviceRule, ...], kind: str, major: int, minor: int, access: str) -> int:
    for r in rules:
        if r.type == "a":
            return 1
        if (r.type == kind and r.major in (ANY, major) and r.minor in (ANY, minor)
                and set(access) <= set(r.access)):
            return 1
    return 0


RULE_SETS = {
    "default": DEFAULT_DEVICE_RULES,
    "all": ALL_DEVICES,
    "none": (),
    "with a read-only block device": (*DEFAULT_DEVICE_RULES, DeviceRule("b", 7, 0, "r")),
    "mixed": (DeviceRule("c", 10, ANY, "rw"), DeviceRule("b", ANY, 3, "w"), DeviceRule("c", 4, 1, "m")),
}


@pytest.mark.parametrize("rules", RULE_SETS.values(), ids=RULE_SETS.keys())
def test_program_allows_exactly_what_the_rules_allow(rules: tuple[DeviceRule, ...]) -> None:
    prog = v2.program(rules)
    accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"]
    numbers = [0, 1, 3, 5, 7, 9, 10, 136, 200, 1000]
    for kind, major, minor, access in itertools.product("bc", numbers, numbers, accesses):
        got = run(prog, kind, major, minor, access)
        assert got == reference(rules, kind, major, minor, access), (kind, major, minor, access)


def test_default_program_decisions() -> None:
    prog = v2.program(DEFAULT_DEVICE_RULES)
    assert run(prog, "c", 1, 3, "rw") == 1       # /dev/null
    assert run(prog, "c", 136, 4, "rw") == 1     # /dev/pts/4
    assert run(prog, "b", 7, 0, "m") == 1        # mknod of anything
    assert run(prog, "b", 7, 0, "r") == 0        # but no opening a disk
    assert run(prog, "c", 10, 200, "rw") == 0    # nor tun


# --- the driver on a fake tree -----------------------------------------------------------------

@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[V2Driver, list[tuple[str, bytes]]]:
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in (("cgroup.controllers", "hugetlb\n"), ("cgroup.subtree_control", "\n")):
        (root / name).write_text(text)
    real_mkdir = _fs.mkdir

    def mkdir(path: str) -> bool:
        made = real_mkdir(path)
        if made:
            for name, text in (("cgroup.controllers", ""), ("cgroup.subtree_control", "\n"), ("cgroup.procs", "")):
                Path(path, name).write_text(text)
        return made

    attached: list[tuple[str, bytes]] = []
    monkeypatch.setattr(_fs, "mkdir", mkdir)
    monkeypatch.setattr(v2, "attach", lambda path, prog: attached.append((os.path.relpath(path, root), prog)))
    return V2Driver(str(root), str(root), "dockyard-test"), attached


def test_driver_attaches_the_rules_program_on_create_and_update(
        fake: tuple[V2Driver, list[tuple[str, bytes]]]) -> None:
    driver, attached = fake
    driver.create("c1", Resources())
    assert attached == [("dockyard-test/c1", v2.program(DEFAULT_DEVICE_RULES))]
    driver.update("c1", Resources(devices=ALL_DEVICES))
    assert attached[-1] == ("dockyard-test/c1", v2.program(ALL_DEVICES))


def test_a_bad_rule_attaches_nothing(fake: tuple[V2Driver, list[tuple[str, bytes]]]) -> None:
    driver, attached = fake
    with pytest.raises(Exception, match="devices: device type 'x'"):
        driver.create("c1", Resources(devices=(DeviceRule("x"),)))
    assert attached == []
    assert not driver.exists("c1")


# --- the real kernel ---------------------------------------------------------------------------

@pytest.fixture
def unified() -> Iterator[V2Driver]:
    parent = f"dockyard-test-{secrets.token_hex(4)}"
    driver = V2Driver(UNIFIED, UNIFIED, parent)
    try:
        yield driver
    finally:
        for name in driver.list():
            driver.destroy(name)
        with_parent = os.path.join(UNIFIED, parent)
        if os.path.isdir(with_parent):
            os.rmdir(with_parent)


PROBE = r"""
import os, sys
for kind, major, minor in [("c", 1, 3), ("b", 7, 0), ("c", 10, 200)]:
    path = f"/dev/.dockyard-probe-{os.getpid()}-{kind}{major}-{minor}"
    try:
        os.mknod(path, 0o600 | (0o060000 if kind == "b" else 0o020000), os.makedev(major, minor))
    except OSError as e:
        print(kind, major, minor, "mknod", e.strerror); continue
    try:
        os.close(os.open(path, os.O_RDWR)); print(kind, major, minor, "opened")
    except OSError as e:
        print(kind, major, minor, e.strerror)
    finally:
        os.unlink(path)
"""


def _probe_in(driver: V2Driver, name: str) -> list[str]:
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + PROBE],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        driver.add_process(name, p.pid)
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return out.splitlines()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(not os.path.exists(f"{UNIFIED}/cgroup.procs"), reason="needs a cgroup2 hierarchy")
def test_the_kernel_loads_and_enforces_the_program(unified: V2Driver) -> None:
    unified.create("dev", Resources())
    assert _probe_in(unified, "dev") == ["c 1 3 opened", "b 7 0 Operation not permitted",
                                         "c 10 200 Operation not permitted"]
    # An update swaps the program: the old one is detached, not left to deny beside the new one.
    unified.update("dev", Resources(devices=(*DEFAULT_DEVICE_RULES, DeviceRule("b", 7, 0, "rw"))))
    fd = os.open(unified.paths("dev")["unified"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(sc.bpf_prog_query(fd, sc.BPF_CGROUP_DEVICE, "dev")) == 1
    finally:
        os.close(fd)
    assert _probe_in(unified, "dev") == ["c 1 3 opened", "b 7 0 opened", "c 10 200 Operation not permitted"]
    unified.update("dev", Resources(devices=ALL_DEVICES))
    assert _probe_in(unified, "dev") == ["c 1 3 opened", "b 7 0 opened", "c 10 200 opened"]
