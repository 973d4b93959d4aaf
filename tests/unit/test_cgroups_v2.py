"""The cgroup v2 driver against a fake cgroupfs tree in tmp_path, and Resources validation.

This host is cgroup v1 (its v2 hierarchy has only hugetlb), so the kernel is played by FakeKernel:
mkdir fills a new directory with the interface files a real cgroup2 directory has (controllers
as delegated by the parent's cgroup.subtree_control), every write is recorded in order, a write to
cgroup.freeze flips "frozen" in cgroup.events a little later, and cgroup.kill empties cgroup.procs.
The driver opens files without O_CREAT, so writing a file the kernel would not have fails here too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.cgroups import (
    DEFAULT_DEVICE_RULES,
    MIB,
    CgroupError,
    DeviceRate,
    Resources,
    Stats,
    V1Driver,
    V2Driver,
    _fs,
)
from agent.runtime.cgroups._detect import _detect, nesting_parent
from agent.runtime.cgroups._v2 import devices as v2_devices
from agent.runtime.cgroups._v2.cpu import shares_to_weight
from agent.runtime.cgroups._v2.io import blkio_to_io_weight
from agent.runtime.cgroups._v2.memory import swap_max

PARENT = "dockyard-test"

CONTROLLER_FILES = {
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.stat": "anon 0\nfile 0\ninactive_file 0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "io": {"io.weight": "default 100\n", "io.max": "", "io.stat": ""},
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-1\n"},
}


class FakeKernel:
    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> None:
        self.root = root
        self.writes: list[tuple[str, str]] = []
        self.programs: list[tuple[str, bytes]] = []
        self.bfq = False
        self.freeze_delay = 0.05
        self.stuck = False
        root.mkdir()
        (root / "cgroup.controllers").write_text(controllers + "\n")
        (root / "cgroup.subtree_control").write_text("\n")
        (root / "cgroup.procs").write_text("1\n")
        (root / "cpu.stat").write_text("usage_usec 0\nuser_usec 0\nsystem_usec 0\n")

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def populate(self, path: str) -> None:
        d = Path(path)
        parent_on = (d.parent / "cgroup.subtree_control").read_text().replace("+", "").split()
        files = {
            "cgroup.controllers": " ".join(parent_on) + "\n",
            "cgroup.subtree_control": "\n",
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.freeze": "0\n",
            "cgroup.kill": "",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        for c in parent_on:
            files.update(CONTROLLER_FILES.get(c, {}))
        if "io" in parent_on and self.bfq:
            files["io.bfq.weight"] = "100\n"
        for name, text in files.items():
            (d / name).write_text(text)

    def on_write(self, path: str, value: str) -> None:
        self.writes.append((self.rel(path), value))
        d = Path(path).parent
        name = os.path.basename(path)
        if name == "cgroup.freeze" and not self.stuck:
            events = f"populated 0\nfrozen {value}\n"
            threading.Timer(self.freeze_delay, (d / "cgroup.events").write_text, (events,)).start()
        elif name == "cgroup.kill":
            (d / "cgroup.procs").write_text("")
        elif name == "cgroup.procs":
            (d / "cgroup.procs").write_text(value + "\n")  # the real file lists every member


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "cgroup")
    real_mkdir, real_write = _fs.mkdir, _fs.write

    def mkdir(path: str) -> bool:
        made = real_mkdir(path)
        if made:
            k.populate(path)
        return made

    def write(path: str, value: str) -> None:
        real_write(path, value)
        k.on_write(path, value)

    monkeypatch.setattr(_fs, "mkdir", mkdir)
    monkeypatch.setattr(_fs, "write", write)
    monkeypatch.setattr(_fs, "remove_dir", shutil.rmtree)  # a real rmdir takes the interface files along
    # bpf(2) cannot attach to a directory of a fake tree: record the device program instead.
    monkeypatch.setattr(v2_devices, "attach", lambda path, prog: k.programs.append((k.rel(path), prog)))
    return k


@pytest.fixture
def driver(kernel: FakeKernel) -> V2Driver:
    return V2Driver(str(kernel.root), str(kernel.root), PARENT, freeze_timeout=2.0)


def block_device() -> tuple[str, str]:
    """Some block device of this host and its MAJ:MIN; only os.stat is done on it."""
    for name in sorted(os.listdir("/sys/block")):
        dev = f"/dev/{name}"
        if os.path.exists(dev):
            st = os.stat(dev)
            return dev, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    pytest.skip("no block device")


def contents(kernel: FakeKernel, name: str, file: str) -> str:
    return (kernel.root / PARENT / name / file).read_text().strip()


def test_create_writes_exactly_these_files_for_full_resources(kernel: FakeKernel, driver: V2Driver) -> None:
    dev, majmin = block_device()
    driver.create(
        "c1",
        Resources(
            memory=512 * MIB,
            memory_swap=768 * MIB,
            nano_cpus=1_500_000_000,
            cpu_shares=512,
            pids_limit=100,
            blkio_weight=300,
            device_read_bps=(DeviceRate(dev, 1 * MIB),),
            device_write_bps=(DeviceRate(dev, 2 * MIB),),
        ),
    )
    c = f"{PARENT}/c1"
    assert kernel.writes == [
        # controllers delegated down from the mount root, ours only (not hugetlb, rdma, ...)
        ("cgroup.subtree_control", "+memory +cpu +pids +io +cpuset"),
        (f"{PARENT}/cgroup.subtree_control", "+memory +cpu +pids +io +cpuset"),
        (f"{c}/memory.swap.max", str(256 * MIB)),  # v2 counts swap alone: 768 - 512 MiB
        (f"{c}/memory.max", str(512 * MIB)),
        (f"{c}/cpu.max", "150000 100000"),
        (f"{c}/cpu.weight", "20"),  # 1 + (512 - 2) * 9999 // 262142
        (f"{c}/pids.max", "100"),
        (f"{c}/io.weight", "default 2930"),  # 1 + (300 - 10) * 9999 // 990
        (f"{c}/io.max", f"{majmin} rbps={MIB} wbps={2 * MIB}"),
    ]
    assert kernel.programs == [(c, v2_devices.program(DEFAULT_DEVICE_RULES))]  # docker's device rules
    assert driver.exists("c1")
    assert driver.list() == ["c1"]
    assert set(driver.paths("c1").values()) == {str(kernel.root / c)}


def test_cpuset_written_only_when_set(kernel: FakeKernel, driver: V2Driver) -> None:
    driver.create("plain", Resources())
    assert not [w for w in kernel.writes if "cpuset." in w[0]]
    driver.create("pinned", Resources(cpuset_cpus="0", cpuset_mems="0"))
    assert contents(kernel, "pinned", "cpuset.cpus") == "0"
    assert contents(kernel, "pinned", "cpuset.mems") == "0"


def test_cpuset_and_swappiness_refused_by_name(kernel: FakeKernel, driver: V2Driver) -> None:
    (kernel.root / "cpuset.cpus.effective").write_text("0-1\n")
    with pytest.raises(CgroupError, match=r"^cpuset_cpus: requested 0-3 are not available - available: 0-1"):
        driver.create("c", Resources(cpuset_cpus="0-3"))
    with pytest.raises(CgroupError, match=r"^cpuset_cpus: invalid value '1-0'"):
        driver.create("c", Resources(cpuset_cpus="1-0"))
    with pytest.raises(CgroupError, match=r"^memory_swappiness: not supported with cgroup v2"):
        driver.create("c", Resources(memory_swappiness=40))
    assert not driver.exists("c")


def test_create_again_does_not_delegate_twice(kernel: FakeKernel, driver: V2Driver) -> None:
    driver.create("c1", Resources())
    kernel.writes.clear()
    driver.create("c1", Resources(pids_limit=7))
    assert not [w for w in kernel.writes if w[0].endswith("subtree_control")]
    assert contents(kernel, "c1", "pids.max") == "7"


def test_bfq_weight_takes_the_blkio_scale_unchanged(kernel: FakeKernel, driver: V2Driver) -> None:
    kernel.bfq = True
    driver.create("b", Resources(blkio_weight=300))
    assert (f"{PARENT}/b/io.bfq.weight", "300") in kernel.writes
    assert not [w for w in kernel.writes if w[0].endswith("io.weight")]


def test_docker_swap_default_and_unlimited(kernel: FakeKernel, driver: V2Driver) -> None:
    driver.create("s", Resources(memory=64 * MIB))
    assert contents(kernel, "s", "memory.swap.max") == str(64 * MIB)  # docker: swap = memory by default
    driver.update("s", Resources(memory=64 * MIB, memory_swap=-1))
    assert contents(kernel, "s", "memory.swap.max") == "max"
    driver.update("s", Resources(memory=64 * MIB, memory_swap=64 * MIB))
    assert contents(kernel, "s", "memory.swap.max") == "0"


def test_update_to_defaults_resets_every_limit(kernel: FakeKernel, driver: V2Driver) -> None:
    dev, majmin = block_device()
    driver.create(
        "u",
        Resources(memory=64 * MIB, nano_cpus=10**9, cpu_shares=2048, pids_limit=9, blkio_weight=10,
                  device_read_bps=(DeviceRate(dev, 5000),)),
    )  # fmt: skip
    kernel.writes.clear()
    driver.update("u", Resources())
    c = f"{PARENT}/u"
    assert kernel.writes == [
        (f"{c}/memory.swap.max", "max"),
        (f"{c}/memory.max", "max"),
        (f"{c}/cpu.max", "max 100000"),
        (f"{c}/cpu.weight", "100"),
        (f"{c}/pids.max", "max"),
        (f"{c}/io.weight", "default 100"),
        (f"{c}/io.max", f"{majmin} rbps=max wbps=max"),  # the old throttle is lifted explicitly
    ]


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(0, 100), (2, 1), (1024, 39), (262144, 10000)],
)
def test_shares_to_weight_as_runc(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


@pytest.mark.parametrize(("blkio", "io"), [(0, 100), (10, 1), (500, 4950), (1000, 10000)])
def test_blkio_to_io_weight_as_runc(blkio: int, io: int) -> None:
    assert blkio_to_io_weight(blkio) == io


@pytest.mark.parametrize(
    ("memory", "memory_swap", "want"),
    [
        (0, 0, "max"),
        (64 * MIB, 0, str(64 * MIB)),
        (64 * MIB, -1, "max"),
        (64 * MIB, 100 * MIB, str(36 * MIB)),
    ],
)
def test_swap_conversion(memory: int, memory_swap: int, want: str) -> None:
    assert swap_max(Resources(memory=memory, memory_swap=memory_swap)) == want


def test_freeze_waits_for_cgroup_events(kernel: FakeKernel, driver: V2Driver) -> None:
    driver.create("f", Resources())
    kernel.freeze_delay = 0.2
    start = time.monotonic()
    driver.freeze("f")
    assert time.monotonic() - start >= 0.15  # returned only once "frozen 1" showed up
    assert contents(kernel, "f", "cgroup.freeze") == "1"
    assert driver.frozen("f")
    driver.thaw("f")
    assert contents(kernel, "f", "cgroup.freeze") == "0"
    assert not driver.frozen("f")


def test_freeze_that_never_completes_names_the_file(kernel: FakeKernel) -> None:
    d = V2Driver(str(kernel.root), str(kernel.root), PARENT, freeze_timeout=0.2)
    d.create("f", Resources())
    kernel.stuck = True
    with pytest.raises(CgroupError, match=r"^freeze .*/dockyard-test/f/cgroup.events: timed out after 0.2s$"):
        d.freeze("f")


def test_stats_and_oom_kills_come_from_the_kernel_files(kernel: FakeKernel, driver: V2Driver) -> None:
    driver.create("st", Resources(memory=256 * MIB, pids_limit=50))
    c = kernel.root / PARENT / "st"
    (c / "cpu.stat").write_text(
        "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
        "nr_periods 40\nnr_throttled 12\nthrottled_usec 250000\nnr_bursts 0\nburst_usec 0\n"
    )
    (c / "memory.current").write_text(f"{100 * MIB}\n")
    (c / "memory.peak").write_text(f"{120 * MIB}\n")
    (c / "memory.stat").write_text(
        f"anon {60 * MIB}\nfile {30 * MIB}\nkernel 1000\nactive_file {10 * MIB}\ninactive_file {20 * MIB}\n"
    )
    (c / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\noom_group_kill 0\n")
    (c / "pids.current").write_text("4\n")
    (c / "io.stat").write_text(
        "254:0 rbytes=1000 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n7:0 rbytes=10 wbytes=20 rios=1 wios=1\n"
    )
    assert driver.stats("st") == Stats(
        cpu_usage_ns=1_500_000_000,
        cpu_user_ns=1_000_000_000,
        cpu_system_ns=500_000_000,
        nr_periods=40,
        nr_throttled=12,
        throttled_ns=250_000_000,
        memory_usage=100 * MIB,
        memory_max_usage=120 * MIB,
        memory_limit=256 * MIB,
        memory_rss=60 * MIB,
        memory_cache=30 * MIB,
        working_set=80 * MIB,
        pids_current=4,
        pids_limit=50,
        oom_kills=2,
        blkio_read_bytes=1010,
        blkio_write_bytes=2020,
    )
    assert driver.oom_kills("st") == 2


def test_add_process_and_destroy_with_cgroup_kill(kernel: FakeKernel, driver: V2Driver) -> None:
    driver.create("d", Resources())
    # a pid that cannot belong to a live process: the fake never signals it, but be safe
    driver.add_process("d", 4194304)
    assert driver.procs("d") == [4194304]
    kernel.writes.clear()
    driver.destroy("d")
    assert kernel.writes == [(f"{PARENT}/d/cgroup.kill", "1")]
    assert not driver.exists("d")
    assert driver.list() == []
    driver.destroy("d")  # idempotent


def test_destroy_without_cgroup_kill_freezes_kills_thaws(kernel: FakeKernel, driver: V2Driver) -> None:
    """Kernels before 5.14 have no cgroup.kill: freeze, SIGKILL each member, thaw, wait for them to go."""
    driver.create("old", Resources())
    c = kernel.root / PARENT / "old"
    (c / "cgroup.kill").unlink()
    p = subprocess.Popen(["sleep", "60"])
    try:
        (c / "cgroup.procs").write_text(f"{p.pid}\n")

        def exit_leaves_cgroup() -> None:  # what the kernel does when a member exits
            p.wait()
            (c / "cgroup.procs").write_text("")

        reaper = threading.Thread(target=exit_leaves_cgroup)
        reaper.start()
        kernel.writes.clear()
        driver.destroy("old")
        reaper.join(timeout=5)
        assert p.returncode == -signal.SIGKILL
        assert kernel.writes == [(f"{PARENT}/old/cgroup.freeze", "1"), (f"{PARENT}/old/cgroup.freeze", "0")]
        assert not driver.exists("old")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_controller_not_delegated_is_an_error_and_create_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = FakeKernel(tmp_path / "cg", controllers="cpu memory pids")  # no io here
    real_mkdir = _fs.mkdir

    def mkdir(path: str) -> bool:
        made = real_mkdir(path)
        if made:
            k.populate(path)
        return made

    monkeypatch.setattr(_fs, "mkdir", mkdir)
    monkeypatch.setattr(_fs, "remove_dir", shutil.rmtree)
    monkeypatch.setattr(v2_devices, "attach", lambda path, prog: k.programs.append((k.rel(path), prog)))
    d = V2Driver(str(k.root), str(k.root), PARENT)
    with pytest.raises(CgroupError, match=r"^apply .*/dockyard-test/x: controllers io are not enabled"):
        d.create("x", Resources(blkio_weight=500))
    assert not (k.root / PARENT).exists()  # parent and child made by this call are gone again
    d.create("y", Resources(memory=64 * MIB))  # what does not need io works
    assert (k.root / PARENT / "y" / "memory.max").read_text() == str(64 * MIB)


def test_writing_a_file_the_kernel_lacks_names_the_operation_and_path(tmp_path: Path) -> None:
    with pytest.raises(CgroupError) as e:
        _fs.write(str(tmp_path / "cpu.max"), "max 100000")
    assert str(e.value) == f"write 'max 100000' to {tmp_path}/cpu.max: No such file or directory"
    assert e.value.op == "write 'max 100000' to"
    assert e.value.path == f"{tmp_path}/cpu.max"


# detect


def _proc(tmp_path: Path, cgroup: str, mountinfo: str = "") -> tuple[str, str]:
    (tmp_path / "cgroup").write_text(cgroup)
    (tmp_path / "mountinfo").write_text(mountinfo)
    return str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")


def test_detect_v2_nests_under_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    files = _proc(tmp_path, "0::/system.slice/agent.service/runtime\n")
    d = _detect(str(root), None, *files)
    assert isinstance(d, V2Driver)
    assert d.paths("x")["memory"] == f"{root}/system.slice/agent.service/runtime/dockyard/x"
    d = _detect(str(root), "/custom/parent", *files)
    assert isinstance(d, V2Driver)
    assert d.paths("x")["unified"] == f"{root}/custom/parent/x"


def test_nesting_parent_on_v2_skips_cgroups_with_processes(tmp_path: Path) -> None:
    """An agent started from an SSH login on a systemd host (found on the VMs' kernel): its own
    session scope holds sshd and the shell, so controllers cannot be delegated below it (EBUSY).
    The containers go under the nearest ancestor without processes, here the user's slice."""
    root = tmp_path / "fs"
    scope = root / "user.slice" / "user-1000.slice" / "session-3.scope"
    scope.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.procs").write_text("1\n")  # the root may hold processes: it is exempt
    (root / "user.slice" / "cgroup.procs").write_text("")
    (root / "user.slice" / "user-1000.slice" / "cgroup.procs").write_text("")
    (scope / "cgroup.procs").write_text("812\n813\n")
    assert nesting_parent(str(root), "/user.slice/user-1000.slice/session-3.scope") == \
        "user.slice/user-1000.slice/dockyard"
    (scope / "cgroup.procs").write_text("")  # a leaf of its own (a delegated service): under it
    assert nesting_parent(str(root), "/user.slice/user-1000.slice/session-3.scope") == \
        "user.slice/user-1000.slice/session-3.scope/dockyard"
    (root / "user.slice" / "cgroup.procs").write_text("9\n")  # only the root is left
    (scope / "cgroup.procs").write_text("812\n")
    (root / "user.slice" / "user-1000.slice" / "cgroup.procs").write_text("7\n")
    assert nesting_parent(str(root), "/user.slice/user-1000.slice/session-3.scope") == "dockyard"


def test_nesting_parent_on_v1_is_the_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    (root / "unified").mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    assert nesting_parent(str(root / "unified"), "/process_api/abc") == "process_api/abc/dockyard"
    assert nesting_parent(str(root), "/") == "dockyard"


def test_detect_hybrid_with_only_hugetlb_in_v2_is_v1(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    root.mkdir()
    # the host's layout: a tmpfs root (here the unified mount sits below it, hugetlb only)
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    mounts = "".join(
        f"{30 + i} 25 0:{30 + i} / {root}/{n} rw,relatime - cgroup cgroup rw,{n}\n"
        for i, n in enumerate(["cpu,cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"])
    )
    mounts += f"40 25 0:40 / {root}/unified rw,relatime - cgroup2 cgroup2 rw\n"
    mounts += f"41 25 0:41 / {root}/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    mounts += "42 25 0:42 / /elsewhere/memory rw,relatime - cgroup cgroup rw,memory\n"  # not under root
    cgroup = (
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
        "4:memory:/process_api/abc\n3:cpuset:/\n2:cpu,cpuacct:/\n0::/\n"
    )
    d = _detect(str(root), None, *_proc(tmp_path, cgroup, mounts))
    assert isinstance(d, V1Driver)
    p = d.paths("x")
    assert p["memory"] == f"{root}/memory/process_api/abc/dockyard/x"
    assert p["cpu"] == p["cpuacct"] == f"{root}/cpu,cpuacct/dockyard/x"  # co-mounted: one directory
    assert p["pids"] == f"{root}/pids/dockyard/x"
    assert "hugetlb" not in p


def test_detect_unified_with_only_hugetlb_is_not_v2(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("hugetlb\n")
    with pytest.raises(
        CgroupError, match="neither a cgroup2 hierarchy with controllers nor cgroup v1 mounts"
    ):
        _detect(str(root), None, *_proc(tmp_path, "0::/\n"))


# validation: one place, each error names its field


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (Resources(memory=1024), "memory: 1024 is below the minimum of 6 MiB"),
        (Resources(memory=-5), "memory: -5 is negative (use 0 for unlimited)"),
        (Resources(memory_swap=64 * MIB), "memory_swap: needs memory to be set as well"),
        (
            Resources(memory=64 * MIB, memory_swap=32 * MIB),
            f"memory_swap: {32 * MIB} is below memory {64 * MIB} (it counts memory plus swap)",
        ),
        (
            Resources(memory=64 * MIB, memory_swap=-2),
            "memory_swap: -2 is invalid (use -1 for unlimited swap)",
        ),
        (Resources(nano_cpus=1000), "nano_cpus: 1000 is below the minimum of 0.01 CPU (10000000)"),
        (Resources(nano_cpus=-1), "nano_cpus: -1 is negative (use 0 for unlimited)"),
        (Resources(cpu_shares=1), "cpu_shares: 1 is outside 2..262144"),
        (Resources(cpu_shares=300000), "cpu_shares: 300000 is outside 2..262144"),
        (Resources(pids_limit=-1), "pids_limit: -1 is negative (use 0 for unlimited)"),
        (Resources(blkio_weight=5), "blkio_weight: 5 is outside 10..1000"),
        (
            Resources(device_read_bps=(DeviceRate("vda", 1),)),
            "device_read_bps: 'vda' is not an absolute device path",
        ),
        (
            Resources(device_write_bps=(DeviceRate("/dev/vda", 0),)),
            "device_write_bps: /dev/vda: rate 0 must be a positive number of bytes per second",
        ),
        (
            Resources(device_read_bps=(DeviceRate("/dev/vda", 1), DeviceRate("/dev/vda", 2))),
            "device_read_bps: /dev/vda is listed twice",
        ),
    ],
)
def test_validate_names_the_field(resources: Resources, message: str) -> None:
    with pytest.raises(CgroupError) as e:
        resources.validate()
    assert str(e.value) == message
    assert e.value.field == message.split(":")[0]


def test_valid_resources_pass() -> None:
    Resources().validate()
    Resources(
        memory=6 * MIB, memory_swap=-1, nano_cpus=10_000_000, cpu_shares=2, blkio_weight=1000
    ).validate()


@pytest.fixture(autouse=True)
def _no_stray_timers() -> Iterator[None]:
    yield
    for t in threading.enumerate():
        if isinstance(t, threading.Timer):
            t.join(timeout=2)
