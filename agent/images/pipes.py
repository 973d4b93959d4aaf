"""One stream written on one side and read on the other, through a pipe: a tar made by one
function (a snapshot's diff, a save) is consumed by another (a layer apply, a gRPC reply) as it is
made, with no temporary file written and read back."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, BinaryIO, Generic, TypeVar

T = TypeVar("T")
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size here; a bigger pipe means fewer thread switches


class Produced(Generic[T]):
    """The producer's result (or its exception) once the stream has been read to its end."""

    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def result(self) -> T:
        assert self.thread is not None
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@contextlib.contextmanager
def piped(produce: Callable[[IO[bytes]], T], name: str = "producer") -> Iterator[tuple[BinaryIO, Produced[T]]]:
    """(a reader of what ``produce(out)`` writes, its result). Leaving the block early closes the
    reader, so a producer still writing stops with BrokenPipeError, which is not reported; its other
    errors are raised by ``result()``, and by leaving the block if nobody asked."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    reader = os.fdopen(r, "rb")
    out = os.fdopen(w, "wb")
    produced: Produced[T] = Produced()

    def run() -> None:
        try:
            with out:
                produced.value = produce(out)
        except BrokenPipeError:
            produced.error = BrokenPipeError("the reader went away")
        except BaseException as e:  # handed to the reader's thread
            produced.error = e

    produced.thread = threading.Thread(target=run, name=name, daemon=True)
    produced.thread.start()
    try:
        with reader:
            yield reader, produced
    finally:
        produced.thread.join()
    if produced.error is not None and not isinstance(produced.error, BrokenPipeError):
        raise produced.error


# --- between the event loop and a thread (a gRPC stream on one side, a store call on the other) ------

async def consume(chunks: AsyncIterator[bytes], fn: Callable[[BinaryIO], T]) -> T:
    """``fn(reader)`` on a thread, reading what ``chunks`` yields as it arrives (a load or an import
    from a gRPC stream, with no temporary file). Backpressure: the pipe fills, the writes wait.
    When ``fn`` stops early (a refused archive), its error is raised and the rest is not read."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    reader = os.fdopen(r, "rb")

    def run() -> T:
        with reader:
            return fn(reader)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(w, "wb"))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        async for data in chunks:
            if task.done() or transport.is_closing():
                break
            writer.write(data)
            await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # fn stopped reading: its result or error says why
    except BaseException:
        writer.close()  # fn sees the stream end early, fails and is waited for: the first error wins
        with contextlib.suppress(BaseException):
            await task
        raise
    finally:
        writer.close()
    return await task


async def produce(fn: Callable[[BinaryIO], object], chunk: int = PIPE_SIZE >> 2) -> AsyncIterator[bytes]:
    """What ``fn(out)`` writes on a thread, as chunks, while it writes (a save into a gRPC stream,
    with no temporary file). Its error is raised after the bytes it wrote before it."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    out: BinaryIO = os.fdopen(w, "wb")

    def run() -> object:
        with out:
            return fn(out)

    stream = asyncio.StreamReader(limit=chunk * 2, loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream, loop=loop),
                                                os.fdopen(r, "rb"))
    task = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while data := await stream.read(chunk):
            yield data
    finally:
        transport.close()  # a producer still writing gets EPIPE and stops
        with contextlib.suppress(BrokenPipeError):
            await task
