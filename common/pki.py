"""The cluster's public-key infrastructure: the CA, node certificates, join tokens, key files.

Pure functions over bytes (PEM), so the scheduler (which signs), the agent (which joins) and the
CLI (which reads its bundle) share one implementation; where the CA lives (etcd, create-if-absent)
is scheduler/tls.py's business, and which channel uses what is common/transport.py's.

- ``make_ca(cluster_id)``: ECDSA P-256, 10 years, BasicConstraints(ca, path 0), O = cluster id.
- ``sign(ca, csr_pem, node_id=, role=, sans=)``: the issuer takes **only the CSR's public key**
  (after checking its signature); CN = node id, OU = role, O = the CA's cluster id, DNS SANs the
  caller decides (``<id>.node.dockyard``; ``scheduler.dockyard`` for schedulers). A CSR asking for
  another CN, role or SAN gets what the scheduler decides.
- Join tokens in Swarm's shape, ``DYTKN-1-<sha256 of the CA's DER, base36, 50>-<128-bit secret,
  base36, 25>``: ``make_token``, ``parse_token``, ``secret_matches`` (constant time).
- Key files: ``write_bundle`` makes the directory 0700 and the key 0600 (written to a temporary name
  and renamed); ``check_key_file`` refuses a key that group or others may read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.transport import SCHEDULER_NAME, node_name

__all__ = ["SCHEDULER_NAME", "node_name"]  # and the rest: names of where each belongs

TOKEN_PREFIX = "DYTKN-1-"
ROLES = ("agent", "scheduler", "admin", "etcd")  # etcd: certificates of etcd's own CA (scheduler/etcd_tls.py)
TOKEN_ROLES = ("worker", "manager")  # the role a join token admits: worker -> agent, manager -> scheduler
CA_LIFETIME = dt.timedelta(days=3650)
CERT_LIFETIME = dt.timedelta(days=90)
BACKDATE = dt.timedelta(hours=1)  # clocks a little behind still accept a fresh certificate
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class PKIError(ValueError):
    """A certificate, request, token or key file that cannot be used: the message says which and why."""


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def cluster_id(self) -> str:
        return _attr(self.cert.subject, NameOID.ORGANIZATION_NAME)

    def digest(self) -> str:
        return ca_digest(self.cert_pem)


@dataclass(frozen=True)
class Bundle:
    """What a process presents and trusts: the cluster CA, its own certificate and key (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    got = name.get_attributes_for_oid(oid)
    return str(got[0].value) if got else ""


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(cluster_id: str, *, now: dt.datetime | None = None, common_name: str = "dockyard cluster CA") -> CA:
    """A new cluster root: P-256, self-signed, O = ``cluster_id``."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return CA(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def make_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh P-256 key and a CSR over it (the subject is left empty: the issuer decides it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return _pem_key(key), csr.public_bytes(serialization.Encoding.PEM)


def sign(ca: CA, csr_pem: bytes, *, node_id: str, role: str, sans: list[str], ips: Sequence[str] = (),
         lifetime: dt.timedelta = CERT_LIFETIME, now: dt.datetime | None = None) -> bytes:
    """A certificate for ``node_id`` in ``role`` over the CSR's public key and nothing else of it.
    ``ips``: IP SANs, only where a peer checks by address (CRIU's page server: agent/checkpoint/lazy.py)."""
    if role not in ROLES:
        raise PKIError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if not node_id or any(c not in _B36 + "-" for c in node_id):
        raise PKIError(f"node id {node_id!r}: expected lower-case letters, digits and '-'")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise PKIError(f"certificate request: not a PEM CSR ({e})") from None
    if not csr.is_signature_valid:
        raise PKIError("certificate request: its signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise PKIError("certificate request: the key must be ECDSA P-256")
    now = now or _now()
    ca_cert = ca.cert
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster_id),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if role == "admin" else \
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(s) for s in sans]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def serial_of(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def make_crl(ca: CA, serials: Sequence[int], *, now: dt.datetime | None = None,
             lifetime: dt.timedelta = CERT_LIFETIME) -> bytes:
    """The CA's revocation list of these certificate serials (PEM), for peers that check one
    (CRIU's page server: --tls-cacrl). Valid for ``lifetime``: a new one is made at each use."""
    now = now or _now()
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
         .last_update(now - BACKDATE).next_update(now + lifetime))
    for s in sorted(set(serials)):
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s)
                                      .revocation_date(now - BACKDATE).build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue_bundle(ca: CA, *, node_id: str, role: str, sans: list[str], ips: Sequence[str] = (),
                 lifetime: dt.timedelta = CERT_LIFETIME) -> Bundle:
    """A key made here and its certificate: for the scheduler's own and the admin's bundle."""
    key_pem, csr_pem = make_key_and_csr()
    return Bundle(ca.cert_pem, sign(ca, csr_pem, node_id=node_id, role=role, sans=sans, ips=ips, lifetime=lifetime),
                  key_pem)


@dataclass(frozen=True)
class Subject:
    node_id: str
    role: str
    cluster_id: str


