"""The shim: one small process per container that outlives the agent (as conmon does for podman).

Forked from the zygote and detached (its own session, reparented to init), it

  * sets up the cgroup and the rootfs mount, forks the container init into new namespaces,
    joins it to the cgroup and the network, and lets it exec;
  * holds the container's stdio: writes every byte to the log file (docker's json-file format)
    and relays it to attached clients; takes stdin and terminal resizes from them;
  * is the subreaper of everything in the container, so it always learns the real exit status,
    which it writes to exit.json before it tears down mounts, cgroup and network and exits.

A restarted agent finds a running shim by its pid file and socket; an exited one by exit.json.
The shim is a forked copy of the zygote, so its memory is mostly shared pages (see BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Any, NoReturn

from agent.runtime import cgroups, frames, init, rootfs
from agent.runtime import syscalls as sc
from agent.runtime.spec import RuntimeSpec, write_atomic

DRAIN_SECONDS = 2.0
_TRACE = os.environ.get("DOCKYARD_TRACE")


def trace(what: str) -> None:
    """DOCKYARD_TRACE=FILE: time stamps of the start and exit path, for finding slow steps."""
    if _TRACE:
        with contextlib.suppress(OSError), open(_TRACE, "a") as f:
            f.write(f"{time.monotonic():.6f} {os.getpid()} {what}\n")


class ShimFiles:
    """Where a container's runtime files live; shared by the shim and the agent."""

    def __init__(self, state_dir: str | Path, socket_path: str | Path) -> None:
        self.dir = Path(state_dir)
        self.spec = self.dir / "runtime.json"
        self.shim_pid = self.dir / "shim.pid"
        self.init_pid = self.dir / "init.pid"
        self.exit = self.dir / "exit.json"
        self.log = self.dir / "container.log"
        self.socket = Path(socket_path)


def pid_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: with the pid it names one process, even after pid reuse."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rindex(")") + 2:].split()[19])


def resources_from_dict(d: dict[str, Any]) -> cgroups.Resources:
    d = dict(d)
    for key in ("device_read_bps", "device_write_bps"):
        d[key] = tuple(cgroups.DeviceRate(path=r["path"], rate=int(r["rate"])) for r in d.get(key, ()))
    return cgroups.Resources(**d)


