"""Migration grants: what lets one agent drive another under mutual TLS.

An agent's certificate alone must never let it restore a container, load an image or remove a
container on a peer: that is running code as root there. So the leader signs, for each migration,
``{migration, container, source node, target node, not after}`` with its own scheduler key and hands
it to the source agent (``MigrateRequest.grant``). The source sends it with each call to the target
(metadata ``x-dockyard-grant-bin``); the target's Authorizer admits an agent caller only when

- the signer's certificate is issued by the cluster CA, valid now, OU=scheduler, O=this cluster;
- the signature over the claims verifies with that certificate's key;
- the caller's CN is the grant's source and this agent is its target;
- it has not expired (a grant lives at most ``MAX_LIFETIME``).

The servicer then checks the grant's container against the request (caller().grant). Claims are
signed as the exact bytes sent (JSON), so nothing is re-serialised before the check.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common import pki

METADATA = "x-dockyard-grant-bin"  # -bin: gRPC carries the value as bytes
MAX_LIFETIME = 600.0  # seconds; a migration's agent-to-agent part takes far less


@dataclass(frozen=True)
class Grant:
    migration: str
    container: str  # the container's name, the same on both nodes
    source: str     # node ids (certificate CNs)
    target: str
    not_after: float  # unix seconds


def sign(bundle: pki.Bundle, grant: Grant) -> bytes:
    """The grant, signed with ``bundle``'s key (a scheduler's), as the bytes the agent forwards."""
    key = serialization.load_pem_private_key(bundle.key_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise pki.PKIError("a migration grant is signed with an ECDSA key")
    claims = json.dumps(asdict(grant), sort_keys=True).encode()
    sig = key.sign(claims, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"claims": base64.b64encode(claims).decode(), "sig": base64.b64encode(sig).decode(),
                       "signer": bundle.cert_pem.decode()}).encode()


def verify(raw: bytes, *, ca_pem: bytes, cluster_id: str, caller: str, me: str,
           now: float | None = None) -> Grant:
    """The grant in ``raw`` if it lets ``caller`` drive this node (``me``); PermissionError naming why not.
    ``ca_pem`` is the trust bundle (one CA, or two while the root is rotated)."""
    now = time.time() if now is None else now
    try:
        outer = json.loads(raw)
        claims = base64.b64decode(outer["claims"], validate=True)
        sig = base64.b64decode(outer["sig"], validate=True)
        signer = x509.load_pem_x509_certificate(outer["signer"].encode())
        g = Grant(**json.loads(claims))
    except (ValueError, KeyError, TypeError) as e:
        raise PermissionError(f"migration grant: malformed ({type(e).__name__})") from None
    if not any(_issued_by(signer, ca) for ca in x509.load_pem_x509_certificates(ca_pem)):
        raise PermissionError("migration grant: not signed by a scheduler of this cluster's CA")
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    if not signer.not_valid_before_utc <= when < signer.not_valid_after_utc:
        raise PermissionError("migration grant: the signer's certificate is not valid now")
    subject = signer.subject
    ou = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    org = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if ou != ["scheduler"] or org != [cluster_id]:
        raise PermissionError("migration grant: signed by a certificate that is not this cluster's scheduler")
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PermissionError("migration grant: the signer's key is not ECDSA")
    try:
        public.verify(sig, claims, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PermissionError("migration grant: the signature does not verify") from None
    if now >= g.not_after:
        raise PermissionError(f"migration grant {g.migration}: expired")
    if g.not_after - now > MAX_LIFETIME:
        raise PermissionError(f"migration grant {g.migration}: lives longer than {MAX_LIFETIME:.0f} s")
    if g.source != caller:
        raise PermissionError(f"migration grant {g.migration}: is for source {g.source}, not the caller {caller}")
    if g.target != me:
        raise PermissionError(f"migration grant {g.migration}: is for target {g.target}, not this node")
    return g


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, ValueError, TypeError: no common base but Exception
        return False
    return True
