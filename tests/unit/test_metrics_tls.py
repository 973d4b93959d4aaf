"""`--metrics-tls` (common/http.py): /metrics over HTTPS with the process's cluster bundle; a scraper
needs a certificate of the cluster CA (plaintext, no certificate and another CA's are refused); a
renewed certificate is served to the next connection without a restart."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest

from common import pki
from common.http import QuietHandler, start_http


class Hello(QuietHandler):
    def do_GET(self) -> None:
        self.reply(200, "text/plain", b"up 1\n")


def _get(port: int, client: Path | None, ca: Path) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client / "cert.pem"), str(client / "key.pem"))
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()
    finally:
        c.close()


def _serial(port: int, client: Path) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(str(client / "cert.pem"), str(client / "key.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_metrics_over_mutual_tls(tmp_path: Path) -> None:
    ca = pki.make_ca("c1")
    node, admin, evil = tmp_path / "node", tmp_path / "admin", tmp_path / "evil"
    pki.write_bundle(node, pki.issue_bundle(ca, node_id="n1", role="agent", sans=[pki.node_name("n1")]))
    pki.write_bundle(admin, pki.issue_bundle(ca, node_id="admin", role="admin", sans=[]))
    pki.write_bundle(evil, pki.issue_bundle(pki.make_ca("c1"), node_id="admin", role="admin", sans=[]))
    srv = start_http("127.0.0.1:0", Hello, node)
    port = srv.address[1]
    try:
        assert _get(port, admin, node / "ca.pem") == "up 1\n"
        for who in (None, evil):
            with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
                _get(port, who, node / "ca.pem")
        with pytest.raises((OSError, http.client.HTTPException)):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/metrics")
            c.getresponse().read()
        first = _serial(port, admin)
        pki.write_bundle(node, pki.issue_bundle(ca, node_id="n1", role="agent", sans=[pki.node_name("n1")]))
        srv.reload_tls()
        assert _serial(port, admin) != first
        assert _get(port, admin, node / "ca.pem") == "up 1\n"
    finally:
        srv.close()
