"""An attach session: the relay between a client and a container's monitor, as plain events, so
that the gRPC servicer only converts (execsession.py does the same for exec).

``attach(manager, options, inputs)`` is an async generator: it takes the client's ``Input`` events
(stdin, close-stdin, resize, signal) and yields ``Output``, ``Started`` and finally one ``Exited``.
Errors before the stream begins (no such container, not running, a bad config to create) are raised
as the AgentError or ImageError they are; a start that fails is an ``Exited`` with the error, as
docker reports it. The monitor (agent/runtime/monitor) speaks frames (runtime/frames.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.containers import ContainerManager
from agent.model import AgentError, Container, ContainerConfig, StartFailed
from agent.runtime import frames

# --- what the client sends --------------------------------------------------------------------


@dataclass(frozen=True)
class Stdin:
    data: bytes


@dataclass(frozen=True)
class CloseStdin:
    pass


@dataclass(frozen=True)
class Resize:
    rows: int
    cols: int


@dataclass(frozen=True)
class Signal:
    signal: str


Input = Stdin | CloseStdin | Resize | Signal

# --- what the session yields ------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True)
class Started:
    container: str


@dataclass(frozen=True)
class Exited:
    exit_code: int
    oom_killed: bool = False
    error: str = ""


Event = Output | Started | Exited


@dataclass(frozen=True)
class AttachOptions:
    """container: a reference, or create: a config to create it from; start: start it attached.
    monitor: a connection to the container's monitor already open (the Docker API's attach that came
    before the start holds one end of the socket pair the start gave the monitor)."""

    container: str = ""
    create: ContainerConfig | None = None
    start: bool = False
    tty: bool = False
    stdin: bool = False
    size: Resize | None = None
    monitor: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    known: Container | None = None
    """with monitor: the container itself, as the caller found it when it opened that connection (a
    --rm container may be run and gone before this session begins: its output is still on the socket)"""


async def attach(m: ContainerManager, o: AttachOptions, inputs: AsyncIterator[Input]) -> AsyncIterator[Event]:
    start = o.start or o.create is not None
    try:
        if o.monitor is not None and o.known is not None:
            c = o.known
        else:
            c = await asyncio.to_thread(m.create, o.create) if o.create is not None else m.get(o.container)
        if o.monitor is not None:
            reader, writer = o.monitor
        elif start:
            # Attached from birth: the monitor gets our socket's other end with the start, so no
            # output is missed and the process need not wait for us. A terminal still waits for
            # our RELEASE, so that it starts at the client's size.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                await m.start(c.id, hold=o.tty, client=theirs.fileno())
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        else:
            reader, writer = await m.attach(c.id)
    except StartFailed as e:
        yield Exited(exit_code=e.exit_code, error=f"Error response from daemon: {e}")
        return
    if o.size is not None and o.size.rows:
        writer.write(frames.encode_json(frames.RESIZE, {"rows": o.size.rows, "cols": o.size.cols}))
    if start and o.tty:
        writer.write(frames.encode(frames.RELEASE))
    await writer.drain()

    async def pump_in() -> None:
        async for msg in inputs:
            if isinstance(msg, Stdin) and o.stdin:
                writer.write(frames.encode(frames.STDIN, msg.data))
            elif isinstance(msg, CloseStdin) and o.stdin:
                writer.write(frames.encode(frames.CLOSE_STDIN))
            elif isinstance(msg, Resize):
                writer.write(frames.encode_json(frames.RESIZE, {"rows": msg.rows, "cols": msg.cols}))
            elif isinstance(msg, Signal):
                with contextlib.suppress(AgentError):
                    await m.kill(c.id, msg.signal)
            await writer.drain()

    pump = asyncio.ensure_future(pump_in())
    dec = frames.Decoder()
    told: list[bytes] = []  # the stderr frames, while few: the monitor's own line is one of them
    try:
        exited = False
        while not exited:
            data = await reader.read(65536)
            if not data:
                break
            for kind, payload in dec.feed(data):
                if kind == frames.STDOUT:
                    yield Output("stdout", payload)
                elif kind == frames.STDERR:
                    if len(told) < 64:
                        told.append(payload)
                    yield Output("stderr", payload)
                elif kind == frames.HELLO:
                    yield Started(c.id)
                elif kind == frames.EXIT:
                    exited = True
        # The exit status as the agent recorded it: the monitor's, with the OOM count added.
        c = await m.wait_for(c)
        if c.config.auto_remove:
            await m.wait_removed(c)
        # It started, so an error here is its init's (an execve that failed after the start, as
        # monitor.c logs it): part of its output, not the session's "it never ran" (which makes
        # the client print it and exit with run's own status). The monitor's line normally came
        # on stderr; if it did not (this session attached after it), it comes now, once.
        if c.state.error and not any(c.state.error.encode() in p for p in told):
            yield Output("stderr", c.state.error.rstrip("\n").encode() + b"\n")
        yield Exited(exit_code=c.state.exit_code, oom_killed=c.state.oom_killed)
    finally:
        pump.cancel()
        writer.close()
