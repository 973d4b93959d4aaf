"""The wire of the agent's local API (agent/local_api.py): frames on a unix socket, one call per
connection. Imports only json and struct: the CLI's fast commands (deploy/local.py) use it too.

A frame is one byte of type, four bytes of big-endian length, and a JSON payload:
  client -> agent: CALL {"method": "ListContainers"}, then the request MESSAGE (a client stream:
                   one MESSAGE each, then END). A connection closed without END cancels the call.
  agent -> client: a MESSAGE per response (a unary call has one), then END; or ERROR
                   {"code": "NOT_FOUND", "message": "..."} (grpc's status names), which ends the call.
Messages are agent.proto's, in their proto3 JSON form with the .proto's field names (bytes fields
are base64, int64 fields strings, as that form has them). A CALL may name another service of the
agent: {"method": "Save", "service": "images"} (images.proto's Images).
  A client streaming a regular file it has open (load -i, import FILE) may name it instead:
        CALL {"method": "Load", "service": "images", "file": FD}; the agent opens /proc/PID/fd/FD
        of the peer (SO_PEERCRED) and reads it itself; FAILED_PRECONDITION if it cannot (the client
        then sends the bytes).
  DATA: a message of just its bytes field, the bytes as the payload itself, so images and archives
        travel as they are, neither base64'd nor parsed as JSON: the client may send one for any
        request message with a bytes field (Chunk.data, BuildInput.context, DataChunk.data); the
        agent answers with them for a message that is nothing but bytes (images.proto's Chunk).
"""

from __future__ import annotations

# Not json, struct or socket: with what they import (re, enum, collections, selectors) they were
# 12-15 ms of the CPU of a 37 ms `dockyard ps` here. json's own C accelerator does the work.
import _json

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from typing import Any

CALL = b"C"
MESSAGE = b"M"
END = b"E"
ERROR = b"X"
DATA = b"D"

HEADER_SIZE = 5
MAX_FRAME = 64 << 20  # common.transport.MAX_MESSAGE (not imported: grpc); a test checks they agree


def _no_default(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class _Decoding:
    """What _json's scanner reads of json.JSONDecoder: strict JSON, no NaN or Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")


# json.dumps(obj, separators=(",", ":"), allow_nan=False) and json.loads, as json itself builds them
_encode = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None, ":", ",", False, False, False)
_scan = _json.make_scanner(_Decoding)  # type: ignore[arg-type]  # it reads these attributes only


def dumps(obj: Any) -> str:
    return "".join(_encode(obj, 0))


def loads(text: str | bytes) -> Any:
    s = text.decode() if isinstance(text, bytes) else text
    try:
        obj, end = _scan(s, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(s):
        raise ValueError(f"extra data after the JSON value at {end}")
    return obj


def encode(kind: bytes, obj: Any = None) -> bytes:
    payload = b"" if obj is None else dumps(obj).encode()
    return kind + len(payload).to_bytes(4, "big") + payload


def data_frame(payload: bytes) -> bytes:
    return DATA + len(payload).to_bytes(4, "big") + payload


def header(data: bytes) -> tuple[bytes, int]:
    """(type, payload length) of a frame's first HEADER_SIZE bytes."""
    length = int.from_bytes(data[1:5], "big")
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is larger than {MAX_FRAME}")
    return data[:1], length


def socket_path(grpc_socket: str) -> str:
    """Where an agent whose gRPC socket is at this path serves its local API."""
    return grpc_socket.removesuffix(".sock") + ".local.sock"
