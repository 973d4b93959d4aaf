"""CRIU on a real namespaced process: dump a counter in a busybox container, restore it, and see the
counter continue from where it was (its value lives only in the shell's memory).

The container here is made by hand (fork, unshare, pivot_root, setsid) and follows the rules CRIU
imposes (FACTS.md), so this proves agent.checkpoint without the runtime. The helpers are reused by
tests/bench/bench_criu.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from agent.checkpoint import Criu, CriuError, find_criu
from agent.runtime import syscalls

CONTAINER_NAMESPACES = (
    syscalls.CLONE_NEWNS
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWIPC
    | syscalls.CLONE_NEWNET
    | syscalls.CLONE_NEWPID
)
COUNTER_FILE = "var/counter"
# The counter lives in the shell variable i; the file only shows it.
COUNTER_SCRIPT = """
i=0
while :; do
  i=$((i+1))
  echo "$i" >> /var/counter
  usleep 20000
done
"""


# --- a hand-made container -------------------------------------------------------------------


def make_busybox_rootfs(root: Path) -> None:
    """A minimal rootfs: static busybox with its applets as relative links, /dev/null, /proc."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    # `busybox --install -s DIR` would link to the host path of busybox, dangling after pivot_root.
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    add_container_dirs(root)


def add_container_dirs(root: Path) -> None:
    for d in ("dev", "proc", "tmp", "var"):
        (root / d).mkdir(exist_ok=True)
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def spawn_container(
    root: Path,
    argv: Sequence[str],
    *,
    binds: Sequence[tuple[str, str]] = (),
    env: dict[str, str] | None = None,
    hostname: str = "criu-test",
    stdout: int | None = None,
) -> int:
    """Start argv as pid 1 of new pid, mnt, uts, ipc and net namespaces, pivot_root'ed into root;
    returns its host pid. `binds` are read-only (host path, path in root) bind mounts; `stdout`
    (a pipe, say) becomes the init's fd 1, else it gets /dev/null.

    The caller must be a child subreaper (the middle process exits at once, so the container
    init is re-parented to the caller, which reaps it).
    """
    r, w = os.pipe()  # both ends close-on-exec: EOF once the init has exec'd
    middle = os.fork()
    if middle == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(r)
            syscalls.unshare(CONTAINER_NAMESPACES)
            init = os.fork()
            if init == 0:
                _container_init(root, argv, binds, env or {"PATH": "/bin:/usr/bin"}, hostname, w, stdout)
            os.write(w, f"pid {init}\n".encode())
            code = 0
        except BaseException as e:
            os.write(w, f"error {e!r}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    os.waitpid(middle, 0)
    pid = None
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "pid":
            pid = int(rest)
    if "error" in report:
        if pid is not None:
            kill_and_reap(pid)
        raise RuntimeError(f"container setup failed: {report.strip()}")
    assert pid is not None, report
    return pid


def _container_init(
    root: Path,
    argv: Sequence[str],
    binds: Sequence[tuple[str, str]],
    env: dict[str, str],
    hostname: str,
    w: int,
    stdout: int | None,
) -> None:  # pragma: no cover - runs in the child
    try:
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        syscalls.mount(str(root), str(root), None, syscalls.MS_BIND | syscalls.MS_REC)
        for src, dst in binds:
            target = str(root / dst.lstrip("/"))
            syscalls.mount(src, target, None, syscalls.MS_BIND | syscalls.MS_REC)
            syscalls.mount(None, target, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
        os.chdir(root)
        # pivot_root(".", ".") stacks the old root on top of the new one; detach it at once.
        syscalls.pivot_root(".", ".")
        syscalls.umount(".", syscalls.MNT_DETACH)
        os.chdir("/")
        syscalls.mount("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
        syscalls.sethostname(hostname)
        os.setsid()  # CRIU: the init leads its own session inside the pid namespace
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if stdout is not None:
            os.dup2(stdout, 1)
        # No fds on anything outside the rootfs may reach the container (CRIU refuses them).
        os.closerange(3, w)
        os.closerange(w + 1, 65536)
        os.execve(argv[0], list(argv), env)
    except BaseException as e:
        os.write(w, f"error {e!r}\n".encode())
    os._exit(127)


def kill_and_reap(pid: int) -> None:
    """SIGKILL a container init we are the (sub)reaper of; the kernel takes the rest of its pid
    namespace down with it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@contextlib.contextmanager
def child_subreaper() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants (container inits, restored trees)."""
    syscalls.set_child_subreaper()
    try:
        yield
    finally:
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def read_counter(root: Path) -> list[int]:
    try:
        text = (root / COUNTER_FILE).read_text()
    except FileNotFoundError:
        return []
    # A line being written right now may be partial: only whole lines count.
    return [int(x) for x in text.split("\n")[:-1] if x]


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def ns_pid(pid: int) -> int:
    """pid inside its innermost pid namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid")


# --- tests that need no root -----------------------------------------------------------------










# --- real CRIU -------------------------------------------------------------------------------

CRIU = find_criu() if os.geteuid() == 0 else None
NO_CRIU_REASON = (
    "needs root (namespaces, mounts, criu)"
    if os.geteuid() != 0
    else "no criu >= 4 found: run deploy/install-criu.sh (or set DOCKYARD_CRIU)"
)
needs_criu = pytest.mark.skipif(CRIU is None, reason=NO_CRIU_REASON)


@pytest.fixture
def criu() -> Criu:
    assert CRIU is not None
    return CRIU


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dockyard-criu-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.criu
@pytest.mark.root
@needs_criu
def test_criu_check_looks_good(criu: Criu) -> None:
    caps = criu.check()
    assert caps.works, caps.reason
    assert caps.version.startswith(tuple(str(n) for n in range(4, 10)))
    assert set(caps.features) >= {"uffd", "uffd-noncoop", "mem_dirty_track", "inet_sockets"}
    assert caps.inet_sockets, f"criu {caps.version} cannot dump inet sockets here: {caps.reason}"


@pytest.mark.criu
@pytest.mark.root
@needs_criu
def test_dump_of_a_missing_pid_raises_with_the_log(criu: Criu, workdir: Path) -> None:
    with pytest.raises(CriuError) as err:
        criu.dump(2**22 - 1, workdir / "images", root="/")
    assert err.value.operation == "dump" and err.value.log_tail


@pytest.mark.criu
@pytest.mark.root
@needs_criu
def test_counter_continues_after_dump_and_restore(criu: Criu, workdir: Path) -> None:
    root = workdir / "rootfs"
    images = workdir / "images"
    make_busybox_rootfs(root)
    pids: list[int] = []
    with child_subreaper():
        try:
            pid = spawn_container(root, ["/bin/sh", "-c", COUNTER_SCRIPT])
            pids.append(pid)
            wait_for(lambda: len(read_counter(root)) >= 10, 10, "the counter to start")

            criu.dump(pid, images, root=str(root))
            # Dumped without --leave-running: the tree is gone; we reap its init.
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status), f"init ended with status {status:#x}, not by criu's SIGKILL"
            pids.remove(pid)
            assert not is_running(pid)
            before = read_counter(root)
            time.sleep(0.2)
            assert read_counter(root) == before, "something still writes the counter after the dump"
            last = before[-1]

            restored = criu.restore(images, root=str(root))
            pids.append(restored)
            assert is_running(restored)
            assert ns_pid(restored) == 1, "the restored init is not pid 1 of its own pid namespace"
            wait_for(lambda: read_counter(root)[-1] >= last + 10, 10, "the restored counter to go on")

            values = read_counter(root)
            # Continues from where it was: no restart at 1, no gap, no repeat.
            assert values == list(range(1, len(values) + 1)), f"counter broke around {last}"
            assert values.count(1) == 1 and len(values) > last
        finally:
            for p in pids:
                kill_and_reap(p)


def _read_available(fd: int) -> str:
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.criu
@pytest.mark.root
@needs_criu
def test_stdout_pipe_is_handed_over_with_inherit_fd(criu: Criu, workdir: Path) -> None:
    """The container's stdout is a pipe to us (as a log pipe would be). After restore the process
    writes into a new pipe we pass with --inherit-fd under the old pipe's key."""
    root = workdir / "rootfs"
    make_busybox_rootfs(root)
    script = COUNTER_SCRIPT.replace("usleep", 'echo "$i"; usleep')
    old_r, old_w = os.pipe()
    new_r, new_w = os.pipe()
    os.set_blocking(old_r, False)
    os.set_blocking(new_r, False)
    pids: list[int] = []
    with child_subreaper():
        try:
            pid = spawn_container(root, ["/bin/sh", "-c", script], stdout=old_w)
            pids.append(pid)
            key = f"pipe:[{os.fstat(old_w).st_ino}]"
            os.close(old_w)
            wait_for(lambda: len(read_counter(root)) >= 5, 10, "the counter to start")
            criu.dump(pid, workdir / "images", root=str(root))
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            pids.remove(pid)
            last = read_counter(root)[-1]
            assert _read_available(old_r).split()[-1] == str(last)

            restored = criu.restore(workdir / "images", root=str(root), inherit_fds=[(new_w, key)])
            pids.append(restored)
            os.close(new_w)
            seen: list[str] = []

            def five_lines() -> bool:
                seen.extend(_read_available(new_r).split())
                return len(seen) >= 5

            wait_for(five_lines, 10, "output on the new pipe")
            assert [int(x) for x in seen[:5]] == list(range(last + 1, last + 6))
        finally:
            for p in pids:
                kill_and_reap(p)
            for fd in (old_r, new_r, new_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def _recv_values(root: Path) -> list[int]:
    try:
        text = (root / "var" / "recv").read_text()
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split("\n")[:-1] if x]


@pytest.mark.criu
@pytest.mark.root
@needs_criu
def test_established_tcp_connection_survives(criu: Criu, workdir: Path) -> None:
    """Two processes in the container talk over loopback TCP; with tcp_established the connection
    is dumped (TCP repair) and restored, and the stream goes on without a gap."""
    root = workdir / "rootfs"
    make_busybox_rootfs(root)
    script = """
ip link set lo up
nc -l -p 7000 -e sh -c "cat > /var/recv" &
usleep 200000
i=0
while :; do i=$((i+1)); echo "$i"; usleep 20000; done | nc 127.0.0.1 7000
"""
    pids: list[int] = []
    with child_subreaper():
        try:
            pid = spawn_container(root, ["/bin/sh", "-c", script])
            pids.append(pid)
            wait_for(lambda: len(_recv_values(root)) >= 5, 10, "data over the TCP connection")
            criu.dump(pid, workdir / "images", root=str(root), tcp_established=True)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            pids.remove(pid)
            last = _recv_values(root)[-1]

            restored = criu.restore(workdir / "images", root=str(root), tcp_established=True)
            pids.append(restored)
            wait_for(lambda: _recv_values(root)[-1] >= last + 10, 10, "the stream to go on after restore")
            values = _recv_values(root)
            assert values == list(range(1, len(values) + 1)), f"the stream broke around {last}"
        finally:
            for p in pids:
                kill_and_reap(p)


@pytest.mark.criu
@pytest.mark.root
@needs_criu
def test_leave_running_keeps_the_source(criu: Criu, workdir: Path) -> None:
    """A dump with leave_running is a snapshot: the source goes on (migration rolls back to it)."""
    root = workdir / "rootfs"
    make_busybox_rootfs(root)
    pids: list[int] = []
    with child_subreaper():
        try:
            pid = spawn_container(root, ["/bin/sh", "-c", COUNTER_SCRIPT])
            pids.append(pid)
            wait_for(lambda: len(read_counter(root)) >= 5, 10, "the counter to start")
            criu.dump(pid, workdir / "images", root=str(root), leave_running=True)
            after = read_counter(root)[-1]
            wait_for(lambda: read_counter(root)[-1] >= after + 5, 10, "the source to go on")
            assert is_running(pid)
            assert (workdir / "images" / "inventory.img").exists()
        finally:
            for p in pids:
                kill_and_reap(p)


