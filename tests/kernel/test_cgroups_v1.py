"""The cgroup v1 driver against the real kernel, as root.

Every test works under a parent of its own ("dockyard-test-<random>") and the fixtures remove it,
with every process the test started, even when the test fails.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.cgroups import (
    ALL_DEVICES,
    DEFAULT_DEVICE_RULES,
    MIB,
    CgroupError,
    DeviceRate,
    DeviceRule,
    Resources,
    V1Driver,
    detect,
)
from agent.runtime.cgroups._v1 import devices

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup/memory"), reason="needs cgroup v1"),
]


@pytest.fixture
def driver() -> Iterator[V1Driver]:
    d = detect(parent=f"dockyard-test-{secrets.token_hex(4)}")
    assert isinstance(d, V1Driver)
    try:
        yield d
    finally:
        for name in d.list():
            d.destroy(name)
        for base in set(d.bases.values()):
            parent = os.path.join(base, d.parent)
            if os.path.isdir(parent):
                os.rmdir(parent)


class Spawner:
    """Starts processes that wait on stdin until they are inside the cgroup, and kills them after."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, driver: V1Driver, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            ["/bin/sh", "-c", 'read go; exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.procs.append(p)
        driver.add_process(name, p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()  # stdin stays open: a child may wait for its EOF to exit
        return p

    def python(self, driver: V1Driver, name: str, code: str) -> subprocess.Popen[bytes]:
        return self(driver, name, [sys.executable, "-c", code])

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f and not f.closed:
                    f.close()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    s = Spawner()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A block device of our own (this host refuses to open /dev/vda, even for root)."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * MIB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_memory_limit_oom_kills(driver: V1Driver, spawn: Spawner) -> None:
    driver.create("oom", Resources(memory=32 * MIB, memory_swap=32 * MIB))
    # b"x" * n writes every page, so the memory is really charged.
    p = spawn.python(driver, "oom", "b = b'x' * (100 * 1024 * 1024); print('survived')")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, out
    assert driver.oom_kills("oom") >= 1
    s = driver.stats("oom")
    assert s.oom_kills >= 1
    assert s.memory_limit == 32 * MIB
    assert 24 * MIB < s.memory_max_usage <= 32 * MIB


def test_pids_limit_fork_fails_with_eagain(driver: V1Driver, spawn: Spawner) -> None:
    driver.create("pids", Resources(pids_limit=5))
    code = """
import os, signal, sys
kids = []
try:
    while len(kids) < 50:
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        kids.append(pid)
    print("no-limit", len(kids))
except BlockingIOError as e:
    print("EAGAIN" if e.errno == 11 else e.errno, len(kids))
for k in kids:
    os.kill(k, signal.SIGKILL)
    os.waitpid(k, 0)
"""
    p = spawn.python(driver, "pids", code)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    assert out.decode().split() == ["EAGAIN", "4"]  # itself plus 4 children make 5
    assert driver.stats("pids").pids_limit == 5


def test_cpu_quota_throttles(driver: V1Driver, spawn: Spawner) -> None:
    driver.create("cpu", Resources(nano_cpus=200_000_000))
    cpu = driver.paths("cpu")["cpu"]
    assert read(f"{cpu}/cpu.cfs_quota_us") == "20000"
    assert read(f"{cpu}/cpu.cfs_period_us") == "100000"
    # Spin until 0.25 s of CPU is used: at 0.2 CPU that takes at least 1.25 s of wall clock,
    # however busy the machine is (load only makes it slower).
    start = time.monotonic()
    p = spawn.python(driver, "cpu", "import time\nwhile time.process_time() < 0.25: pass")
    p.communicate(timeout=60)
    wall = time.monotonic() - start
    assert p.returncode == 0
    s = driver.stats("cpu")
    assert wall >= 1.1
    assert s.nr_throttled >= 3
    assert s.nr_periods >= 10
    assert s.throttled_ns > 0
    assert 0.25e9 <= s.cpu_usage_ns < 0.25e9 + 0.1e9  # the quota is enforced per period, little overshoot
    assert s.cpu_user_ns + s.cpu_system_ns <= s.cpu_usage_ns * 1.2 + 10_000_000


def test_freeze_stops_progress_and_thaw_resumes(driver: V1Driver, spawn: Spawner, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    driver.create("frz", Resources())
    code = f"""
import os, time
fd = os.open({str(counter)!r}, os.O_WRONLY)
n = 0
while True:
    n += 1
    os.pwrite(fd, str(n).encode().ljust(20), 0)
    time.sleep(0.001)
"""
    p = spawn.python(driver, "frz", code)

    def value() -> int:
        return int(counter.read_text().strip() or 0)

    deadline = time.monotonic() + 10
    while value() < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not driver.frozen("frz")
    driver.freeze("frz")
    assert driver.frozen("frz")
    assert read(f"{driver.paths('frz')['freezer']}/freezer.state") == "FROZEN"
    a = value()
    time.sleep(0.3)
    assert value() == a
    driver.thaw("frz")
    assert not driver.frozen("frz")
    deadline = time.monotonic() + 10
    while value() <= a + 10:
        assert time.monotonic() < deadline, "no progress after thaw"
        time.sleep(0.01)
    assert p.poll() is None


def test_stats_are_sane(driver: V1Driver, spawn: Spawner) -> None:
    driver.create("st", Resources(memory=256 * MIB, pids_limit=64))
    p = spawn.python(
        driver,
        "st",
        "import sys\nb = b'y' * (40 * 1024 * 1024)\nprint('ready', flush=True)\nsys.stdin.read()",
    )
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    s = driver.stats("st")
    assert s.memory_usage >= 40 * MIB
    assert s.memory_rss >= 40 * MIB
    assert s.memory_max_usage >= s.memory_usage
    assert 0 < s.working_set <= s.memory_usage
    assert s.memory_limit == 256 * MIB
    assert s.pids_current == 1
    assert s.pids_limit == 64
    assert s.cpu_usage_ns > 0
    assert s.oom_kills == 0
    assert driver.procs("st") == [p.pid]


def test_unlimited_reads_as_zero(driver: V1Driver) -> None:
    driver.create("u", Resources())
    s = driver.stats("u")
    assert (s.memory_limit, s.pids_limit) == (0, 0)
    cpu = driver.paths("u")["cpu"]
    assert read(f"{cpu}/cpu.cfs_quota_us") == "-1"
    assert read(f"{cpu}/cpu.shares") == "1024"


@pytest.mark.slow
def test_device_read_bps_throttles_and_counts(driver: V1Driver, spawn: Spawner, loop_device: str) -> None:
    st = os.stat(loop_device)
    readable = DeviceRule("b", os.major(st.st_rdev), os.minor(st.st_rdev), "r")
    driver.create("io", Resources(device_read_bps=(DeviceRate(loop_device, 2 * MIB),),
                                  devices=(*DEFAULT_DEVICE_RULES, readable)))
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    blkio = driver.paths("io")["blkio"]
    assert read(f"{blkio}/blkio.throttle.read_bps_device") == f"{dev} {2 * MIB}"
    start = time.monotonic()
    # O_DIRECT reads of the raw device (read-only) go to the block layer, not the page cache.
    p = spawn(driver, "io", ["dd", f"if={loop_device}", "of=/dev/null", "bs=1M", "count=6", "iflag=direct"])
    p.communicate(timeout=60)
    elapsed = time.monotonic() - start
    assert p.returncode == 0
    assert elapsed >= 1.5  # 6 MiB at 2 MiB/s, less the first slice's allowance
    assert driver.stats("io").blkio_read_bytes >= 6 * MIB
    # update without the throttle removes it
    driver.update("io", Resources())
    assert read(f"{blkio}/blkio.throttle.read_bps_device") == ""


def test_memory_and_swap_update_in_both_directions(driver: V1Driver) -> None:
    def limits() -> tuple[int, int]:
        mem = driver.paths("m")["memory"]
        return int(read(f"{mem}/memory.limit_in_bytes")), int(read(f"{mem}/memory.memsw.limit_in_bytes"))

    driver.create("m", Resources(memory=64 * MIB))
    assert limits() == (64 * MIB, 128 * MIB)  # docker's default: memsw = 2 x memory
    driver.update("m", Resources(memory=512 * MIB, memory_swap=1024 * MIB))  # raise both past the old memsw
    assert limits() == (512 * MIB, 1024 * MIB)
    driver.update("m", Resources(memory=16 * MIB, memory_swap=20 * MIB))  # lower both below the old memory
    assert limits() == (16 * MIB, 20 * MIB)
    driver.update("m", Resources(memory=32 * MIB, memory_swap=-1))
    assert limits()[0] == 32 * MIB and limits()[1] > 1 << 60
    driver.update("m", Resources())
    assert min(limits()) > 1 << 60


def test_create_is_idempotent_and_joins_every_controller(driver: V1Driver, spawn: Spawner) -> None:
    driver.create("j", Resources(memory=64 * MIB))
    driver.create("j", Resources(memory=64 * MIB))
    assert "cpuset" not in driver.paths("j")  # not joined until something configures it
    assert "devices" in driver.paths("j")  # always: it keeps the host's disks closed
    p = spawn(driver, "j", ["sleep", "30"])
    with open(f"/proc/{p.pid}/cgroup") as f:
        mine = {ctrl: path for _, ctrl, path in (line.strip().split(":", 2) for line in f)}
    for ctrl, path in driver.paths("j").items():
        assert path.endswith(mine[ctrl]), (ctrl, path, mine[ctrl])
    assert driver.list() == ["j"]


def test_failed_create_removes_what_it_made(driver: V1Driver) -> None:
    with pytest.raises(CgroupError) as e:
        driver.create("bad", Resources(device_write_bps=(DeviceRate("/dev/null", MIB),)))
    assert e.value.field == "device_write_bps"
    assert "/dev/null is not a block device" in str(e.value)
    assert not driver.exists("bad")
    assert driver.list() == []


def test_invalid_resources_are_refused_before_anything_is_made(driver: V1Driver) -> None:
    with pytest.raises(CgroupError, match=r"^memory: 1024 is below the minimum of 6 MiB$"):
        driver.create("v", Resources(memory=1024))
    assert not driver.exists("v")


def test_destroy_kills_leftovers_even_when_frozen(driver: V1Driver, spawn: Spawner) -> None:
    driver.create("d", Resources())
    # a shell with children of its own: destroy must get the whole tree
    p = spawn(driver, "d", ["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"])
    deadline = time.monotonic() + 10
    while len(driver.procs("d")) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pids = driver.procs("d")
    driver.freeze("d")
    driver.destroy("d")
    assert p.wait(timeout=10) == -signal.SIGKILL
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert not driver.exists("d")
    assert not any(os.path.exists(path) for path in driver.paths("d").values())
    driver.destroy("d")  # idempotent


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_missing_cgroup_errors_name_the_path(driver: V1Driver) -> None:
    with pytest.raises(CgroupError) as e:
        driver.stats("nope")
    assert driver.parent in str(e.value) and "nope" in str(e.value)
    assert e.value.path.endswith("/nope")


def test_detect_nests_under_own_cgroup() -> None:
    d = detect()
    assert isinstance(d, V1Driver)
    assert d.parent == "dockyard"
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.strip().split(":", 2)
            for c in ctrls.split(","):
                own[c] = path
    for ctrl, path in d.paths("x").items():
        assert path == os.path.normpath(f"/sys/fs/cgroup/{ctrl}/{own[ctrl]}/dockyard/x")
    assert detect().paths("x") == d.paths("x")  # a restarted agent finds the same place


def test_device_rules_default_update_and_privileged(driver: V1Driver, spawn: Spawner, loop_device: str) -> None:
    """docker's default list; a process in the cgroup cannot open a block device, even as root; an
    update that allows it takes effect on the running process; 'a' allows everything."""
    driver.create("dev", Resources())
    path = driver.paths("dev")["devices"]
    assert sorted(devices.rules(path)) == sorted(str(r) for r in DEFAULT_DEVICE_RULES)
    probe = (f"import os\ntry:\n    os.close(os.open({loop_device!r}, os.O_RDONLY)); print('opened')\n"
             "except OSError as e:\n    print(e.strerror)\nimport sys; sys.stdin.readline()")
    p = spawn.python(driver, "dev", probe)
    assert p.stdout is not None
    assert p.stdout.readline() == b"Operation not permitted\n"
    st = os.stat(loop_device)
    rule = DeviceRule("b", os.major(st.st_rdev), os.minor(st.st_rdev), "r")
    driver.update("dev", Resources(devices=(*DEFAULT_DEVICE_RULES, rule)))
    assert f"b {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} r" in devices.rules(path)
    p2 = spawn.python(driver, "dev", probe)
    assert p2.stdout is not None
    assert p2.stdout.readline() == b"opened\n"
    driver.update("dev", Resources(devices=ALL_DEVICES))
    assert sorted(devices.rules(path)) == ["b *:* rwm", "c *:* rwm"]  # every device, with no instant of none
    p3 = spawn.python(driver, "dev", probe)
    assert p3.stdout is not None
    assert p3.stdout.readline() == b"opened\n"
    driver.update("dev", Resources())
    assert sorted(devices.rules(path)) == sorted(str(r) for r in DEFAULT_DEVICE_RULES)


@pytest.mark.parametrize(("rule", "message"), [
    (DeviceRule("x", 1, 3), "device type 'x' must be 'a', 'b' or 'c'"),
    (DeviceRule("c", 1, 3, "rwx"), "device access 'rwx' must be a combination of r, w and m"),
    (DeviceRule("c", 1, 3, ""), "device access '' must be a combination of r, w and m"),
    (DeviceRule("c", -2, 3), "major -2 is not a device number"),
    (DeviceRule("a", 1, 3), "a rule for all devices ('a') takes no numbers and all of rwm"),
])
def test_bad_device_rules_are_refused_before_anything_is_made(driver: V1Driver, rule: DeviceRule,
                                                               message: str) -> None:
    with pytest.raises(CgroupError, match=re.escape(message)) as e:
        driver.create("bad", Resources(devices=(rule,)))
    assert e.value.field == "devices"
    assert not driver.exists("bad")


def test_device_rule_syntax_round_trips() -> None:
    for text in ("c 1:3 rwm", "b *:* m", "c 136:* rw", "a *:* rwm"):
        assert str(DeviceRule.parse(text)) == text
    assert DeviceRule.parse("a") == DeviceRule("a")
    assert str(DeviceRule("c", 1, 3, "mwr")) == "c 1:3 rwm"
    for bad in ("c 1 rwm", "c x:3 rwm", "q 1:3 r", "c 1:3"):
        with pytest.raises(CgroupError, match="devices: "):
            DeviceRule.parse(bad)


def test_spare_is_made_ahead_and_taken_by_rename(driver: V1Driver, spawn: Spawner) -> None:
    """A pre-cloned init's cgroups are made and joined ahead (shim.SpareCgroup); its container
    renames them: the process stays in, in every controller, and the resources are applied."""
    p = subprocess.Popen(["sleep", "60"])
    spawn.procs.append(p)
    assert driver.make_spare(".spare-1", p.pid)
    assert driver.list() == []  # a spare is nobody's container
    assert driver.procs(".spare-1") == [p.pid]
    assert not driver.take_spare(".spare-nope", "c1", Resources())
    driver.create("taken", Resources())
    assert not driver.take_spare(".spare-1", "taken", Resources())  # the name is in use: nothing moves
    assert driver.procs(".spare-1") == [p.pid]
    assert driver.take_spare(".spare-1", "c1", Resources(memory=64 * MIB, pids_limit=9))
    assert not driver.exists(".spare-1")
    assert driver.procs("c1") == [p.pid]
    with open(f"/proc/{p.pid}/cgroup") as f:
        mine = {ctrl: path for _, ctrl, path in (line.strip().split(":", 2) for line in f)}
    for ctrl, path in driver.paths("c1").items():
        assert path.endswith(mine[ctrl]), (ctrl, path, mine[ctrl])
    assert read(f"{driver.paths('c1')['memory']}/memory.limit_in_bytes") == str(64 * MIB)
    assert read(f"{driver.paths('c1')['pids']}/pids.max") == "9"
    assert sorted(devices.rules(driver.paths("c1")["devices"])) == sorted(str(r) for r in DEFAULT_DEVICE_RULES)
    with pytest.raises(CgroupError, match=re.escape("must start with '.'")):
        driver.make_spare("visible", p.pid)


def test_device_rule_updates_never_deny_what_stays_allowed(driver: V1Driver, spawn: Spawner) -> None:
    """An update moves a deny-by-default list by its difference (new rules first): a process that
    keeps opening /dev/null meanwhile is never refused (a pre-cloned init makes its /dev while its
    spare cgroup is taken over with the container's rules)."""
    driver.create("race", Resources())
    code = ("import os, sys\nsys.stdin.readline()\nbad = 0\n"
            "for _ in range(20000):\n"
            "    try:\n        os.close(os.open('/dev/null', os.O_RDWR))\n"
            "    except PermissionError:\n        bad += 1\n"
            "print(bad, flush=True)")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    spawn.procs.append(p)  # type: ignore[arg-type]
    driver.add_process("race", p.pid)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    extra = (*DEFAULT_DEVICE_RULES, DeviceRule("b", 7, 0, "r"), DeviceRule("c", 1, 3, "r"))
    while p.poll() is None:
        driver.update("race", Resources(devices=extra))
        driver.update("race", Resources(devices=ALL_DEVICES))  # (--privileged)
        driver.update("race", Resources())
    assert p.stdout.read().strip() == "0"
    assert sorted(devices.rules(driver.paths("race")["devices"])) == sorted(str(r) for r in DEFAULT_DEVICE_RULES)
