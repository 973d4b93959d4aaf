"""sha256 of a stream computed beside it, on a thread of its own.

A load, import or pull reads a layer, parses its tar, writes its files and hashes it (its diff_id,
and a pulled blob's digest). hashlib releases the GIL while it hashes more than 2 KiB, so the hash
can run while the reading thread parses and writes: on a quiet machine the two overlap on two
cores; on a loaded one a second runnable thread is a second share of the CPU. (Hashing inline
was about 40 % of the agent's CPU for a 50 MB load; docker's daemon spreads its load over several
threads, and at load 10-20 that, not its CPU, made it level with ours.)

Pieces are batched to about a MiB before they go to the thread (tarfile reads 32 KiB at a time),
and at most a few batches wait (the reader is held back past that, so memory stays bounded). A
stream shorter than one batch is hashed inline when the digest is asked for: no thread at all.
"""

from __future__ import annotations

import collections
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

BATCH = 1 << 20
IN_FLIGHT = 4  # batches handed over and not hashed yet, at most


class StreamHash:
    """hashlib.sha256's update()/hexdigest(), hashing on a worker thread. Bytes given to update()
    must not change afterwards (bytes do not; a reused bytearray would)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._batch: list[Any] = []
        self._batched = 0
        self._worker: ThreadPoolExecutor | None = None
        self._pending: collections.deque[Future[None]] = collections.deque()

    def update(self, data: Any) -> None:
        if not data:
            return
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= BATCH:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._worker is None:
            # One worker per stream keeps the updates in order; it exits when this object is dropped
            # (the executor's own weakref), so a stream abandoned halfway leaves no thread behind.
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        batch, self._batch, self._batched = self._batch, [], 0
        self._pending.append(self._worker.submit(self._update_all, batch))
        while len(self._pending) > IN_FLIGHT:
            self._pending.popleft().result()

    def _update_all(self, batch: list[Any]) -> None:
        for data in batch:
            self._hash.update(data)

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        self._update_all(self._batch)
        self._batch, self._batched = [], 0
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None
        return self._hash.hexdigest()
