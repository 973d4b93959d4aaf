"""The shim: the process that starts one container, then becomes its monitor.

Forked from the zygote and detached (its own session; the zygote is its subreaper), it

  * sets up the cgroup and the rootfs mount, clones the container init straight into its new
    namespaces, joins it to the cgroup and the network, and replies to the agent;
  * then execs the monitor (agent/runtime/monitor/monitor.c) in its own place. The monitor
    keeps the container's stdio (the log, in docker's json-file format, and attached clients),
    stays the subreaper of everything in the container, and writes the real exit status to
    exit.json. The agent then tears the container down (agent/containers.py).

A restarted agent finds a running monitor by init.pid and the socket; an exited one by exit.json.
The long-lived process is thus a small C program, not a forked CPython (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from agent.runtime import cgroups, frames, init, messages, monitor, rootfs
from agent.runtime import syscalls as sc
from agent.runtime.procs import pid_start_time as pid_start_time  # re-exported: the agent's users
from agent.runtime.procs import process_alive as process_alive
from agent.runtime.procs import trace as trace
from agent.runtime.spec import RuntimeSpec, write_atomic


class ShimFiles:
    """Where a container's runtime files live; shared by the shim and the agent."""

    def __init__(self, state_dir: str | Path, socket_path: str | Path) -> None:
        self.dir = Path(state_dir)
        self.spec = self.dir / "runtime.json"
        self.init_pid = self.dir / "init.pid"
        self.exit = self.dir / "exit.json"
        self.log = self.dir / "container.log"
        self.socket = Path(socket_path)


# The cgroup driver of the agent's (root, parent), detected by the zygote before it forks us.
DETECTED: dict[tuple[str, str | None], cgroups.CgroupDriver] = {}


# The namespaces of a container on the default settings, but for its mount namespace, which
# cannot be made before its rootfs is mounted (the init unshares it then).
PRECLONED = ("uts", "ipc", "pid", "net")
# How long a start waits for the init's execve after Go (it has resolved the command already: only
# privileges, seccomp and the execve itself are left); past it the start is answered anyway.
EXEC_WAIT = 10.0


class Precloned:
    """A container init cloned into new namespaces before there is a container for it.

    The zygote's spare child makes one while it waits for the next request (zygote.py): the clone
    of this large process is about 3.5 ms here, and a start on the default namespaces then does
    not wait for it. The init waits on `ctl` for its spec (init.run_precloned)."""

    def __init__(self, cg: cgroups.CgroupDriver | None = None) -> None:
        self.ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = 0
        for ns in PRECLONED:
            flags |= sc.NAMESPACE_FLAGS[ns]
        pid = sc.clone(flags)
        if pid == 0:
            try:
                self.ctl.close()
                init.run_precloned(child_ctl)
            finally:
                os._exit(1)
        child_ctl.close()
        self.pid = pid
        # Its cgroups too (docker's default resources and device rules), on a thread, so a request
        # is read at once: the shim renames them after its container (SpareCgroup.take).
        self.cgroup = SpareCgroup(cg, f".spare-{pid}", pid) if cg is not None else None

    def fits(self, spec: RuntimeSpec) -> bool:
        return sorted(spec.namespaces) == sorted((*PRECLONED, "mnt")) and spec.restore is None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.ctl.close()
        if self.cgroup is not None:
            self.cgroup.drop()


