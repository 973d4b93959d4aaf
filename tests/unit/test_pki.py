"""common/pki.py: the CA, the issuer that trusts only a CSR's public key, tokens, key files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import NameOID

from common import pki


@pytest.fixture(scope="module")
def ca() -> pki.CA:
    return pki.make_ca("c0ffee")


def test_ca_is_a_p256_root_of_its_cluster(ca: pki.CA) -> None:
    cert = ca.cert
    assert ca.cluster_id == "c0ffee"
    assert cert.subject == cert.issuer
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"


def test_a_malicious_csr_gets_only_what_the_issuer_decides(ca: pki.CA) -> None:
    # The CSR asks for another node's CN, the admin role, another cluster and the scheduler's name.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other-node"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(name)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(pki.SCHEDULER_NAME)]), critical=False)
           .sign(key, hashes.SHA256()))
    pem = pki.sign(ca, csr.public_bytes(Encoding.PEM), node_id="n1", role="agent", sans=[pki.node_name("n1")])
    s = pki.subject_of(pem)
    assert (s.node_id, s.role, s.cluster_id) == ("n1", "agent", "c0ffee")
    cert = x509.load_pem_x509_certificate(pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == ["n1.node.dockyard"]
    cert.verify_directly_issued_by(ca.cert)


def test_the_issuer_refuses_a_forged_csr_and_bad_names(ca: pki.CA) -> None:
    _, csr = pki.make_key_and_csr()
    with pytest.raises(pki.PKIError, match="role 'root'"):
        pki.sign(ca, csr, node_id="n1", role="root", sans=[])
    with pytest.raises(pki.PKIError, match="node id"):
        pki.sign(ca, csr, node_id="N1/../x", role="agent", sans=[])
    with pytest.raises(pki.PKIError, match="not a PEM CSR"):
        pki.sign(ca, b"junk", node_id="n1", role="agent", sans=[])
    rsa_like = ec.generate_private_key(ec.SECP384R1())
    other = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(rsa_like, hashes.SHA256())
    with pytest.raises(pki.PKIError, match="P-256"):
        pki.sign(ca, other.public_bytes(Encoding.PEM), node_id="n1", role="agent", sans=[])


def test_verify_issued_checks_the_ca_and_the_key(ca: pki.CA) -> None:
    key, csr = pki.make_key_and_csr()
    cert = pki.sign(ca, csr, node_id="n2", role="agent", sans=[])
    assert pki.verify_issued(ca.cert_pem, cert, key).node_id == "n2"
    other_key, _ = pki.make_key_and_csr()
    with pytest.raises(pki.PKIError, match="not over this node's key"):
        pki.verify_issued(ca.cert_pem, cert, other_key)
    with pytest.raises(pki.PKIError, match="not signed by the cluster CA"):
        pki.verify_issued(pki.make_ca("other").cert_pem, cert, key)


def test_tokens_pin_the_ca_and_compare_their_secret(ca: pki.CA) -> None:
    token = pki.make_token(ca.cert_pem)
    t = pki.parse_token(token)
    assert t.digest == ca.digest() and len(t.secret) == 25
    assert pki.secret_matches(t.secret, token)
    assert not pki.secret_matches(pki.parse_token(pki.make_token(ca.cert_pem)).secret, token)
    assert pki.parse_token(pki.make_token(pki.make_ca("x").cert_pem)).digest != t.digest
    for bad in ("SWMTKN-1-a-b", token + "x", token.replace("-", "_"), pki.TOKEN_PREFIX + "A" * 50 + "-" + "b" * 25):
        with pytest.raises(pki.PKIError, match="join token"):
            pki.parse_token(bad)


def test_bundles_are_written_private_and_readable_keys_refused(tmp_path: Path, ca: pki.CA) -> None:
    bundle = pki.issue_bundle(ca, node_id="admin", role="admin", sans=[])
    d = tmp_path / "client"
    pki.write_bundle(d, bundle)
    assert os.stat(d).st_mode & 0o777 == 0o700
    assert os.stat(d / "key.pem").st_mode & 0o777 == 0o600
    back = pki.read_bundle(d)
    assert back == bundle
    assert isinstance(load_pem_private_key(back.key_pem, None), ec.EllipticCurvePrivateKey)
    os.chmod(d / "key.pem", 0o640)
    with pytest.raises(pki.PKIError, match="mode 0640 lets group or others read"):
        pki.read_bundle(d)
    (d / "cert.pem").unlink()
    with pytest.raises(pki.PKIError, match=r"no cert\.pem"):
        pki.read_bundle(d)


def test_an_expired_or_future_certificate_is_named(ca: pki.CA, tmp_path: Path) -> None:
    import datetime as dt

    from agent.join import JoinError, local_bundle

    key, csr = pki.make_key_and_csr()
    old = pki.sign(ca, csr, node_id="n1", role="agent", sans=[], lifetime=dt.timedelta(hours=1),
                   now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    with pytest.raises(pki.PKIError, match="expired at"):
        pki.check_valid(old)
    with pytest.raises(pki.PKIError, match="valid only from"):
        pki.check_valid(old, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    pki.write_bundle(tmp_path / "tls", pki.Bundle(ca.cert_pem, old, key))
    with pytest.raises(JoinError, match="expired at"):
        local_bundle(tmp_path / "tls")
    good = pki.issue_bundle(ca, node_id="n1", role="agent", sans=[])
    pki.write_bundle(tmp_path / "tls", good)
    assert local_bundle(tmp_path / "tls") == good
    os.chmod(tmp_path / "tls" / "key.pem", 0o644)  # a key others may read: the agent refuses to start
    with pytest.raises(JoinError, match="mode 0644"):
        local_bundle(tmp_path / "tls")


def test_an_ip_san_is_the_address_the_joiner_came_from_never_what_it_asks(ca: pki.CA) -> None:
    from scheduler.tls import peer_ips

    # The page server's name check (CRIU) needs the source's address in its certificate: the
    # scheduler takes it from the join connection's peer, whatever the CSR says.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("10.9.9.9"))]),
                          critical=False).sign(key, hashes.SHA256()))
    pem = pki.sign(ca, csr.public_bytes(Encoding.PEM), node_id="n1", role="agent", sans=[pki.node_name("n1")],
                   ips=peer_ips("ipv4:10.0.0.5:41234"))
    assert pki.ip_sans(pem) == ["10.0.0.5"]
    assert peer_ips("ipv6:%5B::1%5D:5000") == ["::1"] and peer_ips("ipv6:[fe80::1%eth0]:1") == ["fe80::1"]
    assert peer_ips("unix:/run/x.sock") == [] and peer_ips("ipv4:not-an-ip:1") == []
    assert pki.ip_sans(pki.issue_bundle(ca, node_id="n2", role="agent", sans=[]).cert_pem) == []
