"""agent/logs.py: docker's log option rules (sizes, max-file, compress, unknown keys), the merge with
the agent's default, and reading across rotated files, done here by hand the way monitor.c rotates
(rename PATH.i -> PATH.i+1, PATH -> PATH.1, a new PATH; .gz when compressed)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent import logs
from agent.model import InvalidArgument, LogConfig


@pytest.mark.parametrize(("text", "binary", "want"), [
    ("10m", False, 10_000_000), ("10M", False, 10_000_000), ("1k", False, 1000), ("1kb", False, 1000),
    ("1KiB", False, 1024), ("20m", True, 20 << 20), ("512", False, 512), ("1.5g", False, 1_500_000_000),
])
def test_sizes_as_go_units(text: str, binary: bool, want: int) -> None:
    assert logs.parse_size(text, binary) == want


@pytest.mark.parametrize(("cfg", "want"), [
    (LogConfig("json-file"), logs.Rotation()),
    (LogConfig("", {"max-size": "10m", "max-file": "3"}), logs.Rotation(10_000_000, 3)),
    (LogConfig("json-file", {"max-size": "1k", "max-file": "2", "compress": "true"}), logs.Rotation(1000, 2, True)),
    (LogConfig("local"), logs.Rotation(20 << 20, 5, True)),
    (LogConfig("local", {"max-file": "1", "compress": "false"}), logs.Rotation(20 << 20, 1, False)),
    (LogConfig("local", {"compress": "false", "max-size": "1m"}), logs.Rotation(1 << 20, 5, False)),
    (LogConfig("none"), logs.Rotation()),
])
def test_rotation(cfg: LogConfig, want: logs.Rotation) -> None:
    assert logs.rotation(cfg) == want


@pytest.mark.parametrize(("cfg", "message"), [
    (LogConfig("gelf"), 'logging driver "gelf" is not supported'),
    (LogConfig("json-file", {"max-size": "-1"}), "invalid size"),
    (LogConfig("json-file", {"max-size": "0"}), "max-size must be a positive number"),
    (LogConfig("json-file", {"max-size": "1m", "max-file": "x"}), "max-file=x: not a number"),
    (LogConfig("json-file", {"max-size": "1m", "max-file": "-2"}), "max-file cannot be less than 1"),
    (LogConfig("json-file", {"max-file": "2"}), "needs max-size"),
    (LogConfig("json-file", {"max-size": "1m", "compress": "true"}), "compress cannot be true"),
    (LogConfig("json-file", {"mode": "non-blocking"}), "unknown log opt 'mode' for json-file log driver (not supported"),
    (LogConfig("local", {"labels-regex": "a("}), "log opt labels-regex=a(: not a regular expression"),
    (LogConfig("json-file", {"env-regex": "*"}), "log opt env-regex=*: not a regular expression"),
    (LogConfig("json-file", {"tag": "{{.Nope}}"}), "log opt tag={{.Nope}}: no field Nope (fields: {{.ID}}"),
    (LogConfig("local", {"tag": "{{upper .Name}}"}), "only plain {{.Field}} actions are supported"),
    (LogConfig("json-file", {"tag": "x}}"}), "only plain {{.Field}} actions are supported"),
    (LogConfig("json-file", {"colour": "a"}), "unknown log opt 'colour' for json-file log driver"),
    (LogConfig("local", {"max-file": "1"}), "compression cannot be enabled when max file count is 1"),
    (LogConfig("none", {"max-size": "1m"}), "unknown log opt 'max-size' for none log driver"),
])
def test_bad_options_are_named(cfg: LogConfig, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        logs.rotation(cfg)
    assert message in str(e.value)


def test_merge_is_dockers() -> None:
    default = LogConfig("json-file", {"max-size": "10m", "max-file": "3"})
    # the same driver: the default's options fill in what the container does not set
    assert logs.merged(LogConfig("", {"max-file": "5"}), default) == LogConfig(
        "json-file", {"max-file": "5", "max-size": "10m"})
    # another driver: none of the default's options
    assert logs.merged(LogConfig("local"), default) == LogConfig("local", {})
    assert logs.merged(LogConfig("none"), default) == LogConfig("none", {})
    with pytest.raises(InvalidArgument, match="max-file=2 needs max-size"):
        logs.merged(LogConfig("", {"max-file": "2"}), LogConfig("json-file"))


def _entry(i: int) -> bytes:
    return json.dumps({"log": f"n{i}\n", "stream": "stdout", "time": "2026-12-03T10:00:00.000000Z"}).encode() + b"\n"


def _rotate(path: Path, max_file: int, gz: bool = False) -> None:
    ext = ".gz" if gz else ""
    for i in range(max_file - 1, 1, -1):
        src = path.with_name(f"{path.name}.{i - 1}{ext}")
        if src.exists():
            os.rename(src, path.with_name(f"{path.name}.{i}{ext}"))
    os.rename(path, path.with_name(f"{path.name}.1"))
    if gz:
        one = path.with_name(f"{path.name}.1")
        with gzip.open(path.with_name(f"{path.name}.1.gz"), "wb") as f:
            f.write(one.read_bytes())
        one.unlink()
    path.touch()


def _write(path: Path, numbers: range) -> None:
    with open(path, "ab") as f:
        for i in numbers:
            f.write(_entry(i))


def _numbers(lines: list[bytes]) -> list[int]:
    out = []
    for raw in lines:
        rec = logs.parse_entry(raw)
        assert rec is not None
        out.append(int(rec[1].decode().strip()[1:]))
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_read_goes_across_rotated_files_and_tail_reads_only_what_it_needs(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / "container.log"
    path.touch()
    for k in range(5):
        _write(path, range(k * 10, k * 10 + 10))
        if k < 4:
            _rotate(path, 3, gz)
    # three files kept: 20..49
    assert _numbers(logs.read(path, 3)[0]) == list(range(20, 50))
    assert _numbers(logs.read(path, 3, tail=15)[0]) == list(range(35, 50))
    assert logs.read(path, 3, tail=0) == ([], b"")
    # an entry being written at the end is not a line yet: --tail counts whole ones
    with open(path, "ab") as f:
        f.write(_entry(50)[:20])
    lines, rest = logs.read(path, 3, tail=1)
    assert _numbers(lines) == [49] and rest == _entry(50)[:20]


def test_follower_reads_every_line_across_rotations_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    _write(path, range(0, 5))
    fol = logs.Follower(path)
    f = fol.open()
    assert f is not None
    got = f.read()
    _write(path, range(5, 8))
    got += fol.read()
    # rotated twice between two reads: the file held, then .1, then the new PATH
    _write(path, range(8, 10))
    _rotate(path, 4)
    _write(path, range(10, 13))
    _rotate(path, 4)
    _write(path, range(13, 15))
    got += fol.read()
    _write(path, range(15, 16))
    got += fol.read()
    fol.close()
    assert _numbers(got.splitlines()) == list(range(16))
    # max-file=1: truncated in place, read again from its start
    single = tmp_path / "single.log"
    _write(single, range(3))
    fol = logs.Follower(single)
    assert fol.read().count(b"\n") == 3
    with open(single, "r+b") as fh:
        fh.truncate(0)
    _write(single, range(100, 101))
    assert _numbers(fol.read().splitlines()) == [100]
    fol.close()


def test_entries_filters_by_time(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    with open(path, "wb") as f:
        for i, ts in enumerate(("2026-12-03T10:00:00.000000Z", "2026-12-03T11:00:00.000000Z")):
            f.write(json.dumps({"log": f"n{i}\n", "stream": "stderr", "time": ts}).encode() + b"\n")
        f.write(b"not json\n")

    async def collect(since: float, until: float) -> list[tuple[str, bytes, float]]:
        return [e async for e in logs.entries(path, logs.Rotation(), False, -1, since, until, lambda: False,
                                              asyncio.Event)]

    ten = 1796292000.0   # 2026-12-03T10:00:00Z
    assert [e[1] for e in asyncio.run(collect(0, 0))] == [b"n0\n", b"n1\n"]
    assert [e[1] for e in asyncio.run(collect(ten + 1, 0))] == [b"n1\n"]
    assert [e[1] for e in asyncio.run(collect(0, ten + 1))] == [b"n0\n"]


def test_a_log_made_between_the_followers_look_and_the_first_read_is_read_once(tmp_path: Path,
                                                                                monkeypatch: Any) -> None:
    """The race docker-py's containers.run hit (b'hello\\nhello\\n'): no log when the follower
    looked, one by the time the first read ran."""
    import asyncio

    from agent import logs as logs_mod

    path = tmp_path / "container.log"
    line = b'{"log":"hello\\n","stream":"stdout","time":"2026-12-03T00:00:00.000000000Z"}\n'
    real_open = logs_mod.Follower.open

    def open_then_the_log_appears(self: Any) -> Any:
        f = real_open(self)
        path.write_bytes(line)
        return f

    monkeypatch.setattr(logs_mod.Follower, "open", open_then_the_log_appears)
    state = {"alive": True}

    async def collect() -> list[Any]:
        out = []
        ev = asyncio.Event()
        async for e in logs_mod.entries(path, logs_mod.rotation(logs_mod.LogConfig()), True, -1, 0, 0,
                                        lambda: state.pop("alive", False), lambda: ev):
            out.append(e)
        return out

    got = asyncio.run(collect())
    assert [e[1] for e in got] == [b"hello\n"]


_WHO = logs.Subject(id="0123456789abcdef" * 4, name="/web", image_id="sha256:" + "ab" * 32, image_name="busybox",
                    argv=["sh", "-c", "echo hi"], labels={"app": "shop", "team": "a b", "other": "x"},
                    env=["PATH=/bin", "STAGE=prod", "REGION=eu", "EMPTY="])


def test_attributes_are_dockers_extra_attributes_and_tag() -> None:
    cfg = LogConfig("json-file", {"labels": "app,missing", "env": "STAGE,EMPTY,NOPE", "tag": "{{.Name}}/{{ .ID }}"})
    assert logs.attributes(cfg, _WHO) == {"EMPTY": "", "STAGE": "prod", "app": "shop", "tag": "web/0123456789ab"}
    assert logs.attributes(LogConfig("local", {"labels-regex": "^t", "env-regex": "^RE"}), _WHO) == \
        {"REGION": "eu", "team": "a b"}
    tag = "{{.FullID}} {{.ImageID}} {{.ImageFullID}} {{.ImageName}} {{.Command}} {{.DaemonName}}"
    assert logs.attributes(LogConfig("json-file", {"tag": tag}), _WHO)["tag"] == \
        f"{_WHO.id} sha256:ababa {_WHO.image_id} busybox sh -c echo hi docker"
    assert logs.attributes(LogConfig("json-file", {"max-size": "1m"}), _WHO) == {}


def test_details_prefix_is_dockers() -> None:
    assert logs.details({"team": "a b", "app": "x=y,z"}) == b"app=x%3Dy%2Cz,team=a+b "
    assert logs.details({}) == b" "


def _local_record(line: bytes, stream: str = "stdout", partial: tuple[bool, int] | None = None,
                  attrs: dict[str, str] | None = None, nano: int = 1_700_000_000_123_456_789) -> bytes:
    """A docker local record built here from the .proto's field numbers (not by the code under test)."""
    def varint(v: int) -> bytes:
        out = b""
        while True:
            b, v = v & 0x7F, v >> 7
            out += bytes([b | (0x80 if v else 0)])
            if not v:
                return out

    def ld(field: int, data: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(data)) + data

    msg = ld(1, stream.encode()) + varint(2 << 3) + varint(nano) + ld(3, line)
    if partial is not None:
        last, ordinal = partial
        md = (varint(1 << 3) + varint(1) if last else b"") + ld(2, b"id1") + varint(3 << 3) + varint(ordinal)
        msg += varint(4 << 3) + varint(1) + ld(5, md)
    for k, v in (attrs or {}).items():
        msg += ld(6, ld(1, k.encode()) + ld(2, v.encode()))
    size = len(msg).to_bytes(4, "big")
    return size + msg + size


def test_local_records_read_back_with_their_newlines_and_attrs() -> None:
    data = (_local_record(b"one") + _local_record(b"pie", "stderr", (False, 1))
            + _local_record(b"ce", "stderr", (True, 2), {"tag": "web"}))
    records, rest = logs.LOCAL.split(data + _local_record(b"half")[:7])
    assert rest == _local_record(b"half")[:7] and len(records) == 3
    got = [logs.LOCAL.parse(r) for r in records]
    assert got == [("stdout", b"one\n", 1_700_000_000.1234567, {}), ("stderr", b"pie", 1_700_000_000.1234567, {}),
                   ("stderr", b"ce\n", 1_700_000_000.1234567, {"tag": "web"})]
    # a frame whose trailing size disagrees: nothing after it is taken for records
    bad = bytearray(_local_record(b"x"))
    bad[-1] ^= 1
    assert logs.LOCAL.split(_local_record(b"ok") + bytes(bad) + _local_record(b"y"))[0] == [_local_record(b"ok")[4:-4]]
    assert logs.LOCAL.parse(b"\x0a\xff") is None   # truncated: no record, no exception