class SpareCgroup:
    """The cgroups of a pre-cloned init, made and joined ahead of its container (v1 only: a v2
    cgroup cannot be renamed). Every join of a v1 hierarchy waits for an RCU grace period, about
    1.5 ms each of the seven here: this keeps them off the start, the devices one included."""

    def __init__(self, cg: cgroups.CgroupDriver, tag: str, pid: int) -> None:
        self.cg = cg
        self.tag = tag
        self.made = False
        self.error = ""
        self._thread: threading.Thread | None = threading.Thread(target=self._make, args=(pid,), daemon=True)
        self._thread.start()

    def _make(self, pid: int) -> None:
        try:
            self.made = self.cg.make_spare(self.tag, pid)
        except Exception as e:
            self.error = str(e)
            with contextlib.suppress(Exception):
                self.cg.destroy(self.tag)

    def settle(self) -> None:
        """Wait for the thread: before the process forks, and before the cgroup is used."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take(self, name: str, resources: cgroups.Resources) -> bool:
        """Make it the cgroup `name` with these resources; False if the caller must create one."""
        self.settle()
        if not self.made:
            return False
        self.made = not self.cg.take_spare(self.tag, name, resources)
        return not self.made

    def drop(self) -> None:
        """Remove it if it was not taken (killing what is in it)."""
        self.settle()
        if self.made:
            with contextlib.suppress(Exception):
                self.cg.destroy(self.tag)
            self.made = False


def start(spec: RuntimeSpec, files: ShimFiles, reply: socket.socket, pre: Precloned | None = None,
          clients: Sequence[int] = ()) -> NoReturn:
    """Runs in the forked shim. Replies Started or Failed on `reply`, then execs the
    monitor, which keeps this pid (the agent knows the shim by it) and serves `clients` (connected
    sockets) as attached from the start."""
    try:
        if pre is not None and not pre.fits(spec):
            pre.discard()
            pre = None
        shim = _Shim(spec, files, pre, reply, clients)
        pid = shim.launch()
    except BaseException as e:
        msg = e.args[0] if isinstance(e, _LaunchError) else f"{type(e).__name__}: {e}"
        code = e.args[1] if isinstance(e, _LaunchError) else 128
        with contextlib.suppress(OSError):
            files.socket.unlink()
        with contextlib.suppress(OSError):
            messages.send(reply, messages.Failed(msg, code))
        os._exit(1)
    shim.release()
    messages.send(reply, messages.Started(pid, os.getpid()))
    reply.close()
    shim.become_monitor()


class _LaunchError(Exception):
    pass


class _Shim:
    def __init__(self, spec: RuntimeSpec, files: ShimFiles, pre: Precloned | None = None,
                 reply: socket.socket | None = None, clients: Sequence[int] = ()) -> None:
        self.spec = spec
        self.files = files
        self.reply = reply   # to the agent: our answer, and before it the network requests
        self.asked_attach = False
        self.pre = pre
        self.clients = list(clients)   # sockets the monitor serves as attached from the start
        self.pid = 0
        self.ctl: socket.socket | None = None
        self.pty = -1
        self.stdin_w = -1
        self.outputs: list[int] = []     # stdout and stderr pipes, or just the pty master
        self.listener: socket.socket | None = None
        self.started_at = 0.0
        self.cg: cgroups.CgroupDriver | None = None
        self.spare: SpareCgroup | None = None   # the pre-cloned init's cgroups, made ahead
        self.mounted = False
        self.joining: threading.Thread | None = None
        self.join_error = ""
        self.go_sent = False   # release() let the init exec
        self.in_cgroup = False  # a restore's child, which joined the container's cgroup: it cannot remove it

    # --- launch -------------------------------------------------------------------------------

    def launch(self) -> int:
        """Start the container; returns its init's pid once it is ready to exec.

        A restore runs in a short-lived child, because CRIU's restored tree inherits the cgroup of
        whoever runs CRIU, and we must stay outside it. Either way the container init ends up our
        child: we are its subreaper.
        """
        spec = self.spec
        trace("shim: launch")
        monitor_path = monitor.BINARY
        if not os.access(monitor_path, os.X_OK):
            raise _LaunchError(f"the container monitor {monitor_path} is not built (deploy/install.sh)", 128)
        sc.set_child_subreaper()
        with contextlib.suppress(FileNotFoundError):
            self.files.socket.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.files.socket))
        self.listener.listen(16)
        stdio: tuple[int, int, int] | None = None
        if not spec.process.tty:
            if spec.process.stdin:
                r, self.stdin_w = os.pipe()
            else:
                # A pipe with no writer reads as EOF like /dev/null, but is not a host file that
                # CRIU would have to find a mount for.
                r, w = os.pipe()
                os.close(w)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            stdio = (r, out_w, err_w)
            self.outputs = [out_r, err_r]
        try:
            if spec.restore is None:
                pid, self.ctl, self.pty = self._launch(stdio)
            else:
                pid = self.pid = self._launch_in_child(stdio)
                self._write_state()
        except BaseException:
            self._undo()
            raise
        finally:
            for fd in stdio or ():
                os.close(fd)
        self.pid = pid
        if self.pty >= 0:
            self.outputs = [self.pty]
        self.started_at = time.time()
        trace("ready")
        return self.pid

    def release(self) -> None:
        """Unless held for an attach client: let the init exec now, and wait until it has (its
        control socket is close-on-exec: EOF) or has said why it could not, before the start is
        answered. So a start returns with the container's command running, never its init still
        on its way there (a `top` right after showed the init; runc's start also waits for its
        init's last step before execve)."""
        self._joined()
        if self.spec.hold or self.ctl is None or self.join_error:
            return
        try:
            messages.send(self.ctl, messages.Go())
        except OSError:
            return   # the init is gone: the monitor reads why on ctl
        self.go_sent = True
        # Readable at EOF (the execve) or with an Error, which is left for the monitor to read.
        select.select([self.ctl], [], [], EXEC_WAIT)

    def become_monitor(self) -> NoReturn:
        """Let the container run, and exec the monitor with everything it serves (monitor.c)."""
        assert self.listener is not None
        self._joined()
        released = not self.spec.hold
        if released and self.ctl is not None and not self.join_error and not self.go_sent:
            with contextlib.suppress(OSError):
                messages.send(self.ctl, messages.Go())
        tty = self.spec.process.tty
        fds = {"--listen": self.listener.fileno(), "--ctl": self.ctl.fileno() if self.ctl is not None else -1,
               "--stdout": -1 if tty else self.outputs[0], "--stderr": -1 if tty else self.outputs[1],
               "--pty": self.pty, "--stdin": self.stdin_w}
        args = [str(monitor.BINARY), "--pid", str(self.pid), "--started-at", f"{self.started_at:.6f}",
                "--tty", str(int(tty)), "--released", str(int(released)),
                "--socket", str(self.files.socket), "--log", self.spec.log_path,
                "--log-max-size", str(self.spec.log_max_size), "--log-max-file", str(self.spec.log_max_file),
                "--log-compress", str(int(self.spec.log_compress)), "--log-format", self.spec.log_format,
                *[a for k, v in self.spec.log_attrs for a in ("--log-attr", f"{k}={v}")],
                "--exit", str(self.files.exit), "--error", self.join_error, "--rootfs", self.spec.rootfs]
        if self.cg is not None:
            paths = self.cg.paths(self.spec.id)
            for d in dict.fromkeys(paths.values()):
                args += ["--cgroup", d]
            if "memory" in paths:
                events = "memory.oom_control" if self.cg.version == 1 else "memory.events"
                args += ["--oom-events", os.path.join(paths["memory"], events)]
        for flag, fd in fds.items():
            if fd >= 0:
                os.set_inheritable(fd, True)
            args += [flag, str(fd)]
        for fd in self.clients:
            os.set_inheritable(fd, True)
            args += ["--client", str(fd)]
        os.chdir("/")  # not the rootfs: the agent unmounts it after the exit
        try:
            os.execv(args[0], args)
        except OSError:
            # Nobody would report this container's exit: end it, and the agent sees a lost shim.
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            os._exit(1)

    def _launch_in_child(self, stdio: tuple[int, int, int] | None) -> int:
        """Run the launch in a forked child (for a restore, which joins the container's cgroup)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child = os.fork()
        if child == 0:
            ours.close()
            assert self.listener is not None
            self.listener.close()
            try:
                pid, _, _ = self._launch(stdio)
                messages.send(theirs, messages.Launched(pid))
                os._exit(0)
            except BaseException as e:
                msg = e.args[0] if isinstance(e, _LaunchError) else f"{type(e).__name__}: {e}"
                code = e.args[1] if isinstance(e, _LaunchError) else 128
                self._undo()
                with contextlib.suppress(OSError):
                    messages.send(theirs, messages.Error(msg, code))
                os._exit(1)
        theirs.close()
        try:
            msg, _ = messages.recv(ours, messages.Launched, messages.Error)
        finally:
            ours.close()
            os.waitpid(child, 0)
        if not isinstance(msg, messages.Launched):
            # The child joined the container's cgroup, so it could not remove it (destroy
            # freezes and kills what is in it: itself); it is gone now, and our _undo does.
            self.cg = DETECTED.get((self.spec.cgroup_root, self.spec.cgroup_parent)) or \
                cgroups.detect(self.spec.cgroup_root, self.spec.cgroup_parent)
        if isinstance(msg, messages.Error):
            raise _LaunchError(msg.error, msg.exit_code)
        if not isinstance(msg, messages.Launched):
            raise _LaunchError("the restore died", 128)
        return msg.pid

    def _launch(self, stdio: tuple[int, int, int] | None) -> tuple[int, socket.socket | None, int]:
        """Cgroup, rootfs, namespaces, network; returns (pid, control socket, pty)."""
        spec = self.spec
        trace("launch")
        self.cg = DETECTED.get((spec.cgroup_root, spec.cgroup_parent)) or \
            cgroups.detect(spec.cgroup_root, spec.cgroup_parent)
        if self.pre is not None:
            # The init made ahead reads its spec, and the agent wires its veth, while we mount.
            self.pid, self.ctl = self.pre.pid, self.pre.ctl
            if self.pre.cgroup is not None and self.pre.cgroup.cg is self.cg:
                self.spare = self.pre.cgroup
            elif self.pre.cgroup is not None:
                self.pre.cgroup.drop()
            self.pre = None
            messages.send(self.ctl, messages.InitSpec(spec), list(stdio) if stdio else None)
            if spec.network is not None:
                self._ask_attach(self.pid)
        os.makedirs(spec.rootfs, exist_ok=True)
        if "user" in spec.namespaces and spec.uid_map:
            userns = self._mapped_userns()
            try:
                rootfs.mount_rootfs(spec.mounts, spec.rootfs, userns, (spec.uid_map[0].host, spec.gid_map[0].host))
            finally:
                os.close(userns)
        else:
            rootfs.mount_rootfs(spec.mounts, spec.rootfs)
        self.mounted = True
        if spec.restore is not None:
            self.cg.create(spec.id, spec.cgroup)
            return self._restore(stdio)
        if "user" in spec.namespaces and spec.uid_map:
            # Through idmapped layers a file is created as the mapped owner: host root is not in
            # the mapping, so write as the container's root (its host ids) instead.
            self._write_etc_files((spec.uid_map[0].host, spec.gid_map[0].host))
        else:
            self._write_etc_files()
        trace("rootfs mounted")

        if self.ctl is not None:
            # Made ahead: it enters the rootfs and unshares its mount namespace on this message.
            parent_ctl = self.ctl
            messages.send(parent_ctl, messages.Mounted())
        else:
            parent_ctl = self._clone(stdio)
        trace("forked")
        if spec.network is not None:
            if not self.asked_attach:
                self._ask_attach(self.pid)
            self._attached()
            trace("attached net")
        messages.send(parent_ctl, messages.Configure(spec.network))
        # While the init sets itself up: our state files. The monitor must be exec'd as soon as the
        # init may run, for it is what notices the exit of a short-lived command.
        self._write_state()
        # The cgroup is made and the init joined to it on a thread, while the init sets up its
        # mounts and we reply to the agent: it only has to be done before the init may exec (it
        # forks nothing until then). The join waits for an RCU grace period (the kernel's
        # cgroup_threadgroup_rwsem), about 10 ms here, and a clone would wait behind it too:
        # hence the cgroup after the clone, not before.
        self.joining = threading.Thread(target=self._join_cgroup, daemon=True)
        self.joining.start()
        pty = -1
        while True:
            msg, fds = messages.recv(parent_ctl, messages.Pty, messages.Error, messages.Ready,
                                     size=65536, max_fds=4)
            if msg is None:
                raise _LaunchError("container init exited during setup", 128)
            if isinstance(msg, messages.Pty):
                pty = fds[0]
            elif isinstance(msg, messages.Error):
                raise _LaunchError(msg.error, msg.exit_code)
            else:
                break
        return self.pid, parent_ctl, pty

    def _clone(self, stdio: tuple[int, int, int] | None) -> socket.socket:
        """The init, cloned now into every new namespace of the spec at once; returns its control socket."""
        spec = self.spec
        parent_ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = 0
        for ns in spec.namespaces:
            if ns != "cgroup":  # a cgroup namespace is rooted where it is made: the init makes it
                flags |= sc.NAMESPACE_FLAGS[ns]  # once it has joined its cgroup (init.run)
        uid_r, uid_w = os.pipe()
        # Enter the rootfs while still host root: in a user namespace its path may cross
        # directories (mode 0700) that the remapped root cannot search. A new mount namespace
        # moves the working directory to its copy. (We go back to / before we exec the monitor.)
        os.chdir(spec.rootfs)
        b = sc.clone(flags)
        if b == 0:  # pid 1 of the new pid namespace, in every new namespace at once
            try:
                parent_ctl.close()
                os.close(uid_w)
                if "user" in spec.namespaces:
                    os.read(uid_r, 1)  # wait for our uid/gid maps
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
                os.close(uid_r)
                init.run(spec, child_ctl, stdio)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    messages.send(child_ctl, messages.Error(f"container init: {e}", 128))
            os._exit(1)
        child_ctl.close()
        os.close(uid_r)
        self.ctl = parent_ctl
        self.pid = b
        if "user" in spec.namespaces:
            self._write_id_maps(b)
            os.write(uid_w, b"1")
        os.close(uid_w)
        return parent_ctl

    def _ask_attach(self, pid: int) -> None:
        """The agent wires the container's veth into the network namespace of `pid` (it owns the
        bridge and holds pyroute2, which would double this process's size and every fork's and
        exec's cost): ask it on the reply socket; _attached() waits for its answer."""
        assert self.reply is not None
        messages.send(self.reply, messages.Attach(pid))
        self.asked_attach = True

    def _attached(self) -> None:
        assert self.reply is not None
        msg, _ = messages.recv(self.reply, messages.Attached, messages.Error)
        if isinstance(msg, messages.Error):
            raise _LaunchError("network: " + msg.error, 128)
        if msg is None:
            raise _LaunchError("network: the agent went away during the start", 128)

    def _write_state(self) -> None:
        write_atomic(self.files.init_pid, json.dumps(
            {"pid": self.pid, "start_time": pid_start_time(self.pid), "shim_pid": os.getpid(),
             "shim_start_time": pid_start_time(os.getpid()), "started_at": time.time()}))
        write_atomic(self.files.spec, self.spec.to_json())

    def _join_cgroup(self) -> None:
        assert self.cg is not None
        try:
            resources = self.spec.cgroup
            if self.spare is not None and self.spare.take(self.spec.id, resources):
                trace("cgroup taken from the spare")
                return
            self.cg.create(self.spec.id, resources)
            trace("cgroup created")
            self.cg.add_process(self.spec.id, self.pid)
            trace("joined cgroup")
            if self.spare is not None:
                self.spare.drop()
        except BaseException as e:
            self.join_error = f"cgroup: {e}"

    def _joined(self) -> None:
        """Wait for the cgroup join; a failed one ends the container before it can exec."""
        if self.joining is not None:
            self.joining.join()
            self.joining = None
        if self.join_error and self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def _restore(self, stdio: tuple[int, int, int] | None) -> tuple[int, socket.socket | None, int]:
        """In a child of the shim: bring a CRIU checkpoint back to life in a fresh cgroup, rootfs and netns.

        The restored tree inherits our cgroups (we join first and tell CRIU to leave cgroups
        alone), runs in a network namespace we made and wired like a new container's (CRIU was told
        at dump time that the netns is external), and gets our stdio pipes in place of the dumped
        ones. Its init is re-parented to the shim, our subreaper parent, when CRIU exits.
        """
        from agent.checkpoint import sharing
        from agent.checkpoint.criu import find_criu

        spec = self.spec
        r = spec.restore
        assert r is not None
        if stdio is None:
            raise _LaunchError("restoring a container with a terminal (-t) is not supported", 128)
        criu = find_criu()
        if criu is None:
            raise _LaunchError("CRIU is not installed (deploy/install-criu.sh)", 128)
        assert self.cg is not None
        self.cg.add_process(spec.id, os.getpid())
        self.in_cgroup = True
        inherit = [(fd, key) for fd, key in zip(stdio, r.stdio, strict=True) if key]
        holder = -1
        if r.netns_key:
            holder, netns_fd = self._netns_holder()
            inherit.append((netns_fd, r.netns_key))
        log_file = os.path.join(spec.state_dir, "restore.log")
        extra = ["--lazy-pages"] if r.lazy else []  # post-copy: memory comes from the agent's lazy-pages daemon
        binds = [(v.target, v.source) for v in spec.volumes if v.key and sharing.shared(v.propagation)]
        if binds:
            extra += ["--action-script", sharing.write_hook(spec.state_dir, binds, log_file)]
        try:
            pid = criu.restore(r.images_dir, root=spec.rootfs, inherit_fds=inherit, tcp_established=True,
                               file_locks=True, manage_cgroups="ignore",
                               # the container's volumes and bind mounts, by the names given at dump
                               external=[f"mnt[{v.key}]:{v.source}" for v in spec.volumes if v.key],
                               pidfile=os.path.join(spec.state_dir, "restore.pid"),
                               log_file=log_file, extra_args=extra)
        except Exception as e:
            raise _LaunchError(f"restore failed: {e}", 128) from e
        finally:
            if holder > 0:
                with contextlib.suppress(OSError):
                    os.kill(holder, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(holder, 0)
        self.pid = pid
        trace("restored")
        if self._moved_here():
            self._arrive(pid)
        return pid, None, -1

    def _moved_here(self) -> bool:
        """A restore with cluster interfaces: peers may already be sending to this host."""
        return bool(self.spec.restore and self.spec.network and self.spec.network.get("overlays"))

    def _arrive(self, pid: int) -> None:
        """In the restored tree's netns (this short-lived child exits next, so the setns stays
        here): lift the lock _netns_holder set, should CRIU not have, and announce the addresses."""
        from agent.checkpoint import netlock
        from agent.runtime import network

        assert self.spec.network is not None
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, sc.CLONE_NEWNET)
            finally:
                os.close(fd)
        except OSError:
            return  # the tree is gone already: the agent sees its exit
        network.announce(network.Endpoint.from_dict(self.spec.network))
        netlock.unlock_here()
        trace("moved: announced, unlocked")

    def _fork_unshared(self, flag: int, inside: Callable[[], None] | None = None) -> tuple[int, int, int]:
        """A child in a new namespace (`flag`), for us to wire up and open; returns (pid, r_up, w_go).

        It writes b"u" once it has unshared. On b"g" it runs `inside` there, writes b"c", and then
        waits until w_go is closed. Whoever holds /proc/PID/ns/... keeps the namespace after it."""
        r_go, w_go = os.pipe()
        r_up, w_up = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(w_go)
                os.close(r_up)
                sc.unshare(flag)
                os.write(w_up, b"u")
                if os.read(r_go, 1) == b"g":
                    if inside is not None:
                        inside()
                    os.write(w_up, b"c")
                    os.read(r_go, 1)
            finally:
                os._exit(0)
        os.close(r_go)
        os.close(w_up)
        if os.read(r_up, 1) != b"u":
            os.close(r_up)
            os.close(w_go)
            os.waitpid(child, 0)
            raise _LaunchError(f"could not make a namespace ({flag:#x}) for the container", 128)
        return child, r_up, w_go

    def _netns_holder(self) -> tuple[int, int]:
        """A new network namespace wired to the bridge (or just lo), held open by a child."""
        spec = self.spec

        def configure() -> None:
            from agent.runtime import network

            if spec.network is None:
                network.loopback_up()
                return
            if self._moved_here():
                from agent.checkpoint import netlock

                netlock.lock_here()  # before any address is up: see agent/checkpoint/netlock.py
            network.configure_inside(network.Endpoint.from_dict(spec.network))
            old_ip = spec.restore.old_ip if spec.restore is not None else ""
            if old_ip:
                # Moved from another host: keep its old address too, so that CRIU can put back
                # sockets bound to it (their peers cannot reach it here; see README). An alias
                # label makes it a secondary address of eth0, with the classic ioctl.
                sc.set_ipv4_address("eth0:0", old_ip, 32)

        child, r_up, w_go = self._fork_unshared(sc.CLONE_NEWNET, configure)
        try:
            if spec.network is not None:
                self._ask_attach(child)
                self._attached()
            os.write(w_go, b"g")
            if os.read(r_up, 1) != b"c":
                raise _LaunchError("could not configure the network namespace for the restore", 128)
            return child, os.open(f"/proc/{child}/ns/net", os.O_RDONLY)
        finally:
            os.close(r_up)
            os.close(w_go)

    def _mapped_userns(self) -> int:
        """An fd of a user namespace with the container's id maps, for idmapped layers."""
        child, r_up, w_go = self._fork_unshared(sc.CLONE_NEWUSER)
        try:
            self._write_id_maps(child)
            return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(r_up)
            os.close(w_go)
            os.waitpid(child, 0)

    def _write_id_maps(self, pid: int) -> None:
        def fmt(maps: list[Any]) -> str:
            return "".join(f"{m.container} {m.host} {m.size}\n" for m in maps)

        # setgroups stays allowed: a map written by host root may permit it, and -u needs it.
        Path(f"/proc/{pid}/uid_map").write_text(fmt(self.spec.uid_map))
        Path(f"/proc/{pid}/gid_map").write_text(fmt(self.spec.gid_map))

    def _write_etc_files(self, as_ids: tuple[int, int] | None = None) -> None:
        """/etc/hosts, hostname and resolv.conf go into the container's own upper layer, not
        bind-mounted from the host: nothing outside the rootfs stays mounted (CRIU's rule).

        Relative to a descriptor of the rootfs, opened first as host root (its path may cross
        mode-0700 directories), and never through a link the image planted. With as_ids, the
        files are created as those (fs) ids: through idmapped layers host root is unmapped.
        """
        root = os.open(self.spec.rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        etc = -1
        try:
            if as_ids is not None:
                sc.setfsuid(as_ids[0])
                sc.setfsgid(as_ids[1])
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir("etc", 0o755, dir_fd=root)
                etc = os.open("etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
            except OSError as e:
                if e.errno == errno.ELOOP or e.errno == errno.ENOTDIR:
                    return  # /etc is a link (or no directory): leave the image's alone
                raise
            for name, text in (("hosts", self.spec.etc_hosts), ("hostname", self.spec.hostname + "\n"),
                               ("resolv.conf", self.spec.etc_resolv)):
                if not text.strip():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISLNK(os.lstat(name, dir_fd=etc).st_mode):
                        os.unlink(name, dir_fd=etc)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=etc)
                try:
                    frames.write_all(fd, text.encode())
                finally:
                    os.close(fd)
        finally:
            if as_ids is not None:
                sc.setfsuid(0)
                sc.setfsgid(0)
            if etc >= 0:
                os.close(etc)
            os.close(root)

    # --- a launch that failed half-way -------------------------------------------------------------

    def _undo(self) -> None:
        """Undo what the launch did so far; each step is idempotent."""
        self._joined()  # never race the join thread's mkdir with our rmdir
        if self.pre is not None:
            self.pre.discard()
            self.pre = None
        if self.spare is not None:
            self.spare.drop()
        if self.mounted:
            rootfs.unmount(self.spec.rootfs)
            self.mounted = False
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if self.cg is not None and not self.in_cgroup:
            with contextlib.suppress(Exception):
                self.cg.destroy(self.spec.id)
        with contextlib.suppress(OSError):
            self.files.socket.unlink()
        with contextlib.suppress(OSError):
            self.files.init_pid.unlink()
