"""etcd's own PKI (scheduler/etcd_tls.py): made once, private, a CA apart from the cluster's, etcd's
certificate re-issued when it must name a new address, external client files checked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common import pki
from scheduler import etcd_tls


def test_etcd_gets_a_ca_of_its_own_made_once(tmp_path: Path) -> None:
    a = etcd_tls.ensure(tmp_path)
    ca = (tmp_path / "etcd-tls" / "ca" / "ca.pem").read_bytes()
    server = pki.read_bundle(a.server)
    client = a.client_bundle()
    assert server.ca_pem == client.ca_pem == ca
    assert pki.verify_issued(ca, client.cert_pem, client.key_pem).node_id == "scheduler"
    assert pki.ip_sans(server.cert_pem) == ["127.0.0.1"]
    assert stat.S_IMODE((tmp_path / "etcd-tls").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "etcd-tls" / "ca" / "key.pem").stat().st_mode) == 0o600
    args = a.server_args()
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    # Again: the same CA and certificates; with a new address only etcd's is re-issued.
    etcd_tls.ensure(tmp_path)
    assert a.client_bundle() == client and pki.read_bundle(a.server) == server
    etcd_tls.ensure(tmp_path, ips=("127.0.0.1", "10.0.0.7"))
    assert pki.ip_sans(pki.read_bundle(a.server).cert_pem) == ["127.0.0.1", "10.0.0.7"]
    assert a.client_bundle() == client and (tmp_path / "etcd-tls" / "ca" / "ca.pem").read_bytes() == ca


def test_external_client_files_are_checked(tmp_path: Path) -> None:
    a = etcd_tls.ensure(tmp_path)
    c = a.dir / "client"
    with pytest.raises(pki.PKIError, match="needs --etcd-cert, --etcd-key as well"):
        etcd_tls.external_bundle(str(c / "ca.pem"), "", "")
    with pytest.raises(pki.PKIError, match="no such key file"):
        etcd_tls.external_bundle(str(c / "ca.pem"), str(c / "cert.pem"), str(tmp_path / "nokey.pem"))
    assert etcd_tls.external_bundle(str(c / "ca.pem"), str(c / "cert.pem"), str(c / "key.pem")) == a.client_bundle()
