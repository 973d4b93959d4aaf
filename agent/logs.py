"""A container's log: its driver and options (docker's --log-driver/--log-opt, checked here), and
reading it back across the files the monitor rotates (agent/runtime/monitor/monitor.c writes them).

Drivers:
- ``json-file``: docker's json-file lines in ``container.log``; ``max-size`` (decimal units, as
  docker's: 10m = 10,000,000 bytes) rotates it, keeping ``max-file`` files in all
  (container.log, .1, ... the oldest dropped; one file: truncated), ``compress=true`` gzips the
  rotated ones (.1.gz ...). Without max-size the log is not bounded (docker's default), unless the
  agent's default options (``--log-opt``, daemon.json ``log-opts``) bound it.
- ``local``: docker's local driver: its defaults (max-size 20 MiB, binary units; max-file 5;
  compress on) and its file format, a protobuf LogEntry per record (source, time_nano, line
  without its newline, partial pieces with their metadata, attrs) framed by its size, big-endian,
  before and after (moby's daemon/logger/local). Smaller than json lines; read through ``logs``.
- ``none``: nothing is written; ``logs`` says the driver cannot be read, as docker does.
Both file drivers take docker's attribute options, written into every entry (json's "attrs",
local's LogAttr) and shown by ``logs --details``: ``labels``/``env`` (comma lists of the
container's label keys and environment names), ``labels-regex``/``env-regex``, and ``tag``
(docker's template of {{.ID}}, {{.FullID}}, {{.Name}}, {{.ImageID}}, {{.ImageFullID}},
{{.ImageName}}, {{.Command}}, {{.DaemonName}}, {{.Hostname}}; other template actions are refused).
Merging with the agent's default is docker's: a container without a driver takes the agent's
driver, and, when that is the agent's driver, every default option it does not set itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import json
import os
import re
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.model import InvalidArgument, LogConfig

DRIVERS = ("json-file", "local", "none")
_ATTR_OPTS = ("labels", "labels-regex", "env", "env-regex", "tag")
_OPTS = {"json-file": ("max-size", "max-file", "compress", *_ATTR_OPTS),
         "local": ("max-size", "max-file", "compress", *_ATTR_OPTS), "none": ()}
# docker's options that dockyard does not implement: refused by name rather than accepted and ignored
_NOT_YET = ("mode", "max-buffer-size")
# docker's log tag template: the fields of its logger.Info a tag may name
_TAG_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
TAG_FIELDS = ("ID", "FullID", "Name", "ImageID", "ImageFullID", "ImageName", "Command", "DaemonName", "Hostname")
_LOCAL_DEFAULTS = {"max-size": 20 << 20, "max-file": 5, "compress": True}

_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?(i)?b?$", re.IGNORECASE)


class ReadNotSupported(InvalidArgument):
    """`logs` of a container whose driver keeps nothing."""


@dataclass(frozen=True)
class Rotation:
    """What the monitor is told: where the log goes ("" = nowhere) and when it rotates."""

    max_size: int = 0        # bytes; 0 = never rotated
    max_file: int = 1
    compress: bool = False


def parse_size(text: str, binary: bool) -> int:
    """go-units: FromHumanSize (decimal, json-file's) or RAMInBytes (binary, local's)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    unit = (m.group(2) or "").lower()
    base = 1024 if binary or m.group(3) else 1000
    return int(float(m.group(1)) * base ** " kmgtp".index(unit or " "))


