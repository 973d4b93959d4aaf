"""A websocket connection as the attach relay's client streams (GET /containers/{id}/attach/ws).

wsproto (h11's sibling, sans-IO) does the handshake token and the framing; this module only
turns its events into a StreamReader of the client's input and a writer whose every write is one
message. Docker sends binary messages from API 1.42, text ones before, never multiplexed.
"""

from __future__ import annotations

import asyncio
import contextlib

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token


def accept_headers(key: str) -> bytes:
    """The 101 that completes a client's handshake (RFC 6455 4.2.2)."""
    token = generate_accept_token(key.encode("latin-1")).decode()
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {token}\r\n").encode("latin-1")


class WsWriter:
    """What the relay writes to: each write() goes out as one websocket message."""

    def __init__(self, ws: Connection, writer: asyncio.StreamWriter, binary: bool) -> None:
        self.ws, self.writer, self.binary = ws, writer, binary

    def write(self, data: bytes) -> None:
        if self.binary:
            self.writer.write(self.ws.send(BytesMessage(data)))
        else:
            self.writer.write(self.ws.send(TextMessage(data.decode("utf-8", "replace"))))

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.ws.state.name == "OPEN":
                self.writer.write(self.ws.send(CloseConnection(code=1000)))
        self.writer.close()


async def open_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, binary: bool
                       ) -> tuple[asyncio.StreamReader, WsWriter, asyncio.Task[None]]:
    """After the 101: (the client's input as bytes, the output writer, the task that reads frames)."""
    ws = Connection(ConnectionType.SERVER)
    inbound = asyncio.StreamReader()
    out = WsWriter(ws, writer, binary)

    async def pump() -> None:
        try:
            while True:
                data = await reader.read(65536)
                ws.receive_data(data or None)
                for ev in ws.events():
                    if isinstance(ev, BytesMessage):
                        inbound.feed_data(ev.data)
                    elif isinstance(ev, TextMessage):
                        inbound.feed_data(ev.data.encode())
                    elif isinstance(ev, Ping):
                        writer.write(ws.send(ev.response()))
                    elif isinstance(ev, CloseConnection):
                        with contextlib.suppress(Exception):
                            writer.write(ws.send(ev.response()))
                        inbound.feed_eof()
                        return
                if not data:
                    inbound.feed_eof()
                    return
        except Exception:
            inbound.feed_eof()

    return inbound, out, asyncio.ensure_future(pump())
