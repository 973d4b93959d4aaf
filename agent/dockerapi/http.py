"""A small HTTP/1.1 server on asyncio streams and h11, with what Docker's API needs that the usual
frameworks lack: hijacked connections (attach and exec switch to raw bidirectional bytes after a
`101 UPGRADED`, keep writing after the client's half-close), and chunked streams whose headers go
out before the first chunk (`wait` before `start`: the docker CLI blocks on those headers).

A handler takes a Request and returns one of:
  Json(status, value)        a JSON body with Content-Length
  Body(status, bytes, ctype) a body with Content-Length (HEAD sends the headers only)
  Stream(status, chunks)     chunked; the headers are flushed first, then each chunk as it comes;
                             the iterator is closed when the client goes away
  Hijack(fn, ctype)          101 UPGRADED (or 200 without an Upgrade request), then fn(reader, writer)
                             owns the connection, which is closed when fn returns
  WebSocket(fn, binary)      the websocket handshake, then fn(input, writer) with one message a write
Errors: raise HTTPError(status, message): the client gets Docker's {"message": ...}.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import logging
import socket
import tempfile
import termios
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

log = logging.getLogger("dockyard.dockerapi")

MAX_HEADERS = 64 * 1024
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # SIOCOUTQ == TIOCOUTQ on Linux


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Json:
    status: int
    value: Any
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Body:
    status: int
    data: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Stream:
    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Hijack:
    fn: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    content_type: str = "application/vnd.docker.raw-stream"


@dataclass
class WebSocket:
    """A websocket session: fn(client input, output writer) after the handshake (attach/ws)."""
    fn: Callable[[asyncio.StreamReader, Any], Awaitable[None]]
    binary: bool = True


Response = Json | Body | Stream | Hijack | WebSocket


class Request:
    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                 body: Callable[[], AsyncIterator[bytes]]) -> None:
        self.method = method
        url = urllib.parse.urlsplit(target)
        self.path = urllib.parse.unquote(url.path)
        self.query: dict[str, list[str]] = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        self._body = body
        self.params: dict[str, str] = {}   # from the route's pattern
        self.version = ""                  # the /vX.YY prefix, if any

    def arg(self, name: str, default: str = "") -> str:
        """The first value, as Go's FormValue reads it (docker-py repeats some, e.g. dockerfile)."""
        v = self.query.get(name)
        return v[0] if v else default

    def flag(self, name: str, default: bool = False) -> bool:
        """Docker's query booleans: the CLI sends 1/true, docker-py True/False; false is '', 0, no, false, none."""
        v = self.query.get(name)
        if not v:
            return default
        return v[0].strip().lower() not in ("", "0", "no", "false", "none")

    def int_arg(self, name: str, default: int | None = None) -> int | None:
        v = self.arg(name)
        if v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise HTTPError(400, f"invalid value for {name}: {v!r} is not an integer") from None

    def stream(self) -> AsyncIterator[bytes]:
        return self._body()

    async def body(self, limit: int = 16 << 20) -> bytes:
        out = bytearray()
        async for chunk in self._body():
            out += chunk
            if len(out) > limit:
                raise HTTPError(413, f"request body larger than {limit} bytes")
        return bytes(out)

    async def json(self) -> Any:
        data = await self.body()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise HTTPError(400, f"invalid JSON in the request body: {e}") from None

    @property
    def wants_upgrade(self) -> bool:
        return "upgrade" in self.headers.get("connection", "").lower() and bool(self.headers.get("upgrade"))


Handler = Callable[[Request], Awaitable[Response]]