def _bool(text: str) -> bool:
    # Go's strconv.ParseBool
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def rotation(cfg: LogConfig, complete: bool = True) -> Rotation:
    """Check a driver and its options (a clear error naming the bad one) and give the rotation.
    `complete=False`: options that a host's default may still complete (a stack's, checked at
    deploy): the rules between options (max-file needs max-size, compress needs both) wait."""
    driver = cfg.type or "json-file"
    if driver not in DRIVERS:
        raise InvalidArgument(f'logging driver "{driver}" is not supported (supported: {", ".join(DRIVERS)})')
    for key in cfg.config:
        if key not in _OPTS[driver]:
            why = " (not supported by dockyard yet)" if key in _NOT_YET else ""
            raise InvalidArgument(f"unknown log opt '{key}' for {driver} log driver{why}")
    if driver == "none":
        return Rotation()
    opts = cfg.config
    _check_attribute_opts(opts)
    local = driver == "local"
    try:
        size = parse_size(opts["max-size"], local) if "max-size" in opts else (_LOCAL_DEFAULTS["max-size"]
                                                                             if local else 0)
    except ValueError as e:
        raise InvalidArgument(f"log opt max-size={opts['max-size']}: {e}") from None
    if "max-size" in opts and size <= 0:
        raise InvalidArgument(f"log opt max-size={opts['max-size']}: max-size must be a positive number")
    files = _LOCAL_DEFAULTS["max-file"] if local else 1
    if "max-file" in opts:
        text = opts["max-file"]
        if not text.strip().lstrip("-").isdigit():
            raise InvalidArgument(f"log opt max-file={text}: not a number")
        files = int(text)
        if files < 1:
            raise InvalidArgument(f"log opt max-file={text}: max-file cannot be less than 1")
        if not size and complete:
            raise InvalidArgument(f"log opt max-file={text} needs max-size (without it the log is never rotated)")
    compress = bool(_LOCAL_DEFAULTS["compress"]) if local else False
    if "compress" in opts:
        try:
            compress = _bool(opts["compress"])
        except ValueError as e:
            raise InvalidArgument(f"log opt compress={opts['compress']}: {e}") from None
        if compress and (files < 2 or not size) and complete:
            raise InvalidArgument("log opt compress=true: compress cannot be true when max-file is less than 2 "
                                  "or max-size is not set")
    if local and compress and files < 2 and complete:
        # moby's local driver (validateConfig): its default compress=true needs rotated files
        raise InvalidArgument("log opt max-file=1: compression cannot be enabled when max file count is 1 "
                              "(the local driver compresses by default: add --log-opt compress=false)")
    return Rotation(size, files, compress)


def _check_attribute_opts(opts: Mapping[str, str]) -> None:
    for key in ("labels-regex", "env-regex"):
        if key in opts:
            try:
                re.compile(opts[key])
            except re.error as e:
                raise InvalidArgument(f"log opt {key}={opts[key]}: not a regular expression: {e}") from None
    if "tag" in opts:
        left = _TAG_FIELD.sub("", opts["tag"])
        unknown = [f for f in _TAG_FIELD.findall(opts["tag"]) if f not in TAG_FIELDS]
        if unknown or "{{" in left or "}}" in left:
            what = f"no field {unknown[0]}" if unknown else "only plain {{.Field}} actions are supported"
            raise InvalidArgument(f"log opt tag={opts['tag']}: {what} (fields: "
                                  + ", ".join("{{." + f + "}}" for f in TAG_FIELDS) + ")")


@dataclass(frozen=True)
class Subject:
    """What docker's logger.Info tells a log driver about its container (for tag and attrs)."""

    id: str
    name: str
    image_id: str        # sha256:...
    image_name: str      # as the user named it
    argv: Sequence[str]  # entrypoint and arguments
    labels: Mapping[str, str]
    env: Sequence[str]   # KEY=VALUE, the image's and the container's


