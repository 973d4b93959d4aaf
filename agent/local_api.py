"""The node API on a second unix socket, for clients on this host that must start fast: the CLI's
common commands cannot afford gRPC's import (about 70 ms of a 12 ms interpreter start here) nor
protobuf's (about 40 ms). The same servicer (agent/server.py) answers: each call is dispatched to
the AgentServicer method of its name (or the images servicer's, for images.proto's calls), with the
message converted from and to its proto3 JSON form at this edge, so the API, its checks and its
errors are gRPC's, only the encoding differs; bytes of images and archives go as DATA frames.

The wire is agent/local_wire.py. The socket sits beside the gRPC one (agent.sock ->
agent.local.sock) with the same mode; the agent removes it when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agent import local_wire as wire
from protos import agent_pb2 as pb
from protos import images_pb2 as ipb

log = logging.getLogger("dockyard.agent.local")

# CALL's "service" -> that service's methods ("" is the node API, agent.proto's Agent)
_SERVICES = {"": pb.DESCRIPTOR.services_by_name["Agent"].methods_by_name,
             "images": ipb.DESCRIPTOR.services_by_name["Images"].methods_by_name}


def _bytes_field(cls: type[Message]) -> str:
    """The message's bytes field, which a DATA frame fills ("" when it has none)."""
    return next((f.name for f in cls.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_BYTES), "")


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """What the servicer's methods use of grpc.aio.ServicerContext: abort(); and the client's own
    file a server stream may be written into instead (Save), when it named one."""

    file: Any = None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Aborted(code, details)


def _to_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class _Requests:
    """The client's request messages as they arrive; EOF before END cancels the call."""

    def __init__(self, reader: asyncio.StreamReader, cls: type[Message], call: asyncio.Task[None] | None = None) -> None:
        self.reader = reader
        self.cls = cls
        self.call = call
        self.data_field = _bytes_field(cls)
        # The client's own file, when it named one of its descriptors in the CALL: a servicer that
        # reads a stream (Load, ImportImage) reads it from here itself, on its thread, instead of
        # the bytes coming through this socket, the event loop and a pipe.
        self.file: Any = None

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Message:
        msg = await self.next()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def next(self) -> Message | None:
        try:
            head = await self.reader.readexactly(wire.HEADER_SIZE)
            kind, length = wire.header(head)
            payload = await self.reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            if self.call is not None:
                self.call.cancel()  # the client went away: as grpc cancels a call
            return None
        if kind == wire.END:
            return None
        if kind == wire.DATA and self.data_field:
            msg = self.cls()
            setattr(msg, self.data_field, payload)
            return msg
        if kind != wire.MESSAGE:
            raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"expected a message frame, got {kind!r}")
        try:
            return json_format.ParseDict(json.loads(payload), self.cls())
        except (json_format.ParseError, ValueError) as e:
            raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"bad {self.cls.__name__}: {e}") from None


def _peer_file(writer: asyncio.StreamWriter, fd: int, write: bool = False) -> Any:
    """The regular file the connected client has open as descriptor ``fd`` for reading (or with
    ``write``, for writing), opened again through /proc/PID/fd of the peer the kernel names
    (SO_PEERCRED): only what the client itself may do (its descriptor's access mode is checked)."""
    sock = writer.get_extra_info("socket")
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    with open(f"/proc/{pid}/fdinfo/{int(fd)}") as info:
        flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), os.O_WRONLY)
    if flags & os.O_ACCMODE not in ((os.O_WRONLY, os.O_RDWR) if write else (os.O_RDONLY, os.O_RDWR)):
        raise OSError(f"descriptor {fd} is not open for {'writing' if write else 'reading'}")
    if write:
        f = os.fdopen(os.open(f"/proc/{pid}/fd/{int(fd)}", os.O_WRONLY | os.O_CLOEXEC), "wb", buffering=1 << 20)
    else:
        f = open(f"/proc/{pid}/fd/{int(fd)}", "rb", buffering=1 << 20)  # noqa: SIM115 - closed by _serve
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise OSError(f"descriptor {fd} is not a regular file")
    return f


class LocalApi:
    def __init__(self, servicer: Any, path: str, images: Any = None) -> None:
        self.servicers = {"": servicer, "images": images}
        self.path = path
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._serve, path=self.path, limit=wire.MAX_FRAME)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(wire.HEADER_SIZE)
            kind, length = wire.header(head)
            call = json.loads(await reader.readexactly(length)) if length else None
            method = None
            service = call.get("service", "") if isinstance(call, dict) else ""
            if kind == wire.CALL and isinstance(call, dict) and self.servicers.get(service) is not None:
                method = _SERVICES[service].get(call.get("method", ""))
            if method is None:
                writer.write(wire.encode(wire.ERROR, {"code": "UNIMPLEMENTED", "message": f"no such call: {call!r}"}))
                return
            task = asyncio.current_task()
            requests = _Requests(reader, message_factory.GetMessageClass(method.input_type), task)
            assert isinstance(call, dict)
            if isinstance(call.get("file"), int) and (method.client_streaming or method.server_streaming):
                # a stream in (Load, ImportImage) read from it, or one out (Save) written into it
                try:
                    requests.file = _peer_file(writer, call["file"], write=not method.client_streaming)
                except OSError as e:
                    writer.write(wire.encode(wire.ERROR, {"code": "FAILED_PRECONDITION",
                                                          "message": f"file: the client's descriptor: {e}"}))
                    return
            try:
                await self._call(self.servicers[service], method, requests, writer)
            finally:
                if requests.file is not None:
                    requests.file.close()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the client went away or spoke nonsense: nothing to answer
        except asyncio.CancelledError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _call(self, servicer: Any, method: Any, requests: _Requests, writer: asyncio.StreamWriter) -> None:
        handler = getattr(servicer, method.name)
        # Answers go as DATA frames only where the message is nothing but bytes (images.proto's Chunk):
        # a client that does not ask for them still reads every other answer as a MESSAGE.
        out_fields = method.output_type.fields
        data_field = out_fields[0].name if len(out_fields) == 1 and out_fields[0].type == FieldDescriptor.TYPE_BYTES else ""
        ctx = _Context()
        ctx.file = requests.file if not method.client_streaming else None
        try:
            if method.client_streaming:
                arg: Any = aiter(requests)
            else:
                arg = await requests.next()
                if arg is None:
                    raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            if method.server_streaming:
                stream = handler(arg, ctx)
                try:
                    async for resp in stream:
                        if data_field:
                            writer.write(wire.data_frame(getattr(resp, data_field)))
                        else:
                            writer.write(wire.encode(wire.MESSAGE, _to_json(resp)))
                        await writer.drain()
                finally:
                    await stream.aclose()
            else:
                resp = await handler(arg, ctx)
                writer.write(wire.encode(wire.MESSAGE, _to_json(resp)))
            writer.write(wire.encode(wire.END))
        except _Aborted as e:
            writer.write(wire.encode(wire.ERROR, {"code": e.code.name, "message": e.details}))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("local API %s", method.name)
            writer.write(wire.encode(wire.ERROR, {"code": "INTERNAL", "message": f"{type(e).__name__}: {e}"}))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