def _headers(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


class Connection:
    """One client connection: requests in a keep-alive loop, until close or a hijack."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                 common_headers: Callable[[], list[tuple[str, str]]]) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.common = common_headers
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)

    async def _next_event(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            data = await self.reader.read(65536)
            self.conn.receive_data(data)  # b"" means EOF: h11 turns it into ConnectionClosed or an error

    async def _body_iter(self) -> AsyncIterator[bytes]:
        while self.conn.their_state is h11.SEND_BODY:
            ev = await self._next_event()
            if isinstance(ev, h11.Data):
                yield bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return
            elif isinstance(ev, h11.ConnectionClosed):
                raise HTTPError(400, "the client closed the connection in the middle of the request body")

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def serve(self) -> None:
        try:
            while True:
                try:
                    ev = await self._next_event()
                except h11.RemoteProtocolError as e:
                    with contextlib.suppress(Exception):
                        await self._error(e.error_status_hint, f"bad request: {e}", head=False)
                    return
                if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                    return
                if not isinstance(ev, h11.Request):
                    return
                req = Request(ev.method.decode(), ev.target.decode("latin-1"), list(ev.headers), self._body_iter)
                if not await self._one(req):
                    return
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    self.conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _drain_body(self) -> None:
        async for _ in self._body_iter():
            pass

    async def _error(self, status: int, message: str, head: bool) -> None:
        body = json.dumps({"message": message}).encode() + b"\n"
        await self._send(h11.Response(status_code=status, headers=_headers(
            [*self.common(), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])))
        if not head:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _one(self, req: Request) -> bool:
        """Serve one request; False when the connection must end (hijacked, or broken)."""
        head = req.method == "HEAD"
        try:
            resp = await self.handler(req)
        except HTTPError as e:
            with contextlib.suppress(HTTPError):
                await self._drain_body()
            await self._error(e.status, e.message, head)
            return True
        except Exception as e:  # a bug: say so rather than drop the connection
            log.exception("%s %s", req.method, req.path)
            with contextlib.suppress(HTTPError):
                await self._drain_body()
            await self._error(500, f"internal error: {type(e).__name__}: {e}", head)
            return True
        if isinstance(resp, Hijack):
            await self._drain_body()
            return await self._hijack(req, resp)
        if isinstance(resp, WebSocket):
            await self._drain_body()
            return await self._websocket(req, resp)
        await self._drain_body()
        if isinstance(resp, Json):
            body = json.dumps(resp.value).encode() + b"\n"
            await self._fixed(resp.status, body, "application/json", resp.headers, head)
        elif isinstance(resp, Body):
            await self._fixed(resp.status, resp.data, resp.content_type, resp.headers, head)
        else:
            await self._stream(resp, head)
        return True

    async def _fixed(self, status: int, body: bytes, ctype: str, extra: list[tuple[str, str]], head: bool) -> None:
        hs = [*self.common(), *extra]
        if status not in (204, 304):
            hs += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        await self._send(h11.Response(status_code=status, headers=_headers(hs)))
        if body and not head and status not in (204, 304):
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _stream(self, resp: Stream, head: bool) -> None:
        hs = [*self.common(), *resp.headers, ("Content-Type", resp.content_type)]
        await self._send(h11.Response(status_code=resp.status, headers=_headers(hs)))
        if head:
            await self._send(h11.EndOfMessage())
            return
        # The client going away (docker run -d drops its `wait`) ends the stream: watch for EOF.
        gone: asyncio.Future[bytes] | None = asyncio.ensure_future(self.reader.read(1))
        ahead = b""   # what the client sent meanwhile: the start of its next request
        chunks = resp.chunks
        try:
            while True:
                nxt = asyncio.ensure_future(anext(chunks))
                waits: set[asyncio.Future[Any]] = {nxt} if gone is None else {nxt, gone}
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if gone is not None and gone in done:
                    ahead = gone.result()
                    gone = None
                    if not ahead:   # EOF: the client went away
                        nxt.cancel()
                        with contextlib.suppress(BaseException):
                            await nxt
                        raise ConnectionResetError("the client went away")
                    if nxt not in done:
                        done, _ = await asyncio.wait({nxt})
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    break
                if chunk:
                    await self._send(h11.Data(data=chunk))
            await self._send(h11.EndOfMessage())
        finally:
            if gone is not None:
                gone.cancel()
            if ahead:  # the next request had begun: give h11 its first byte back
                self.conn.receive_data(ahead)
            with contextlib.suppress(BaseException):
                await chunks.aclose()  # type: ignore[attr-defined]

    async def _hijack(self, req: Request, resp: Hijack) -> bool:
        if req.wants_upgrade:
            head = (f"HTTP/1.1 101 UPGRADED\r\nContent-Type: {resp.content_type}\r\n"
                    "Connection: Upgrade\r\nUpgrade: tcp\r\n")
        else:
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {resp.content_type}\r\n"
        for k, v in self.common():
            head += f"{k}: {v}\r\n"
        self.writer.write((head + "\r\n").encode("latin-1"))
        await self.writer.drain()
        await _peer_read(self.writer)
        # What h11 had read past the request (stdin typed ahead) goes back in front of the stream.
        trailing, _closed = self.conn.trailing_data
        if trailing:
            self.reader._buffer[:0] = trailing  # type: ignore[attr-defined]
        try:
            await resp.fn(self.reader, self.writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        return False


    async def _websocket(self, req: Request, resp: WebSocket) -> bool:
        from .websocket import accept_headers, open_session

        key = req.headers.get("sec-websocket-key", "")
        if req.headers.get("upgrade", "").lower() != "websocket" or not key \
                or req.headers.get("sec-websocket-version", "") != "13":
            await self._error(400, "a websocket handshake is needed (Upgrade: websocket, Sec-WebSocket-Key, "
                                   "Sec-WebSocket-Version: 13)", False)
            return False
        head = accept_headers(key) + "".join(f"{k}: {v}\r\n" for k, v in self.common()).encode("latin-1")
        self.writer.write(head + b"\r\n")
        await self.writer.drain()
        trailing, _closed = self.conn.trailing_data
        if trailing:
            self.reader._buffer[:0] = trailing  # type: ignore[attr-defined]
        inbound, out, pump = await open_session(self.reader, self.writer, resp.binary)
        try:
            await resp.fn(inbound, out)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            pump.cancel()
            out.close()
        return False


async def _peer_read(writer: asyncio.StreamWriter, limit: float = 2.0) -> None:
    """Until the client has read what we sent (the socket's send queue is empty), at most `limit`
    seconds (clients read the headers at once; on a loaded machine that can take a while). docker-py reads a hijacked stream from the raw socket and loses bytes that came in
    the same read as the response headers (docker-py #1732, #2466): send output only after."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return
    buf = array.array("i", [0])
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCOUTQ, buf, True)
        except OSError:
            return
        if buf[0] == 0:
            return
        await asyncio.sleep(0.002)


async def spooled(tmpdir: Any, fill: Callable[[Any], None]) -> Any:
    """A temporary file that `fill` writes (in a thread), rewound: for a Stream of file_chunks,
    which closes it. Closed here if `fill` fails."""
    f = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 (handed to the response, which closes it)
    try:
        await asyncio.to_thread(fill, f)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


async def receive(req: Request, tmpdir: Any) -> Any:
    """The request body in a temporary file, rewound (the caller closes it)."""
    f = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 (the caller's to close)
    try:
        async for chunk in req.stream():
            await asyncio.to_thread(f.write, chunk)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


async def file_chunks(f: Any, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """A file's bytes for a Stream, read in a thread; the file is closed at the end."""
    try:
        while data := await asyncio.to_thread(f.read, size):
            yield data
    finally:
        f.close()


class Server:
    """Serves one handler on unix sockets and TCP addresses."""

    def __init__(self, handler: Handler, common_headers: Callable[[], list[tuple[str, str]]]) -> None:
        self.handler = handler
        self.common = common_headers
        self.servers: list[asyncio.AbstractServer] = []
        self._conns: set[asyncio.Task[None]] = set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await Connection(reader, writer, self.handler, self.common).serve()
        finally:
            self._conns.discard(task)

    async def listen_unix(self, path: str) -> None:
        self.servers.append(await asyncio.start_unix_server(self._client, path=path, limit=1 << 20))

    async def listen_tcp(self, host: str, port: int) -> None:
        self.servers.append(await asyncio.start_server(self._client, host, port, limit=1 << 20))

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for t in list(self._conns):
            t.cancel()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)
        self.servers.clear()
