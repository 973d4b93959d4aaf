"""agent/images/hashing.py: the digest computed on a worker thread is hashlib's, in order, with no
thread left behind."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time

import pytest

from agent.images.hashing import BATCH, StreamHash


def _sha256_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sha256")]


def _wait_no_threads() -> None:
    deadline = time.monotonic() + 2
    while _sha256_threads() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("pieces", [[], [b""], [b"abc"], [os.urandom(BATCH - 1)], [os.urandom(BATCH)],
                                    [os.urandom(32 << 10) for _ in range(100)],
                                    [os.urandom(3 * BATCH + 5), b"x", os.urandom(700)]])
def test_digest_is_hashlibs(pieces: list[bytes]) -> None:
    h = StreamHash()
    for p in pieces:
        h.update(p)
    want = hashlib.sha256(b"".join(pieces)).hexdigest()
    assert h.hexdigest() == want
    assert h.hexdigest() == want  # asked again: the same
    _wait_no_threads()
    assert not _sha256_threads()


def test_a_short_stream_starts_no_thread() -> None:
    before = len(_sha256_threads())
    h = StreamHash()
    h.update(b"x" * (BATCH - 1))
    assert len(_sha256_threads()) == before
    assert h.hexdigest() == hashlib.sha256(b"x" * (BATCH - 1)).hexdigest()


def test_an_abandoned_stream_leaves_no_thread() -> None:
    h = StreamHash()
    h.update(os.urandom(2 * BATCH))
    assert _sha256_threads()
    del h
    gc.collect()
    _wait_no_threads()
    assert not _sha256_threads()
