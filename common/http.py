"""The small HTTP server the agent and the scheduler serve /metrics (and the scheduler's service
discovery) from: daemon threads, so a scrape never waits for the asyncio loop, and no FQDN lookup at
bind. ``parse_addr`` checks a HOST:PORT option and names it when it is wrong.

With ``tls_dir`` (``--metrics-tls``: the process's cluster bundle, ca.pem, cert.pem, key.pem) it is
HTTPS with the node's certificate and asks the scraper for a certificate of the cluster CA (for
Prometheus, ``tls_config`` with the admin bundle: ca_file, cert_file, key_file, and server_name
``<node id>.node.dockyard`` or ``scheduler.dockyard``). ``reload_tls`` takes a renewed certificate
from the same files; the handshake runs on the request's thread, never the accepting one."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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
    tls_dir: Path | None = None

    def reload_tls(self) -> None:
        """The renewed certificate in ``tls_dir``, for the next connection."""
        if self.tls_dir is not None:
            self.httpd.tls_context = _tls_context(self.tls_dir)  # type: ignore[attr-defined]

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


def _tls_context(tls_dir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem"))
    ctx.load_verify_locations(str(tls_dir / "ca.pem"))  # never the system roots
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def start_http(addr: str, handler: type[BaseHTTPRequestHandler], tls_dir: Path | None = None) -> MetricsServer:
    """An HTTP server on HOST:PORT on daemon threads (the agent's and the scheduler's /metrics);
    with ``tls_dir``, mutual-TLS HTTPS with that bundle."""
    host, port = parse_addr(addr)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        tls_context: ssl.SSLContext | None = _tls_context(tls_dir) if tls_dir is not None else None

        def get_request(self) -> tuple[Any, Any]:
            sock, peer = super().get_request()
            if self.tls_context is not None:  # the handshake on the handler's thread (its first read)
                sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            return sock, peer

        def handle_error(self, request: Any, client_address: Any) -> None:
            if self.tls_context is None:  # over TLS a scraper without a certificate fails its
                super().handle_error(request, client_address)  # handshake: not logged per attempt

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
    return MetricsServer(httpd, thread, tls_dir)
