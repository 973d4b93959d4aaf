"""The wire of the agent's local API (agent/local_api.py): frames on a unix socket, one call per
connection. Imports only json and struct: the CLI's fast commands (deploy/local.py) use it too.

A frame is one byte of type, four bytes of big-endian length, and a JSON payload:
  client -> agent: CALL {"method": "ListContainers"}, then the request MESSAGE (a client stream:
                   one MESSAGE each, then END). A connection closed without END cancels the call.
  agent -> client: a MESSAGE per response (a unary call has one), then END; or ERROR
                   {"code": "NOT_FOUND", "message": "..."} (grpc's status names), which ends the call.
Messages are agent.proto's, in their proto3 JSON form with the .proto's field names (bytes fields
are base64, int64 fields strings, as that form has them).
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from typing import Any

CALL = b"C"
MESSAGE = b"M"
END = b"E"
ERROR = b"X"

_HEADER = struct.Struct(">cI")
HEADER_SIZE = _HEADER.size
MAX_FRAME = 64 << 20  # as the gRPC server's max message length


def encode(kind: bytes, obj: Any = None) -> bytes:
    payload = b"" if obj is None else json.dumps(obj, separators=(",", ":")).encode()
    return _HEADER.pack(kind, len(payload)) + payload


def header(data: bytes) -> tuple[bytes, int]:
    """(type, payload length) of a frame's first HEADER_SIZE bytes."""
    kind, length = _HEADER.unpack(data)
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is larger than {MAX_FRAME}")
    return kind, length


def socket_path(grpc_socket: str) -> str:
    """Where an agent whose gRPC socket is at this path serves its local API."""
    return grpc_socket.removesuffix(".sock") + ".local.sock"
