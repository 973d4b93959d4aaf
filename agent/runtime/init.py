"""The container init: pid 1 of the new pid namespace, from fork to execve.

It runs in a process the shim cloned into the container's new namespaces (or one cloned ahead of
need: run_precloned), and talks to the shim over a SEQPACKET control socket (agent/runtime/
messages.py, the pty master passed back with SCM_RIGHTS). The stages:

  shim: Configure (veth moved in) -> init: network, hostname, mounts, pivot_root,
  pty, resolve user and command -> Ready -> shim: Go (cgroup joined) -> init: its own cgroup
  namespace (--cgroupns private), drop privileges, execve.

An error at any stage is sent as an Error and the process exits; the shim sees EOF on the socket
(it is close-on-exec) when execve succeeds.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import signal
import socket
import termios
import traceback
from typing import NoReturn

from agent.runtime import messages, mounts, process, rootfs
from agent.runtime import syscalls as sc
from agent.runtime.spec import RuntimeSpec

_TIOCSPTLCK = 0x40045431  # unlockpt(); not in Python's termios module
_TIOCGPTN = 0x80045430    # ptsname()'s number


def _open_pty() -> tuple[int, int]:
    """A pty from the container's own devpts instance (runc's console socket approach)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, array.array("i", [0]))
    n = array.array("i", [0])
    fcntl.ioctl(master, _TIOCGPTN, n)
    slave = os.open(f"/dev/pts/{n[0]}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def _take_terminal(slave: int) -> None:
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def run_precloned(ctl: socket.socket) -> NoReturn:
    """Entry point of an init cloned before its container existed (shim.Precloned): in new uts,
    ipc, pid and net namespaces, it waits for InitSpec with the stdio descriptors, then for
    Mounted; it enters the rootfs and unshares its mount namespace (whose copy now holds
    the rootfs mount), and goes on as run() does.

    What it inherited from the zygote's child that made it, the agent's request socket among
    them, must not reach the container: all is close-on-exec from here on but `ctl`."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != ctl.fileno():
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
    # Our network namespace needs lo up whatever the container's network: done while we wait.
    from agent.runtime import network

    lo_up = False
    with contextlib.suppress(OSError):
        network.loopback_up()
        lo_up = True
    try:
        msg, fds = messages.recv(ctl, messages.InitSpec, size=65536, max_fds=4)
    except (OSError, messages.ProtocolError):
        os._exit(1)
    if not isinstance(msg, messages.InitSpec):
        os._exit(0)  # the spare that made us ended, or took another request
    try:
        # Read while the shim mounts the rootfs; Mounted then lets us in.
        spec = msg.spec
        stdio = (fds[0], fds[1], fds[2]) if len(fds) == 3 else None
        if messages.recv(ctl, messages.Mounted, size=65536, max_fds=4)[0] is None:
            os._exit(1)
        os.chdir(spec.rootfs)
        sc.unshare(sc.CLONE_NEWNS)
    except BaseException as e:
        _report(ctl, f"container init: {e}", 128)
        os._exit(1)
    run(spec, ctl, stdio, lo_up)


def run(spec: RuntimeSpec, ctl: socket.socket, stdio: tuple[int, int, int] | None, lo_up: bool = False) -> NoReturn:
    """Entry point in the forked child. Never returns."""
    code = 127
    try:
        os.setsid()  # CRIU needs the container's tree to be its own session
        configure, _ = messages.recv(ctl, messages.Configure, size=65536, max_fds=4)
        if not isinstance(configure, messages.Configure):
            os._exit(1)
        _configure(spec, configure, lo_up)
        pty_slave = -1
        if spec.process.tty:
            master, pty_slave = _open_pty()
            messages.send(ctl, messages.Pty(), [master])
            os.close(master)
        prepared = process.prepare(spec.process, spec.hostname)
        messages.send(ctl, messages.Ready())
        if messages.recv(ctl, messages.Go, size=65536, max_fds=4)[0] is None:
            os._exit(1)
        if "cgroup" in spec.namespaces:
            # Go comes once the shim has joined us to the container's cgroup: a namespace made now
            # has it as its root, so the container sees itself at / (/proc/self/cgroup "0::/").
            sc.unshare(sc.CLONE_NEWCGROUP)
        if pty_slave >= 0:
            _take_terminal(pty_slave)
        elif stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        if spec.process.init:
            _reaper(spec, prepared, ctl)
        process.become(spec.process, prepared)
        process.execute(prepared)
        raise process.ProcessSetupError("execve returned")
    except process.ProcessSetupError as e:
        code = e.exit_code
        _report(ctl, str(e), code)
    except BaseException as e:  # anything else is our bug or the kernel's refusal: say which
        detail = f"{type(e).__name__}: {e}"
        if not isinstance(e, OSError):
            detail += "\n" + traceback.format_exc(limit=3)
        from agent.runtime.procs import trace

        trace("init failed: " + traceback.format_exc().replace("\n", " | "))  # (DOCKYARD_TRACE: where)
        _report(ctl, f"container init failed: {detail}", code)
    os._exit(code)


def _report(ctl: socket.socket, message: str, code: int) -> None:
    with contextlib.suppress(OSError):
        messages.send(ctl, messages.Error(message, code))


def _configure(spec: RuntimeSpec, msg: messages.Configure, lo_up: bool = False) -> None:
    from agent.runtime import network
    from agent.runtime.procs import trace

    share_net = "net" not in spec.namespaces
    if not share_net:
        endpoint = msg.endpoint
        if endpoint:
            network.configure_inside(network.Endpoint.from_dict(endpoint))
        elif not lo_up:
            network.loopback_up()
    trace("init: network configured")
    if "uts" in spec.namespaces and spec.hostname:
        sc.sethostname(spec.hostname)
    # The volumes' and binds' sources are cloned first, while this namespace's copy of the host's
    # mounts is still in the host's peer groups, so a shared or slave bind can stay in (or become a
    # slave of) its source's group; each clone's own propagation is set once attached (rprivate
    # unless asked). The rootfs is our working directory (the shim's stage A entered it before unshare).
    held = mounts.open_sources(spec.volumes) if spec.volumes else []
    try:
        rootfs.prepare_in_namespace(spec.rootfs, "user" in spec.namespaces, share_net, spec.devices,
                                    spec.readonly_sysfs, spec.shm_size)
    except BaseException:
        mounts.close(held)
        raise
    trace("init: kernel filesystems mounted")
    try:
        rootfs.pivot(".")
    except BaseException:
        mounts.close(held)
        raise
    trace("init: pivoted")
    for key, value in spec.sysctls.items():  # before /proc/sys is made read-only
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        except OSError as e:
            raise OSError(e.errno, f"--sysctl {key}={value}: {e.strerror}") from None
    rootfs.mask_paths(spec.masked_paths, spec.readonly_paths)
    trace("init: masked")
    if spec.volumes or spec.read_only:
        mounts.attach(spec.volumes, held, spec.read_only)
        trace("init: volumes mounted")


def _reaper(spec: RuntimeSpec, prepared: process.Prepared, ctl: socket.socket) -> NoReturn:
    """--init: stay pid 1, run the command as a child, forward signals, reap every orphan."""
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            if spec.process.tty:
                with contextlib.suppress(OSError):
                    fcntl.ioctl(0, termios.TIOCSPGRP, array.array("i", [os.getpid()]))
            process.become(spec.process, prepared)
            process.execute(prepared)
        except process.ProcessSetupError as e:
            _report(ctl, str(e), e.exit_code)
            os._exit(e.exit_code)
        os._exit(127)
    ctl.close()
    # Hold nothing of the shim's: its pipes must see EOF, and CRIU must find no outside fds.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2, signal.SIGWINCH):
        signal.signal(s, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
