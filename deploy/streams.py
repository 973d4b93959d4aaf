"""Interactive streams for run, attach and exec: the terminal in raw mode, stdin pumped in from a
thread, SIGWINCH as resizes, Ctrl-C proxied as a signal when there is no tty, and the detach
sequence Ctrl-P Ctrl-Q as docker has it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import struct
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Callable, Iterator
from typing import Any

from protos import agent_pb2 as pb

DETACH = b"\x10\x11"  # ctrl-p ctrl-q


def terminal_size() -> tuple[int, int]:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(sys.stdout.fileno(), termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols
    except OSError:
        return 0, 0


class Session:
    """One bidirectional stream: `run(call)` returns the exit code (or None when detached)."""

    def __init__(self, open_msg: pb.OpenStream, interactive: bool, tty: bool) -> None:
        self.open = open_msg
        self.interactive = interactive
        self.tty = tty and sys.stdin.isatty()
        self.q: queue.Queue[pb.StreamInput | None] = queue.Queue()
        self.detached = False
        self.error = ""   # why the container did not run, when it did not (the exit's error)
        self._call: Any = None

    def _requests(self) -> Iterator[pb.StreamInput]:
        yield pb.StreamInput(open=self.open)
        while True:
            item = self.q.get()
            if item is None:
                return
            yield item

    def _stdin_pump(self) -> None:
        fd = sys.stdin.fileno()
        prev = b""
        while True:
            try:
                data = os.read(fd, 32768)
            except OSError:
                data = b""
            if not data:
                self.q.put(pb.StreamInput(close_stdin=True))
                return
            if self.tty and DETACH in prev[-1:] + data:
                self.detached = True
                self.q.put(None)
                if self._call is not None:
                    self._call.cancel()
                return
            prev = data
            self.q.put(pb.StreamInput(stdin=data))

    def run(self, call: Callable[[Iterator[pb.StreamInput]], Iterator[pb.StreamOutput]],
            on_started: Callable[[], None] | None = None) -> int | None:
        rows, cols = terminal_size() if self.tty else (0, 0)
        if rows:
            self.open.size.rows, self.open.size.cols = rows, cols
        saved: Any = None
        old_handlers: dict[signal.Signals, Any] = {}
        if self.tty:
            saved = termios.tcgetattr(sys.stdin.fileno())
            ttymod.setraw(sys.stdin.fileno(), termios.TCSANOW)  # keep what was typed ahead

            def winch(_s: int, _f: object) -> None:
                r, c = terminal_size()
                self.q.put(pb.StreamInput(resize=pb.Resize(rows=r, cols=c)))

            old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)
        else:
            def proxy(signum: int, _f: object) -> None:
                self.q.put(pb.StreamInput(signal=signal.Signals(signum).name))

            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old_handlers[s] = signal.signal(s, proxy)
        if self.interactive:
            threading.Thread(target=self._stdin_pump, daemon=True).start()
        code: int | None = None
        try:
            self._call = call(self._requests())
            for out in self._iterate():
                kind = out.WhichOneof("kind")
                if kind == "stdout":
                    os.write(sys.stdout.fileno(), out.stdout)
                elif kind == "stderr":
                    os.write(sys.stderr.fileno(), out.stderr)
                elif kind == "started" and on_started:
                    on_started()
                elif kind == "exit":
                    code = out.exit.exit_code
                    self.error = out.exit.error
                    if out.exit.error:
                        err = out.exit.error
                        if self.tty:
                            err = err.replace("\n", "\r\n")
                        os.write(sys.stderr.fileno(), (err.rstrip() + "\n").encode())
                    break
        finally:
            self.q.put(None)
            if saved is not None:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            for s, h in old_handlers.items():
                with contextlib.suppress(Exception):
                    signal.signal(s, h)
        return None if self.detached else code

    def _iterate(self) -> Iterator[pb.StreamOutput]:
        import grpc

        try:
            yield from self._call
        except grpc.RpcError as e:
            if not (self.detached and e.code() == grpc.StatusCode.CANCELLED):
                raise