def attributes(cfg: LogConfig, who: Subject) -> dict[str, str]:
    """docker's ExtraAttributes and ParseLogTag: the attrs every entry carries, sorted by key."""
    opts = cfg.config
    out: dict[str, str] = {}
    for key in filter(None, opts.get("labels", "").split(",")):
        if key in who.labels:
            out[key] = who.labels[key]
    if opts.get("labels-regex"):
        rx = re.compile(opts["labels-regex"])
        out.update({k: v for k, v in who.labels.items() if rx.search(k)})
    env: dict[str, str] = {}
    for item in who.env:
        k, sep, v = item.partition("=")
        if sep:
            env[k] = v
    for key in filter(None, opts.get("env", "").split(",")):
        if key in env:
            out[key] = env[key]
    if opts.get("env-regex"):
        rx = re.compile(opts["env-regex"])
        out.update({k: v for k, v in env.items() if rx.search(k)})
    if opts.get("tag"):
        # (docker's ImageID is the first 12 characters of "sha256:...", its prefix included)
        fields = {"ID": who.id[:12], "FullID": who.id, "Name": who.name.lstrip("/"), "ImageID": who.image_id[:12],
                  "ImageFullID": who.image_id, "ImageName": who.image_name, "Command": " ".join(who.argv),
                  "DaemonName": "docker", "Hostname": socket.gethostname()}
        out["tag"] = _TAG_FIELD.sub(lambda mt: fields[mt.group(1)], opts["tag"])
    return dict(sorted(out.items()))


def details(attrs: Mapping[str, str]) -> bytes:
    """`logs --details`: docker's prefix of an entry, its attrs as k=v (query-escaped, sorted),
    comma-separated, then a space (a space alone when there are none)."""
    return ",".join(f"{urllib.parse.quote_plus(k)}={urllib.parse.quote_plus(v)}"
                    for k, v in sorted(attrs.items())).encode() + b" "


def merged(cfg: LogConfig, default: LogConfig) -> LogConfig:
    """docker's mergeAndVerifyLogConfig: the container's, filled from the agent's default, checked."""
    driver = cfg.type or default.type or "json-file"
    opts = dict(cfg.config)
    if driver == (default.type or "json-file"):
        for k, v in default.config.items():
            opts.setdefault(k, v)
    out = LogConfig(driver, opts)
    rotation(out)
    return out


def parse_opts(items: list[str] | tuple[str, ...], flag: str = "--log-opt") -> dict[str, str]:
    """KEY=VALUE strings (docker's --log-opt) as a dict."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"invalid {flag} {item!r}: expected KEY=VALUE (like max-size=10m)")
        out[k] = v
    return out


# --- reading ------------------------------------------------------------------------------------

Entry = tuple[str, bytes, float]   # stream, data, unix time
Record = tuple[str, bytes, float, dict[str, str]]   # and the entry's attrs


def parse_entry(raw: bytes) -> Record | None:
    """One json-file line."""
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    ts = rec.get("time", "")
    try:
        t = datetime.datetime.strptime(ts[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.UTC).timestamp() if ts else 0.0
    except ValueError:
        t = 0.0
    attrs = rec.get("attrs")
    return rec.get("stream", "stdout"), rec.get("log", "").encode(), t, attrs if isinstance(attrs, dict) else {}


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole lines of `data`, and what follows the last newline (an entry being written)."""
    *lines, rest = data.split(b"\n")
    return lines, rest


_SIZE_PREFIX = struct.Struct(">I")


def _split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """docker local's records: size, LogEntry, size. What follows the last whole one is a record
    being written; a frame whose two sizes differ ends the readable part of the file."""
    out: list[bytes] = []
    at = 0
    while len(data) - at >= 8:
        (n,) = _SIZE_PREFIX.unpack_from(data, at)
        if len(data) - at < n + 8:
            break
        if _SIZE_PREFIX.unpack_from(data, at + 4 + n)[0] != n:
            return out, b""
        out.append(data[at + 4:at + 4 + n])
        at += n + 8
    return out, data[at:]


