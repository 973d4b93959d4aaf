"""layers.MemberReader: a tar member's content read straight from tarfile's stream (the copy-free
path of load, import and pull), and layers.HashingReader handing bytes on as they are."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from agent.images.layers import HashingReader, MemberReader

SIZES = [0, 1, 511, 512, 513, 32767, 32768, 32769, (1 << 20) + 3, 3 << 20]


def _tar(sizes: list[int]) -> tuple[bytes, list[bytes]]:
    contents = [os.urandom(n) for n in sizes]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i, data in enumerate(contents):
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue(), contents


def _read_all(reader: MemberReader, chunk: int) -> bytes:
    out = []
    while data := reader.read(chunk):
        out.append(data)
    return b"".join(out)


@pytest.mark.parametrize("chunk", [1, 500, 32 << 10, 1 << 20, -1])
@pytest.mark.parametrize("bufsize", [10240, 32 << 10])
def test_every_member_reads_back_whole_and_the_next_header_is_found(chunk: int, bufsize: int) -> None:
    sizes = SIZES if chunk != 1 else [0, 1, 511, 512, 513, 2000]
    raw, contents = _tar(sizes)
    got = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|", bufsize=bufsize) as tf:
        for m in tf:
            reader = MemberReader(tf, m)
            assert reader.direct, "this Python's tarfile no longer has the stream MemberReader reads from"
            got.append(_read_all(reader, chunk))
    assert got == contents


def test_a_member_left_half_read_does_not_disturb_the_next() -> None:
    raw, contents = _tar([100_000, 7, 50_000])
    got = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tf:
        for m in tf:
            got.append(MemberReader(tf, m).read(1000))
    assert got == [c[:1000] for c in contents]


def test_random_access_tar_goes_through_extractfile() -> None:
    raw, contents = _tar([5, 40_000])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for m, want in zip(tf.getmembers(), contents, strict=True):
            reader = MemberReader(tf, m)
            assert not reader.direct
            assert _read_all(reader, 4096) == want


def test_a_stream_cut_inside_a_member_reads_short() -> None:
    raw, contents = _tar([200_000])
    cut = raw[: 512 * 3 + 150_000]  # pax header, its data, the member's header, then part of it
    with tarfile.open(fileobj=io.BytesIO(cut), mode="r|") as tf:
        m = next(iter(tf))
        data = _read_all(MemberReader(tf, m), 1 << 20)
    assert data == contents[0][: len(data)]
    assert len(data) < m.size


def test_hashing_reader_hashes_what_it_hands_on_and_peek_does_not_count() -> None:
    payload = os.urandom(100_000)
    reader = HashingReader(io.BufferedReader(io.BytesIO(payload)))
    assert reader.peek(10)[:10] == payload[:10]
    assert reader.size == 0
    parts = [reader.read(30_000), reader.read(), reader.read(5)]
    assert b"".join(parts) == payload and parts[-1] == b""
    assert reader.size == len(payload)
    assert reader.digest() == "sha256:" + hashlib.sha256(payload).hexdigest()
    buf = bytearray(10)
    again = HashingReader(io.BytesIO(payload[:7]))
    assert again.readinto(buf) == 7 and bytes(buf[:7]) == payload[:7]
