"""A client of the agent's local API (agent/local_api.py, wire in agent/local_wire.py): the node
API's calls as proto3 JSON dicts over a unix socket, without grpc or protobuf, for the commands
that must start fast (deploy/cli_local.py).
"""

from __future__ import annotations

import _socket  # not socket: it imports enum and selectors (agent/local_wire.py)

from agent import local_wire as wire

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class NotServed(Exception):
    """No local API to talk to here (not a unix host, or nothing listens): use gRPC."""


class CallError(Exception):
    """The call failed: code is grpc's status name (NOT_FOUND...), details the agent's message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def daemon_error(code: str, details: str, host: str) -> str:
    """What the CLI prints for a failed call (the gRPC path says the same)."""
    if code == "UNAVAILABLE":
        return f"Cannot connect to the dockyard agent at {host}. Is the agent running? ({details})"
    return f"Error response from daemon: {details}"


class Call:
    """One call on its own connection: send() request messages, iterate the responses."""

    def __init__(self, sock: _socket.socket, method: str, service: str = "", file: int = -1) -> None:
        import _thread

        self.sock = sock
        self._buf = b""
        self._sending = _thread.allocate_lock()  # a stdin pump and a signal handler send too: whole frames
        call: dict[str, Any] = {"method": method}
        if service:
            call["service"] = service
        if file >= 0:
            call["file"] = file  # the agent reads this descriptor of ours itself (agent/local_wire.py)
        self._refused = False
        self._sendall(wire.encode(wire.CALL, call))

    def _sendall(self, frame: bytes) -> None:
        """The agent may answer before it has read all we send (an error, then it closes): what it
        said is read by iterating, so a closed pipe here ends the sending, not the call."""
        if self._refused:
            return
        try:
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            self._refused = True

    def send(self, msg: dict[str, Any]) -> None:
        frame = wire.encode(wire.MESSAGE, msg)
        with self._sending:
            self._sendall(frame)

    def send_data(self, data: bytes) -> None:
        """A message of just the request's bytes field (an archive's, a context's chunk)."""
        self._sendall(wire.data_frame(data))

    def done_sending(self) -> None:
        self._sendall(wire.encode(wire.END))

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self.sock.recv(max(65536, n - len(self._buf)))
            if not data:
                raise CallError("UNAVAILABLE", "the agent closed the connection")
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            kind, length = wire.header(self._read(wire.HEADER_SIZE))
            if kind == wire.DATA:
                yield {"": self._read(length)}  # a message of just its bytes field, not base64'd
                continue
            payload: dict[str, Any] = wire.loads(self._read(length)) if length else {}
            if kind == wire.MESSAGE:
                yield payload
            elif kind == wire.END:
                return
            elif kind == wire.ERROR:
                raise CallError(payload.get("code", "UNKNOWN"), payload.get("message", ""))
            else:
                raise CallError("INTERNAL", f"unexpected frame {kind!r} from the agent")

    def close(self) -> None:
        self.sock.close()


class LocalClient:
    def __init__(self, host: str) -> None:
        if not host.startswith("unix://"):
            raise NotServed(host)
        self.host = host
        self.path = wire.socket_path(host.removeprefix("unix://"))

    def open(self, method: str, service: str = "", file: int = -1) -> Call:
        """A call on a new connection; NotServed if nothing listens at the local API's socket."""
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise NotServed(f"{self.path}: {e.strerror}") from None
        return Call(s, method, service, file)

    def call(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        c = self.open(method)
        try:
            c.send(request)
            for resp in c:
                return resp
            raise CallError("INTERNAL", f"{method}: no response")
        finally:
            c.close()
