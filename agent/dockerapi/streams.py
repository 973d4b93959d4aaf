"""Docker's stream formats: the multiplexed framing of stdout/stderr without a TTY, the relay between
a hijacked client connection and a container's monitor socket, and detach keys."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Protocol

from agent.runtime import frames

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


async def relay_attach(mon_r: asyncio.StreamReader, mon_w: asyncio.StreamWriter,
                       cli_r: asyncio.StreamReader, cli_w: Sink, *, tty: bool,
                       stdin: bool, stdin_once: bool, stdout: bool, stderr: bool, detach: bytes) -> None:
    """Copy the monitor's output to the client (raw with a TTY, framed without) until the process
    exits, and the client's input to the monitor. The client's half-close closes the container's
    stdin when the container was created with StdinOnce; output goes on until the exit either way."""
    detached = asyncio.Event()

    async def pump_in() -> None:
        scan = DetachScanner(detach)
        while True:
            data = await cli_r.read(65536)
            if not data:
                if stdin and stdin_once:
                    mon_w.write(frames.encode(frames.CLOSE_STDIN))
                    await mon_w.drain()
                return
            if not stdin:
                continue
            data, hit = scan.feed(data)
            if data:
                mon_w.write(frames.encode(frames.STDIN, data))
                await mon_w.drain()
            if hit:
                detached.set()
                return

    inbound = asyncio.ensure_future(pump_in())
    stop = asyncio.ensure_future(detached.wait())
    dec = frames.Decoder()
    try:
        while True:
            read = asyncio.ensure_future(mon_r.read(65536))
            done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                return
            data = read.result()
            if not data:
                return
            out = bytearray()
            ended = False
            for kind, payload in dec.feed(data):
                if kind == frames.STDOUT and stdout:
                    out += payload if tty else mux(STDOUT, payload)
                elif kind == frames.STDERR and stderr:
                    out += payload if tty else mux(STDERR, payload)
                elif kind == frames.EXIT:
                    ended = True
            if out:
                cli_w.write(bytes(out))
                await cli_w.drain()
            if ended:
                return
    finally:
        inbound.cancel()
        stop.cancel()
        with contextlib.suppress(Exception):
            mon_w.close()
        with contextlib.suppress(Exception):
            cli_w.close()
