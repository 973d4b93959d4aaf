"""Length-prefixed frames spoken on a shim's unix socket (agent <-> shim) and its control pair.

One byte of type, four bytes of big-endian length, the payload. Types:
  client -> shim: STDIN data, CLOSE_STDIN, RESIZE {"rows","cols"}, RELEASE (let a held container run)
  shim -> client: HELLO {"pid", "started_at"}, STDOUT, STDERR, EXIT {"exit_code", "oom_killed", ...}
"""

from __future__ import annotations

import json
import os
import struct
import time
from typing import Any

STDIN = b"i"
CLOSE_STDIN = b"c"
RESIZE = b"r"
RELEASE = b"g"
HELLO = b"h"
STDOUT = b"o"
STDERR = b"e"
EXIT = b"x"

_HEADER = struct.Struct(">cI")
HEADER_SIZE = _HEADER.size
MAX_FRAME = 1 << 20


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, obj: Any) -> bytes:
    return encode(kind, json.dumps(obj).encode())


class Decoder:
    """Feed bytes in, get whole frames out; survives frames split across reads."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER_SIZE:
            kind, length = _HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes is larger than {MAX_FRAME}")
            if len(self._buf) < HEADER_SIZE + length:
                break
            out.append((kind, bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])))
            del self._buf[:HEADER_SIZE + length]
        return out


def write_all(fd: int, data: bytes) -> bool:
    """Write everything, waiting out a full pipe; False if the reader has gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except OSError:
            return False
        view = view[n:]
    return True
