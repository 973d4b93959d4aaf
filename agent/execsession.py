"""One exec'd process in a running container, for any front end (the gRPC Exec stream, the Docker
API's hijacked exec): the pipes or terminal it gets, its output as it comes, its stdin, its
terminal size, and its exit status. The zygote forks it (ContainerManager.exec_request)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from collections.abc import AsyncIterator
from typing import Any

from agent.runtime import frames, messages
from agent.runtime.spec import ProcessSpec


class ExecSession:
    def __init__(self, manager: Any, container: str, proc: ProcessSpec, size: tuple[int, int] | None = None) -> None:
        self.m = manager
        self.container = container
        self.proc = proc
        self.size = size
        self.exit_code: int | None = None
        self.error = ""
        self.pid = 0
        self._ours: dict[int, str] = {}
        self._stdin = -1
        self._master = -1
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._reply: Any = None
        self._rtask: asyncio.Task[None] | None = None
        self._watched: list[int] = []

    def start(self) -> None:
        """Fork the process; raises the manager's AgentError (not running, paused, no such container)."""
        theirs: list[int] = []
        if not self.proc.tty:
            if self.proc.stdin:
                r, self._stdin = os.pipe()
            else:
                r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            theirs = [r, out_w, err_w]
            self._ours = {out_r: "stdout", err_r: "stderr"}
        try:
            self._reply = self.m.exec_request(self.container, self.proc, theirs)
        except BaseException:
            for fd in [*self._ours, self._stdin]:
                if fd >= 0:
                    os.close(fd)
            self._ours, self._stdin = {}, -1
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        for fd, stream in self._ours.items():
            self._watch(fd, stream)
        self._rtask = asyncio.ensure_future(self._replies())

    def _watch(self, fd: int, stream: str) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        queue = self._queue

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                queue.put_nowait(("eof", stream))
                return
            queue.put_nowait((stream, data))

        loop.add_reader(fd, readable)
        self._watched.append(fd)

    async def _replies(self) -> None:
        while True:
            try:
                msg, fds = await self._reply.recv(messages.Pty, messages.Started, messages.Error,
                                                  messages.Exit, messages.Failed)
            except messages.ProtocolError as e:
                self._queue.put_nowait(("exit", messages.Failed(f"exec: {e}", 126)))
                return
            if msg is None:
                self._queue.put_nowait(("exit", messages.Failed("exec process vanished", 126)))
                return
            if isinstance(msg, messages.Pty):
                self._queue.put_nowait(("pty", fds[0]))
            elif isinstance(msg, messages.Error):   # it could not be run: said on its stderr
                self.error = msg.error
                self._queue.put_nowait(("stderr", (msg.error + "\n").encode()))
            elif isinstance(msg, messages.Exit | messages.Failed):
                self._queue.put_nowait(("exit", msg))
                return
            elif isinstance(msg, messages.Started):
                self.pid = msg.pid

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """("stdout" | "stderr", bytes) until the process has exited and its output is read;
        exit_code and error are set then."""
        open_streams = len(self._ours)
        exit_msg: messages.Exit | messages.Failed | None = None
        while exit_msg is None or open_streams > 0:
            try:
                kind, value = await asyncio.wait_for(self._queue.get(), 2.0 if exit_msg else None)
            except TimeoutError:
                break  # exited, and something it forked still holds its output open
            if kind == "pty":
                self._master = value
                if self.size:
                    self.resize(*self.size)
                self._watch(value, "stdout")
                open_streams += 1
            elif kind == "eof":
                open_streams -= 1
            elif kind == "exit":
                exit_msg = value
            else:
                yield kind, value
        assert exit_msg is not None
        self.exit_code = exit_msg.exit_code
        if isinstance(exit_msg, messages.Failed):
            self.error = exit_msg.error or self.error

    async def write(self, data: bytes) -> None:
        target = self._master if self._master >= 0 else self._stdin
        if target >= 0:
            await asyncio.to_thread(frames.write_all, target, data)

    def close_stdin(self) -> None:
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1

    def resize(self, rows: int, cols: int) -> None:
        self.size = (rows, cols)
        if self._master >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def kill(self) -> None:
        """SIGKILL the process (a health probe past its timeout)."""
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, 9)

    def close(self) -> None:
        if self._rtask is not None:
            self._rtask.cancel()
        if self._reply is not None:
            self._reply.close()
        self.close_stdin()
        loop = asyncio.get_running_loop()
        for fd in self._watched:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._watched = []
        self._master = -1
