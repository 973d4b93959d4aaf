"""One stream written on a thread and read here, through a pipe: a tar made by one function
(a snapshot's diff, a save) is consumed by another (a layer apply, a gRPC reply) as it is made,
with no temporary file written and read back."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
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