def _varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def _fields(b: bytes) -> Iterator[tuple[int, int | bytes]]:
    """A protobuf message's (field, value): varints as ints, length-delimited as bytes."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        kind = key & 7
        if kind == 0:
            v, i = _varint(b, i)
            yield key >> 3, v
        elif kind == 2:
            n, i = _varint(b, i)
            if i + n > len(b):
                raise ValueError("truncated field")
            yield key >> 3, b[i:i + n]
            i += n
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind}")


def parse_local(raw: bytes) -> Record | None:
    """One local record (LogEntry: 1 source, 2 time_nano, 3 line, 4 partial, 5 its metadata with
    1 last, 6 attrs of 1 key, 2 value). The newline goes back after a whole line or a last piece."""
    stream, line, t, partial, last, attrs = "stdout", b"", 0.0, False, False, {}
    try:
        for f, v in _fields(raw):
            if f == 1 and isinstance(v, bytes):
                stream = v.decode("utf-8", "replace")
            elif f == 2 and isinstance(v, int):
                t = v / 1e9
            elif f == 3 and isinstance(v, bytes):
                line = v
            elif f == 4 and isinstance(v, int):
                partial = bool(v)
            elif f == 5 and isinstance(v, bytes):
                last = any(g == 1 and w for g, w in _fields(v))
            elif f == 6 and isinstance(v, bytes):
                kv = {g: w for g, w in _fields(v) if isinstance(w, bytes)}
                attrs[kv.get(1, b"").decode("utf-8", "replace")] = kv.get(2, b"").decode("utf-8", "replace")
    except ValueError:
        return None
    return stream, line + (b"\n" if not partial or last else b""), t, attrs


@dataclass(frozen=True)
class Format:
    """How a driver's file is cut into records and read."""

    split: Callable[[bytes], tuple[list[bytes], bytes]]
    parse: Callable[[bytes], Record | None]


JSON_FILE = Format(_split_lines, parse_entry)
LOCAL = Format(_split_frames, parse_local)


def file_format(driver: str) -> Format:
    return LOCAL if driver == "local" else JSON_FILE


def _rotated(path: Path, i: int) -> Path | None:
    """PATH.i, or PATH.i.gz; None if neither is there."""
    for p in (path.with_name(f"{path.name}.{i}"), path.with_name(f"{path.name}.{i}.gz")):
        if p.exists():
            return p
    return None


def _read_whole(p: Path) -> bytes:
    """A file's bytes; a rotated file being compressed may vanish between the listing and the
    open (PATH.1 -> PATH.1.gz): then the compressed one is read."""
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as f:
                return f.read()
        return p.read_bytes()
    except FileNotFoundError:
        if p.suffix != ".gz":
            gz = p.with_name(p.name + ".gz")
            with contextlib.suppress(FileNotFoundError), gzip.open(gz, "rb") as f:
                return f.read()
        return b""
    except (OSError, EOFError):
        return b""   # a truncated .gz (a crash mid-compress): what is left is unreadable


def _lines_newest_first(path: Path, max_file: int, current: BinaryIO | None,
                        partial: list[bytes], fmt: Format = JSON_FILE) -> Iterator[list[bytes]]:
    """The whole records of each file, from the current one back to the oldest. `current`: PATH as
    opened by the follower, read to its end here; a rotated file that is that same file (rotated
    since) is skipped. What the current file holds past its last record goes into `partial`."""
    if current is not None:
        lines, rest = fmt.split(current.read())
        ino = os.fstat(current.fileno()).st_ino
    else:
        lines, rest = fmt.split(_read_whole(path))
        ino = -1
    partial.append(rest)
    yield lines
    for i in range(1, max(max_file, 1) + 64):   # (past max-file too: files of a larger setting)
        p = _rotated(path, i)
        if p is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(p).st_ino == ino:
                continue
        yield fmt.split(_read_whole(p))[0]


def read(path: Path, max_file: int, tail: int = -1, current: BinaryIO | None = None,
         fmt: Format = JSON_FILE) -> tuple[list[bytes], bytes]:
    """Every whole record of the log, oldest first, or the last `tail` of them (reading only as
    many files back as that takes); and the start of an entry being written at the end of the
    current file (a follower goes on from it)."""
    chunks: list[list[bytes]] = []
    partial: list[bytes] = []
    have = 0
    for lines in _lines_newest_first(path, max_file, current, partial, fmt):
        chunks.append(lines)
        have += len(lines)
        if tail >= 0 and have >= tail:
            break
    out = [ln for lines in reversed(chunks) for ln in lines]
    if tail >= 0:
        out = out[-tail:] if tail else []
    return out, partial[0] if partial else b""


