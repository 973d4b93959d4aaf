"""The small HTTP server the agent and the scheduler serve /metrics (and the scheduler's service
discovery) from: daemon threads, so a scrape never waits for the asyncio loop, and no FQDN lookup at
bind. ``parse_addr`` checks a HOST:PORT option and names it when it is wrong."""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class MetricsAddressError(ValueError):
    pass


def parse_addr(addr: str, option: str = "--metrics-addr") -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port); raises MetricsAddressError naming the option."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsAddressError(f"{option} {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9323")
    return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass
class MetricsServer:
    """A running /metrics endpoint: an HTTP server on its own daemon threads."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        a: Any = self.httpd.server_address
        return str(a[0]), int(a[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (scrapes every few seconds would drown the log)."""

    def reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_http(addr: str, handler: type[BaseHTTPRequestHandler]) -> MetricsServer:
    """An HTTP server on HOST:PORT on daemon threads (the agent's and the scheduler's /metrics)."""
    host, port = parse_addr(addr)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def server_bind(self) -> None:
            # HTTPServer.server_bind looks up the host's FQDN: with no DNS that stalls ~10 s.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    try:
        httpd = Server((host, port), handler)
    except OSError as e:
        raise MetricsAddressError(f"--metrics-addr {addr}: {e.strerror or e}") from e
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
