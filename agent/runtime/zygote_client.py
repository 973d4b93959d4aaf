"""The agent's side of the zygote: start it, send it requests, read replies, all without blocking.

See agent/runtime/zygote.py for the protocol. The zygote is restarted if it dies.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading

from agent.runtime import messages


class ZygoteError(Exception):
    pass


class Reply:
    """The agent's end of one request: a stream of messages, possibly carrying fds."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    async def recv(self, *expected: type[messages.Message],
                   timeout: float | None = None) -> tuple[messages.Message | None, list[int]]:
        """The next message, one of `expected` (else ProtocolError, naming it), and its fds."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        while True:
            try:
                return messages.recv(self.sock, *expected, max_fds=4)
            except BlockingIOError:
                loop.add_reader(self.sock.fileno(), ready)
                try:
                    await asyncio.wait_for(fut, timeout)
                finally:
                    loop.remove_reader(self.sock.fileno())
                fut = loop.create_future()

    def send(self, msg: messages.Message) -> None:
        """An answer to the other end (a short message: the socket has room for it)."""
        messages.send(self.sock, msg)

    def close(self) -> None:
        self.sock.close()


class Zygote:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._env = env
        self.cgroups: tuple[str, str] | None = None  # (root, parent), detected once in the zygote

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(self._env or os.environ)
        if self.cgroups is not None:
            env["DOCKYARD_ZYGOTE_CGROUPS"] = json.dumps(self.cgroups)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agent.runtime.zygote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, cwd="/",
        )
        theirs.close()
        self._sock = ours

    def ensure(self) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._sock is not None:
                    self._sock.close()
                self._spawn()

    def request(self, req: messages.Start | messages.Exec, fds: list[int] | None = None) -> Reply:
        """Send a request; the caller owns (and closes) the fds it passed, and the Reply."""
        self.ensure()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            payload = messages.encode(req)
            with self._lock:
                assert self._sock is not None
                self._sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", [theirs.fileno(), *(fds or [])]))])
        except OSError as e:
            ours.close()
            raise ZygoteError(f"zygote request failed: {e}") from e
        finally:
            theirs.close()
        return Reply(ours)

    def stop(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._proc is not None:
                with contextlib.suppress(Exception):
                    self._proc.wait(timeout=2)
                if self._proc.poll() is None:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None
