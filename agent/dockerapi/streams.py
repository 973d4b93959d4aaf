"""Docker's stream formats: the multiplexed framing of stdout/stderr without a TTY, a hijacked (or
websocket) client's side of the attach session (agent/attachsession.py), and detach keys."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .http import HTTPError

STDIN, STDOUT, STDERR = 0, 1, 2
_MUX = struct.Struct(">BxxxI")
DEFAULT_DETACH = "ctrl-p,ctrl-q"


def mux(stream: int, data: bytes) -> bytes:
    """One frame of application/vnd.docker.multiplexed-stream: [stream, 0, 0, 0, len32] + data."""
    return _MUX.pack(stream, len(data)) + data


def parse_detach_keys(spec: str) -> bytes:
    """docker's --detach-keys: comma-separated 'a'..'z' letters or ctrl-X (X in a-z, @, [, \\, ], ^, _)."""
    out = bytearray()
    for part in spec.split(","):
        p = part.strip()
        if len(p) == 1:
            out.append(ord(p))
        elif p.lower().startswith("ctrl-") and len(p) == 6:
            ch = p[5].lower()
            if "a" <= ch <= "z":
                out.append(ord(ch) - ord("a") + 1)
            elif ch in "@[\\]^_":
                out.append(ord(ch.upper()) - 64)
            else:
                raise HTTPError(400, f"Invalid detach keys ({spec}) provided: {p!r}")
        else:
            raise HTTPError(400, f"Invalid detach keys ({spec}) provided: {p!r}")
    return bytes(out)


class DetachScanner:
    """Finds the detach sequence in typed input; bytes of a partial match are held back until the
    next byte shows whether the sequence goes on (as docker's term.EscapeProxy does)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence was typed)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for b in data:
            one = bytes([b])
            if self.keys.startswith(self.held + one):
                self.held += one
                if self.held == self.keys:
                    self.held = b""
                    return bytes(out), True
                continue
            out += self.held
            self.held = b""
            if self.keys.startswith(one):
                self.held = one
            else:
                out += one
        return bytes(out), False


class Sink(Protocol):
    """Where the client's output goes: the hijacked socket's writer, or a websocket's."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


async def relay_attach(m: Any, container: Any, monitor: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                       cli_r: asyncio.StreamReader, cli_w: Sink, *, tty: bool,
                       stdin: bool, stdin_once: bool, stdout: bool, stderr: bool, detach: bytes) -> None:
    """The client's side of agent/attachsession.py's session (the one relay, the gRPC Attach's too):
    its output to the client, raw with a TTY (or a websocket), framed without; the client's input
    to the container, until the detach keys. The client's half-close closes the container's stdin
    when it was created with StdinOnce; output goes on until the exit either way."""
    from agent.attachsession import AttachOptions, CloseStdin, Exited, Input, Output, Stdin, attach

    detached = asyncio.Event()

    async def inputs() -> AsyncIterator[Input]:
        scan = DetachScanner(detach)
        while True:
            data = await cli_r.read(65536)
            if not data:
                if stdin and stdin_once:
                    yield CloseStdin()
                return
            if not stdin:
                continue
            data, hit = scan.feed(data)
            if data:
                yield Stdin(data)
            if hit:
                detached.set()
                return

    events = attach(m, AttachOptions(container=container.id, stdin=stdin, monitor=monitor, known=container), inputs())
    stop = asyncio.ensure_future(detached.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
                return
            try:
                ev = nxt.result()
            except StopAsyncIteration:
                return
            if isinstance(ev, Output) and (stdout if ev.stream == "stdout" else stderr):
                cli_w.write(ev.data if tty else mux(STDOUT if ev.stream == "stdout" else STDERR, ev.data))
                await cli_w.drain()
            elif isinstance(ev, Exited):
                return
    finally:
        stop.cancel()
        with contextlib.suppress(BaseException):
            await events.aclose()  # type: ignore[attr-defined]  # (an async generator)
        with contextlib.suppress(Exception):
            cli_w.close()