class Follower:
    """Reads what the monitor appends to PATH, across its rotations: the file it has open is read
    to its end before the next one, found by inode among PATH.1, PATH.2 ... (rotated more than once
    since the last look) and PATH; a truncated single file (max-file=1) is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f: BinaryIO | None = None
        self.ino = 0

    def open(self) -> BinaryIO | None:
        """Open PATH now (None if there is none yet): read from it to its end, then call read()."""
        with contextlib.suppress(FileNotFoundError):
            self._open(self.path)
        return self.f

    def _open(self, p: Path) -> None:
        self.close()
        f = open(p, "rb")  # noqa: SIM115 (kept open across reads: it is how a rotation is followed)
        self.f = f
        self.ino = os.fstat(f.fileno()).st_ino

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def _newer(self) -> list[Path]:
        """The files written after the one open, oldest first: the rotated ones younger than ours
        (those before it, counting from PATH.1), then PATH."""
        try:
            cur = os.stat(self.path).st_ino
        except FileNotFoundError:
            return []
        if cur == self.ino:
            return []
        found: list[Path] = []
        for i in range(1, 200):
            p = self.path.with_name(f"{self.path.name}.{i}")
            try:
                ino = os.stat(p).st_ino
            except FileNotFoundError:
                break
            if ino == self.ino:
                break
            found.append(p)
        return [*reversed(found), self.path]

    def read(self) -> bytes:
        """Whatever is new since the last call."""
        if self.f is None and self.open() is None:
            return b""
        assert self.f is not None
        f = self.f
        if os.fstat(f.fileno()).st_size < f.tell():   # truncated in place (max-file=1)
            f.seek(0)
        out = f.read()
        newer = self._newer()
        if not newer:
            return out
        out += f.read()   # rotated: this file is complete now; then each newer one in order
        for p in newer[:-1]:
            with contextlib.suppress(FileNotFoundError):
                out += p.read_bytes()
        with contextlib.suppress(FileNotFoundError):
            self._open(newer[-1])
            assert self.f is not None
            out += self.f.read()
        return out


async def entries(path: Path, rotation_: Rotation, follow: bool, tail: int, since: float, until: float,
                  running: Callable[[], bool], changed: Callable[[], asyncio.Event],
                  fmt: Format = JSON_FILE, with_details: bool = False) -> AsyncIterator[Entry]:
    """The log's entries, oldest first, filtered by time; with `follow`, then what is written until
    the container stops (`running` false and nothing new). `with_details`: each entry's data
    starts with its attrs, as `logs --details` shows them."""
    def entry(raw: bytes) -> Entry | None:
        rec = fmt.parse(raw)
        if rec is None:
            return None
        stream, data, t, attrs = rec
        return stream, details(attrs) + data if with_details else data, t

    fol = Follower(path)
    try:
        # Following: PATH is opened first and read to its end with the rest, so what is written
        # after that is read from the same file, neither lost nor read twice.
        current = fol.open() if follow else None
        lines: list[bytes]
        if follow and current is None:
            # No log yet when we looked: the follower reads it from its first byte once it is
            # there. Reading PATH here too would read a log made in between twice.
            lines, buf = [], b""
        else:
            lines, buf = await asyncio.to_thread(read, path, rotation_.max_file, tail, current, fmt)
        for raw in lines:
            rec = entry(raw)
            if rec and (not since or rec[2] >= since) and (not until or rec[2] <= until):
                yield rec
        if not follow:
            return
        ev = changed()
        while True:
            alive = running()
            chunk = fol.read()
            buf += chunk
            complete, buf = fmt.split(buf)
            for raw in complete:
                rec = entry(raw)
                if rec and (not until or rec[2] <= until):
                    yield rec
            if not alive and not chunk:
                return
            if not chunk:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ev.wait()), 0.1)
    finally:
        fol.close()