def process_alive(pid: int, start_time: int) -> bool:
    """This very process (pid and start time) exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    rest = data[data.rindex(")") + 2:].split()
    return rest[0] not in ("Z", "X") and int(rest[19]) == start_time


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _LogWriter:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, stream: str, data: bytes) -> None:
        ts = _now_rfc3339()
        lines = data.split(b"\n")
        out = []
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            text = line.decode("utf-8", "replace") + ("" if last else "\n")
            out.append(json.dumps({"log": text, "stream": stream, "time": ts}))
        if out:
            os.write(self.fd, ("\n".join(out) + "\n").encode())


def start(spec: RuntimeSpec, files: ShimFiles, reply: socket.socket) -> NoReturn:
    """Runs in the double-forked shim process. Replies {"pid"} or {"error"} on `reply`, then serves."""
    try:
        shim = _Shim(spec, files)
        pid = shim.launch()
    except BaseException as e:
        msg = e.args[0] if isinstance(e, _LaunchError) else f"{type(e).__name__}: {e}"
        code = e.args[1] if isinstance(e, _LaunchError) else 128
        with contextlib.suppress(OSError):
            files.socket.unlink()
        with contextlib.suppress(OSError):
            reply.send(json.dumps({"error": msg, "exit_code": code}).encode())
        os._exit(1)
    reply.send(json.dumps({"pid": pid, "shim_pid": os.getpid()}).encode())
    reply.close()
    shim.serve()
    os._exit(0)


class _LaunchError(Exception):
    pass


class _Shim:
    def __init__(self, spec: RuntimeSpec, files: ShimFiles) -> None:
        self.spec = spec
        self.files = files
        self.sel = selectors.DefaultSelector()
        self.clients: dict[socket.socket, frames.Decoder] = {}
        self.pid = 0
        self.pidfd = -1
        self.ctl: socket.socket | None = None
        self.pty = -1
        self.stdin_w = -1
        self.stdin_buf = bytearray()
        self.outputs: dict[int, bytes] = {}   # fd -> frame kind
        self.log: _LogWriter | None = None
        self.released = not spec.hold
        self.ready = False
        self.status: int | None = None
        self.cg: cgroups.CgroupDriver | None = None
        self.net: Any = None
        self.endpoint: Any = None
        self.mounted = False
        self.listener: socket.socket | None = None
        self.started_at = 0.0

    # --- launch -------------------------------------------------------------------------------

    def launch(self) -> int:
        """Start the container; returns its init's pid once it is ready to exec.

        The heavy work (cgroup, mounts, namespaces, netlink) runs in a short-lived child, the
        launcher, and this process only receives the result. A forked Python process keeps private
        every page it touches, so the long-lived monitor touches as little as it can (BENCHMARKS.md).
        The container init ends up our child anyway: we are its subreaper.
        """
        spec = self.spec
        trace("shim: launch")
        sc.set_child_subreaper()
        self.log = _LogWriter(spec.log_path or str(self.files.log))
        with contextlib.suppress(FileNotFoundError):
            self.files.socket.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.files.socket))
        self.listener.listen(16)
        stdio: tuple[int, int, int] | None = None
        if not spec.process.tty:
            if spec.process.stdin:
                r, self.stdin_w = os.pipe()
                os.set_blocking(self.stdin_w, False)
            else:
                # A pipe with no writer reads as EOF like /dev/null, but is not a host file that
                # CRIU would have to find a mount for.
                r, w = os.pipe()
                os.close(w)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            stdio = (r, out_w, err_w)
            self.outputs = {out_r: frames.STDOUT, err_r: frames.STDERR}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        launcher = os.fork()
        if launcher == 0:
            ours.close()
            self.listener.close()
            for fd in [*self.outputs, self.stdin_w]:
                if fd >= 0:
                    os.close(fd)
            try:
                pid, ctl, pty = self._launch(stdio)
                fds = ([ctl.fileno()] if ctl is not None else []) + ([pty] if pty >= 0 else [])
                init.send(theirs, {"op": "launched", "pid": pid, "ctl": ctl is not None}, fds)
                os._exit(0)
            except BaseException as e:
                msg = e.args[0] if isinstance(e, _LaunchError) else f"{type(e).__name__}: {e}"
                code = e.args[1] if isinstance(e, _LaunchError) else 128
                self._teardown()
                with contextlib.suppress(OSError):
                    init.send(theirs, {"op": "error", "error": msg, "exit_code": code})
                os._exit(1)
        theirs.close()
        for fd in stdio or ():
            os.close(fd)
        try:
            msg, fds = init.recv(ours)
        finally:
            ours.close()
            os.waitpid(launcher, 0)
        if msg is None or msg.get("op") != "launched":
            err = (msg or {}).get("error", "the launcher died")
            raise _LaunchError(err, int((msg or {}).get("exit_code", 128)))
        self.pid = int(msg["pid"])
        if msg.get("ctl"):
            self.ctl = socket.socket(fileno=fds.pop(0))
        if fds:
            self.pty = fds[0]
            self.outputs = {self.pty: frames.STDOUT}
        self.mounted = True
        self.pidfd = sc.pidfd_open(self.pid)
        self.started_at = time.time()
        write_atomic(self.files.init_pid, json.dumps(
            {"pid": self.pid, "start_time": pid_start_time(self.pid), "shim_pid": os.getpid(),
             "shim_start_time": pid_start_time(os.getpid()), "started_at": self.started_at}))
        self.ready = True
        trace("ready")
        return self.pid

    def _launch(self, stdio: tuple[int, int, int] | None) -> tuple[int, socket.socket | None, int]:
        """In the launcher: cgroup, rootfs, namespaces, network; returns (pid, control socket, pty)."""
        spec = self.spec
        trace("launch")
        self.cg = cgroups.detect(spec.cgroup_root, spec.cgroup_parent)
        self.cg.create(spec.id, resources_from_dict(spec.cgroup))
        trace("cgroup created")
        os.makedirs(spec.rootfs, exist_ok=True)
        rootfs.mount_rootfs(spec.mounts, spec.rootfs)
        self.mounted = True
        if spec.restore is not None:
            return self._restore(stdio)
        self._write_etc_files()
        trace("rootfs mounted")

        parent_ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = 0
        for ns in spec.namespaces:
            flags |= sc.NAMESPACE_FLAGS[ns]
        uid_r, uid_w = os.pipe()
        # Enter the rootfs while still host root: in a user namespace its path may cross
        # directories (mode 0700) that the remapped root cannot search. A new mount namespace
        # moves the working directory to its copy. (We are the launcher: our cwd is ours to change.)
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
                    init.send(child_ctl, {"op": "error", "error": f"container init: {e}", "exit_code": 128})
            os._exit(1)
        child_ctl.close()
        for fd in stdio or ():
            os.close(fd)
        os.close(uid_r)
        self.ctl = parent_ctl
        if "user" in spec.namespaces:
            self._write_id_maps(b)
            os.write(uid_w, b"1")
        os.close(uid_w)
        self.pid = b
        trace("forked")
        configure: dict[str, Any] = {"op": "configure"}
        if spec.network is not None:
            from agent.runtime import network

            self.net = network.BridgeNetwork(Path(spec.network_state_dir), spec.bridge, spec.subnet)
            self.endpoint = network.Endpoint.from_dict(spec.network)
            self.net.attach(self.endpoint, self.pid)
            trace("attached net")
            configure["endpoint"] = spec.network
        init.send(parent_ctl, configure)
        # The init sets up its mounts meanwhile: joining six v1 hierarchies costs an RCU grace
        # period each, and it only has to be done before the init reports ready (it forks nothing).
        self.cg.add_process(spec.id, self.pid)
        trace("joined cgroup")
        pty = -1
        while True:
            msg, fds = init.recv(parent_ctl)
            if msg is None:
                raise _LaunchError("container init exited during setup", 128)
            if msg["op"] == "pty":
                pty = fds[0]
            elif msg["op"] == "error":
                raise _LaunchError(msg["error"], int(msg.get("exit_code", 127)))
            elif msg["op"] == "ready":
                break
        return self.pid, parent_ctl, pty

    def _restore(self, stdio: tuple[int, int, int] | None) -> tuple[int, socket.socket | None, int]:
        """In the launcher: bring a CRIU checkpoint back to life in a fresh cgroup, rootfs and netns.

        The restored tree inherits our cgroups (we join first and tell CRIU to leave cgroups
        alone), runs in a network namespace we made and wired like a new container's (CRIU was told
        at dump time that the netns is external), and gets our stdio pipes in place of the dumped
        ones. Its init is re-parented to the shim, our subreaper parent, when CRIU exits.
        """
        from agent.checkpoint.criu import find_criu

        spec = self.spec
        r = spec.restore or {}
        if stdio is None:
            raise _LaunchError("restoring a container with a terminal (-t) is not supported", 128)
        criu = find_criu()
        if criu is None:
            raise _LaunchError("CRIU is not installed (deploy/install-criu.sh)", 128)
        assert self.cg is not None
        self.cg.add_process(spec.id, os.getpid())
        inherit = [(fd, key) for fd, key in zip(stdio, r["stdio"], strict=True) if key]
        holder = -1
        if r.get("netns_key"):
            holder, netns_fd = self._netns_holder()
            inherit.append((netns_fd, r["netns_key"]))
        try:
            pid = criu.restore(r["images_dir"], root=spec.rootfs, inherit_fds=inherit, tcp_established=True,
                               file_locks=True, manage_cgroups="ignore",
                               pidfile=os.path.join(spec.state_dir, "restore.pid"),
                               log_file=os.path.join(spec.state_dir, "restore.log"),
                               # post-copy: memory comes from the agent's lazy-pages daemon
                               extra_args=["--lazy-pages"] if r.get("lazy") else [])
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
        return pid, None, -1

    def _netns_holder(self) -> tuple[int, int]:
        """A new network namespace wired to the bridge (or just lo), held open by a child."""
        spec = self.spec
        r_go, w_go = os.pipe()
        r_up, w_up = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                from agent.runtime import network

                os.close(w_go)
                os.close(r_up)
                sc.unshare(sc.CLONE_NEWNET)
                os.write(w_up, b"u")
                os.read(r_go, 1)
                if spec.network is not None:
                    network.configure_inside(network.Endpoint.from_dict(spec.network))
                    old_ip = (spec.restore or {}).get("old_ip")
                    if old_ip:
                        # Moved from another host: keep its old address too, so that CRIU can put
                        # back sockets bound to it (their peers cannot reach it here; see README).
                        from pyroute2 import IPRoute

                        with IPRoute() as ipr:
                            ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address=old_ip, prefixlen=32)
                else:
                    network.loopback_up()
                os.write(w_up, b"c")
                os.read(r_go, 1)
            finally:
                os._exit(0)
        os.close(r_go)
        os.close(w_up)
        if os.read(r_up, 1) != b"u":
            raise _LaunchError("could not make a network namespace for the restore", 128)
        if spec.network is not None:
            from agent.runtime import network

            self.net = network.BridgeNetwork(Path(spec.network_state_dir), spec.bridge, spec.subnet)
            self.endpoint = network.Endpoint.from_dict(spec.network)
            self.net.attach(self.endpoint, child)
        os.write(w_go, b"g")
        if os.read(r_up, 1) != b"c":
            raise _LaunchError("could not configure the network namespace for the restore", 128)
        fd = os.open(f"/proc/{child}/ns/net", os.O_RDONLY)
        os.close(r_up)
        os.close(w_go)
        return child, fd

    def _write_id_maps(self, pid: int) -> None:
        def fmt(maps: list[Any]) -> str:
            return "".join(f"{m.container} {m.host} {m.size}\n" for m in maps)

        # setgroups stays allowed: a map written by host root may permit it, and -u needs it.
        Path(f"/proc/{pid}/uid_map").write_text(fmt(self.spec.uid_map))
        Path(f"/proc/{pid}/gid_map").write_text(fmt(self.spec.gid_map))

    def _write_etc_files(self) -> None:
        """/etc/hosts, hostname and resolv.conf go into the container's own upper layer, not
        bind-mounted from the host: nothing outside the rootfs stays mounted (CRIU's rule)."""
        etc = os.path.join(self.spec.rootfs, "etc")
        if os.path.islink(etc):
            return
        os.makedirs(etc, exist_ok=True)
        for name, text in (("hosts", self.spec.etc_hosts), ("hostname", self.spec.hostname + "\n"),
                           ("resolv.conf", self.spec.etc_resolv)):
            if not text.strip():
                continue
            path = os.path.join(etc, name)
            if os.path.islink(path):
                os.unlink(path)  # never follow a link planted by the image out of the rootfs
            with open(path, "w") as f:
                f.write(text)

    # --- serve --------------------------------------------------------------------------------

    def serve(self) -> None:
        assert self.listener is not None
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.pidfd, selectors.EVENT_READ, "exit")
        if self.ctl is not None:  # None when restored: the process already runs
            self.sel.register(self.ctl, selectors.EVENT_READ, "ctl")
        for fd in self.outputs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, "output")
        write_atomic(self.files.shim_pid, str(os.getpid()))
        if self.released:
            self._go()
        while self.status is None:
            for key, mask in self.sel.select(timeout=5.0):
                self._dispatch(key, mask)
            self._reap()
        self._finish()

    def _go(self) -> None:
        if self.ctl is None:
            return
        with contextlib.suppress(OSError):
            init.send(self.ctl, {"op": "go"})

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        what = key.data
        if what == "accept":
            assert self.listener is not None
            conn, _ = self.listener.accept()
            conn.setblocking(True)
            hello = {"pid": self.pid, "started_at": self.started_at, "tty": self.spec.process.tty}
            try:
                conn.sendall(frames.encode_json(frames.HELLO, hello))
            except OSError:
                conn.close()
                return
            self.clients[conn] = frames.Decoder()
            self.sel.register(conn, selectors.EVENT_READ, "client")
        elif what == "client":
            self._client_input(key.fileobj)  # type: ignore[arg-type]
        elif what == "output":
            self._output(key.fd)
        elif what == "stdin":
            self._flush_stdin()
        elif what == "ctl":
            assert self.ctl is not None
            try:
                msg, _ = init.recv(self.ctl)
            except OSError:
                msg = None
            if msg is None:  # execve happened (close-on-exec) or the init died
                self.sel.unregister(self.ctl)
                self.ctl.close()
                self.ctl = None
            elif msg.get("op") == "error" and self.log is not None:
                self.exec_error = msg
                self.log.write("stderr", (msg["error"] + "\n").encode())
                self._broadcast(frames.STDERR, (msg["error"] + "\n").encode())
        elif what == "exit":
            self._reap()

    def _output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the pty's last writer has gone
                raise
            data = b""
        if not data:
            self.sel.unregister(fd)
            self.outputs.pop(fd, None)
            if fd != self.pty:
                os.close(fd)
            return
        kind = self.outputs[fd]
        assert self.log is not None
        self.log.write("stdout" if kind == frames.STDOUT else "stderr", data)
        self._broadcast(kind, data)

    def _broadcast(self, kind: bytes, data: bytes) -> None:
        frame = frames.encode(kind, data)
        for conn in list(self.clients):
            try:
                conn.sendall(frame)
            except OSError:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.clients.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def _client_input(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        try:
            msgs = self.clients[conn].feed(data)
        except ValueError:
            self._drop(conn)
            return
        for kind, payload in msgs:
            if kind == frames.STDIN:
                if self.pty >= 0:
                    frames.write_all(self.pty, payload)
                elif self.stdin_w >= 0:
                    self.stdin_buf += payload
                    self._flush_stdin()
            elif kind == frames.CLOSE_STDIN:
                self._close_stdin()
            elif kind == frames.RESIZE and self.pty >= 0:
                size = json.loads(payload)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(self.pty, termios.TIOCSWINSZ,
                                struct.pack("HHHH", int(size["rows"]), int(size["cols"]), 0, 0))
            elif kind == frames.RELEASE and not self.released:
                self.released = True
                self._go()

    def _flush_stdin(self) -> None:
        while self.stdin_buf and self.stdin_w >= 0:
            try:
                n = os.write(self.stdin_w, self.stdin_buf)
            except BlockingIOError:
                break
            except OSError:  # the container closed its stdin
                self.stdin_buf.clear()
                self._close_stdin()
                return
            del self.stdin_buf[:n]
        watching = self.stdin_w >= 0 and self.stdin_w in self.sel.get_map()
        if self.stdin_buf and not watching:
            self.sel.register(self.stdin_w, selectors.EVENT_WRITE, "stdin")
        elif not self.stdin_buf and watching:
            self.sel.unregister(self.stdin_w)
        if getattr(self, "_close_pending", False) and not self.stdin_buf:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin_w < 0:
            return
        if self.stdin_buf:
            self._close_pending = True
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.stdin_w)
        os.close(self.stdin_w)
        self.stdin_w = -1

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = status

    # --- exit ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        assert self.status is not None
        trace("exited")
        finished_at = time.time()
        # Whatever is still buffered in the pipes belongs in the log.
        deadline = time.monotonic() + DRAIN_SECONDS
        while self.outputs and time.monotonic() < deadline:
            for key, _mask in self.sel.select(timeout=0.1):
                if key.data == "output":
                    self._output(key.fd)
        status = self.status
        code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        oom = False
        with contextlib.suppress(Exception):
            self.cg = self.cg or cgroups.detect(self.spec.cgroup_root, self.spec.cgroup_parent)
            oom = self.cg.oom_kills(self.spec.id) > 0
        result = {"exit_code": code, "oom_killed": oom, "finished_at": finished_at,
                  "error": getattr(self, "exec_error", {}).get("error", "")}
        trace("drained")
        # Report first, tidy up after: whoever waits for the exit code need not wait for the
        # unmount and the cgroup removal (the agent's rm repeats both, idempotently, if it races).
        write_atomic(self.files.exit, json.dumps(result))
        self._broadcast(frames.EXIT, json.dumps(result).encode())
        self._teardown()
        trace("torn down")
        for conn in list(self.clients):
            self._drop(conn)
        with contextlib.suppress(OSError):
            self.files.socket.unlink()
        with contextlib.suppress(OSError):
            self.files.shim_pid.unlink()

    def _teardown(self) -> None:
        """Undo the launch: also used when a launch fails half-way. Each step is idempotent."""
        spec = self.spec
        if self.cg is None and self.ready:
            self.cg = cgroups.detect(spec.cgroup_root, spec.cgroup_parent)
        if self.net is None and self.ready and spec.network is not None:
            from agent.runtime import network

            self.net = network.BridgeNetwork(Path(spec.network_state_dir), spec.bridge, spec.subnet)
            self.endpoint = network.Endpoint.from_dict(spec.network)
        if self.net is not None and self.endpoint is not None:
            with contextlib.suppress(Exception):
                self.net.detach(self.endpoint)
            trace("teardown: network")
        if self.mounted:
            with contextlib.suppress(OSError):
                sc.umount(self.spec.rootfs, sc.MNT_DETACH)
            self.mounted = False
            trace("teardown: umount")
        if self.pid and self.status is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap_all()
        if self.cg is not None:
            with contextlib.suppress(Exception):
                self.cg.destroy(self.spec.id)
        if self.listener is not None and not self.ready:
            with contextlib.suppress(OSError):
                self.files.socket.unlink()

    def _reap_all(self) -> None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == self.pid and self.status is None:
                self.status = status
            if pid == 0:
                time.sleep(0.005)
