"""CRIU's page server over TLS (agent/checkpoint/lazy.py), with the real criu: the agent's probe
proves its criu speaks TLS (and says no for one that ignores --tls, as a build without GnuTLS does),
and a page server run as the source's lazy dump runs it refuses a plaintext client and a client
with another CA's certificate, and takes one with the cluster's."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from agent.checkpoint.criu import Criu, find_criu
from agent.checkpoint.lazy import free_port, tls_args, tls_works
from common import pki

pytestmark = [pytest.mark.criu, pytest.mark.root]


def _bundle(d: Path, ca: pki.CA, node: str, ips: tuple[str, ...] = ()) -> Path:
    key, csr = pki.make_key_and_csr()
    cert = pki.sign(ca, csr, node_id=node, role="agent", sans=[pki.node_name(node)], ips=ips)
    pki.write_bundle(d, pki.Bundle(ca.cert_pem, cert, key))
    return d


@pytest.fixture(scope="module")
def criu() -> Criu:
    c = find_criu()
    if c is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")
    return c


def test_the_probe_finds_this_criu_speaks_tls(criu: Criu, tmp_path: Path) -> None:
    ok, why = tls_works(criu, _bundle(tmp_path / "tls", pki.make_ca("c1"), "n1"))
    assert ok, why
    assert "TLSv1." in why


def test_the_probe_refuses_a_criu_that_ignores_tls(tmp_path: Path) -> None:
    # What a criu built without GnuTLS does: takes --tls, serves plaintext.
    fake = tmp_path / "criu"
    fake.write_text("""#!/usr/bin/env python3
import os, socket, sys
a = sys.argv
port, fd = int(a[a.index("--port") + 1]), int(a[a.index("--status-fd") + 1])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen()
os.write(fd, b"\\0"); os.close(fd)
c, _ = s.accept(); c.recv(24)
""")
    fake.chmod(0o755)
    t0 = time.monotonic()
    ok, why = tls_works(Criu(str(fake)), _bundle(tmp_path / "tls", pki.make_ca("c1"), "n1"), timeout=1.0)
    assert not ok and "without GnuTLS" in why, why
    assert time.monotonic() - t0 < 5


def _page_server(criu: Criu, tls: Path, work: Path, crl: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port("127.0.0.1")
    r, w = os.pipe()
    proc = subprocess.Popen([criu.path, "page-server", "--address", "127.0.0.1", "--port", str(port),
                             "--images-dir", str(work), "--log-file", str(work / "ps.log"), "-v4",
                             "--status-fd", str(w), *tls_args(tls, server=True, crl_file=crl)], pass_fds=(w,),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as f:
        assert f.read(1), (work / "ps.log").read_text()[-2000:]
    return proc, port


def _handshake(port: int, client: Path | None, ca_pem: Path) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca_pem))
    if client is not None:
        ctx.load_cert_chain(str(client / pki.CERT_FILE), str(client / pki.KEY_FILE))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b"\0" * 24)  # a torn request: the server fails after the handshake either way
            s.recv(1)
            return "handshake"
    except (OSError, ssl.SSLError) as e:
        return f"refused: {e}"


@pytest.mark.parametrize("who", ["plaintext", "no certificate", "foreign CA", "cluster"])
def test_the_page_server_takes_only_a_cluster_certificate(criu: Criu, tmp_path: Path, who: str) -> None:
    ca = pki.make_ca("c1")
    source = _bundle(tmp_path / "src", ca, "n1", ("127.0.0.1",))
    proc, port = _page_server(criu, source, tmp_path)
    try:
        if who == "plaintext":
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"\0" * 24)
            got = "sent"
        elif who == "no certificate":
            got = _handshake(port, None, source / pki.CA_FILE)
        elif who == "foreign CA":
            got = _handshake(port, _bundle(tmp_path / "evil", pki.make_ca("c1"), "n2"), source / pki.CA_FILE)
        else:
            got = _handshake(port, _bundle(tmp_path / "dst", ca, "n2"), source / pki.CA_FILE)
        rc = proc.wait(timeout=20)
        log = (tmp_path / "ps.log").read_text(errors="replace")
        if who == "cluster":
            assert "TLS handshake completed" in log and "Invalid certificate" not in log, (got, log[-2000:])
        else:
            # Refused before any page request is read: the handshake fails, or (another CA) the
            # client's certificate is checked right after it and is not trusted.
            assert rc != 0, (got, log[-2000:])
            assert ("TLS handshake failed" in log or "certificate is NOT trusted" in log
                    or "TLS handshake completed" not in log), log[-2000:]
            if who == "foreign CA":
                assert "The certificate issuer is unknown" in log, log[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("who", ["removed", "kept"])
def test_the_page_server_refuses_a_removed_nodes_certificate(criu: Criu, tmp_path: Path, who: str) -> None:
    """Issue 13: the CRL the scheduler sends with a move (scheduler/tls.py revocation_list, made by
    pki.make_crl) lists a removed node's certificate: CRIU refuses it after the handshake, and
    still takes the certificate of a node that was not removed."""
    ca = pki.make_ca("c1")
    source = _bundle(tmp_path / "src", ca, "n1", ("127.0.0.1",))
    removed, kept = _bundle(tmp_path / "rm", ca, "n2"), _bundle(tmp_path / "ok", ca, "n3")
    crl = tmp_path / "crl.pem"
    crl.write_bytes(pki.make_crl(ca, [pki.serial_of((removed / pki.CERT_FILE).read_bytes())]))
    proc, port = _page_server(criu, source, tmp_path, crl)
    try:
        got = _handshake(port, removed if who == "removed" else kept, source / pki.CA_FILE)
        rc = proc.wait(timeout=20)
        log = (tmp_path / "ps.log").read_text(errors="replace")
        if who == "kept":
            assert "TLS handshake completed" in log and "NOT trusted" not in log, (got, log[-2000:])
        else:
            assert rc != 0 and "revoked" in log, (got, log[-2000:])
            print(f"\n{[x for x in log.splitlines() if 'revoked' in x][:1]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
