"""Content store: a blob is visible only once whole and verified; a failed write leaves nothing."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.images import ContentStore, InvalidArchive
from agent.images.store import sha256_bytes


def _leftovers(store: ContentStore) -> tuple[list[str], list[str]]:
    return sorted(p.name for p in (store.root / "blobs" / "sha256").iterdir()), sorted(
        p.name for p in (store.root / "ingest").iterdir()
    )


def test_write_and_read_back(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    digest = store.write_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert store.read_bytes(digest) == b"hello"
    assert store.path(digest) == tmp_path / "blobs" / "sha256" / digest[7:]
    assert store.exists(digest) and store.size(digest) == 5
    # Same content again: one blob, nothing left in ingest.
    assert store.write_bytes(b"hello", expected=digest) == digest
    assert _leftovers(store) == ([digest[7:]], [])
    assert oct(store.path(digest).stat().st_mode & 0o777) == oct(0o444)


def test_wrong_digest_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    wrong = sha256_bytes(b"something else")
    with pytest.raises(InvalidArchive, match="digest mismatch"):
        store.write_bytes(b"hello", expected=wrong, what="layer x")
    with pytest.raises(InvalidArchive, match="size mismatch"), store.writer() as w:
        w.write(b"hello")
        w.commit(size=4)
    assert _leftovers(store) == ([], [])


def test_truncated_stream_with_declared_size_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(100_000)
    with pytest.raises(InvalidArchive, match="truncated"):
        store.ingest(io.BytesIO(data[:50_000]), expected=sha256_bytes(data), size=len(data))
    with pytest.raises(InvalidArchive, match="longer"):
        store.ingest(io.BytesIO(data + b"x"), expected=sha256_bytes(data), size=len(data))
    assert _leftovers(store) == ([], [])


class _Broken(io.RawIOBase):
    def __init__(self) -> None:
        self.n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        self.n += 1
        if self.n > 3:
            raise ConnectionResetError("peer went away")
        b[:10] = b"x" * 10
        return 10


def test_reader_error_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        store.ingest(_Broken())  # type: ignore[arg-type]
    assert _leftovers(store) == ([], [])


def test_bad_digest_strings_are_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    for bad in ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "../../etc/passwd"]:
        with pytest.raises(InvalidArchive, match="not a sha256 digest"):
            store.path(bad)


def test_killed_writer_leaves_no_blob_and_is_cleaned_on_open(tmp_path: Path) -> None:
    """A process killed mid-write leaves only an ingest file, which the next open removes."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from agent.images import ContentStore
        store = ContentStore(__import__("pathlib").Path({str(tmp_path)!r}))
        w = store.writer()
        w.write(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"writing"
        blobs, ingest = _leftovers(_peek(tmp_path))
        assert blobs == [] and len(ingest) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.05)
    store = ContentStore(tmp_path)  # opening cleans ingest files of dead processes
    assert _leftovers(store) == ([], [])


def _peek(root: Path) -> ContentStore:
    store = ContentStore.__new__(ContentStore)
    store.root = root
    return store


def test_delete_and_list(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    a, b = store.write_bytes(b"a"), store.write_bytes(b"b")
    assert sorted(store.list()) == sorted([a, b])
    assert store.total_size() == 2
    assert store.delete(a) and not store.delete(a)
    assert list(store.list()) == [b]