def subject_of(cert_pem: bytes) -> Subject:
    cert = x509.load_pem_x509_certificate(cert_pem)
    s = cert.subject
    return Subject(_attr(s, NameOID.COMMON_NAME), _attr(s, NameOID.ORGANIZATIONAL_UNIT_NAME),
                   _attr(s, NameOID.ORGANIZATION_NAME))


def ip_sans(cert_pem: bytes) -> list[str]:
    """The IP addresses a certificate names (its IP SANs)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]


def renew_at(cert_pem: bytes, fraction: float) -> dt.datetime:
    """When to renew: ``fraction`` (Swarm draws it from 0.5-0.8, so nodes do not renew at once) of
    the way from issue (its NotBefore less the backdate) to NotAfter."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    issued = cert.not_valid_before_utc + BACKDATE
    return issued + (cert.not_valid_after_utc - issued) * fraction


def check_valid(cert_pem: bytes, *, now: dt.datetime | None = None) -> None:
    """PKIError when a certificate is expired or not valid yet, naming the date."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = now or _now()
    if now >= cert.not_valid_after_utc:
        raise PKIError(f"the certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                       "join again with a token (remove the tls directory first)")
    if now < cert.not_valid_before_utc:
        raise PKIError(f"the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                       "(is this host's clock right?)")


def verify_issued(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> Subject:
    """Check that ``cert_pem`` was signed by the CA and is over ``key_pem``'s public key (what a
    joiner checks of the certificate it was handed)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    if not issued_by_any(cert_pem, ca_pem):
        raise PKIError("the issued certificate is not signed by the cluster CA")
    key = serialization.load_pem_private_key(key_pem, None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, pub) != \
            key.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise PKIError("the issued certificate is not over this node's key")
    return subject_of(cert_pem)


def issued_by_any(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether a CA of the trust bundle ``ca_pem`` (one root, or two while one is rotated) signed it."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:  # InvalidSignature, ValueError, TypeError: no common base but Exception
            continue
    return False


# --- join tokens --------------------------------------------------------------------------------

def _base36(data: bytes, width: int) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = _B36[r] + out
    return out.rjust(width, "0")


def ca_digest(ca_pem: bytes) -> str:
    """sha256 over the CA certificate's DER (not its PEM text, which may be re-wrapped), base36."""
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return _base36(hashlib.sha256(der).digest(), 50)


def bundle_digests(bundle_pem: bytes) -> list[str]:
    """ca_digest of each certificate of a trust bundle."""
    return [ca_digest(c.public_bytes(serialization.Encoding.PEM)) for c in x509.load_pem_x509_certificates(bundle_pem)]


def make_token(ca_pem: bytes) -> str:
    return f"{TOKEN_PREFIX}{ca_digest(ca_pem)}-{_base36(secrets.token_bytes(16), 25)}"


@dataclass(frozen=True)
class Token:
    digest: str
    secret: str


def parse_token(token: str) -> Token:
    """A token's two parts; PKIError naming what is wrong with its shape (never echoing the secret)."""
    if not token.startswith(TOKEN_PREFIX):
        raise PKIError(f"join token: expected it to start with {TOKEN_PREFIX}")
    parts = token[len(TOKEN_PREFIX):].split("-")
    if len(parts) != 2 or len(parts[0]) != 50 or len(parts[1]) != 25 or \
            any(c not in _B36 for c in parts[0] + parts[1]):
        raise PKIError("join token: expected DYTKN-1-<50 base36 characters>-<25 base36 characters>")
    return Token(parts[0], parts[1])


def secret_matches(given: str, expected_token: str) -> bool:
    """Whether the secret of ``given`` is the one of ``expected_token``, in constant time."""
    try:
        want = parse_token(expected_token).secret
    except PKIError:
        return False
    return hmac.compare_digest(given.encode(), want.encode())


# --- key files ----------------------------------------------------------------------------------

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"


def check_key_file(path: Path) -> None:
    """Refuse a key that group or others may read (or write): ssh's rule for private keys."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PKIError(f"{path}: no such key file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PKIError(f"{path}: mode {stat.S_IMODE(mode):04o} lets group or others read the key; "
                       f"chmod 600 {path}")


def write_bundle(directory: Path, bundle: Bundle) -> None:
    """ca.pem, cert.pem (0644) and key.pem (0600) in ``directory`` (made 0700), each renamed into place."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    for name, data, mode in ((CA_FILE, bundle.ca_pem, 0o644), (CERT_FILE, bundle.cert_pem, 0o644),
                             (KEY_FILE, bundle.key_pem, 0o600)):
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)


def read_bundle(directory: Path) -> Bundle:
    """The bundle in ``directory``; PKIError naming the missing file or the readable key."""
    missing = [n for n in (CA_FILE, CERT_FILE, KEY_FILE) if not (directory / n).is_file()]
    if missing:
        raise PKIError(f"{directory}: no {', '.join(missing)}")
    check_key_file(directory / KEY_FILE)
    return Bundle((directory / CA_FILE).read_bytes(), (directory / CERT_FILE).read_bytes(),
                  (directory / KEY_FILE).read_bytes())
