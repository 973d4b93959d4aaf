"""`dockyard agent --join HOST:PORT --token DYTKN-1-...`: a node's first step, token -> certificate.

1. Read the CA the scheduler's join port presents in its TLS handshake (nothing trusted yet).
2. Hash it and compare with the token's digest: on a mismatch (a scheduler of another cluster, or
   a man in the middle with its own CA) **abort before the secret is sent**.
3. Make a key here (it never leaves the host) and a CSR; send the token and the CSR over a channel
   that trusts only that CA and requires the scheduler's name.
4. Check that the certificate is the CA's and over our key; write ca.pem, cert.pem, key.pem (0600)
   into <root>/tls (0700).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from common import pki, transport
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg

log = logging.getLogger("dockyard.agent.join")


class JoinError(RuntimeError):
    """A join that cannot go on: the message says why, for the user."""


def join_address(scheduler: str) -> str:
    """A scheduler's join port: its cluster port + 1 (2377 -> 2378, as `dockyard scheduler --tls` serves it)."""
    host, sep, port = scheduler.removeprefix("tcp://").rpartition(":")
    if not sep or not port.isdigit():
        raise JoinError(f"--join {scheduler!r}: expected HOST:PORT")
    return f"{host}:{int(port) + 1}"


def local_bundle(tls_dir: Path) -> pki.Bundle | None:
    """The certificate this node got at an earlier join, if any (a key others may read is refused)."""
    if not (tls_dir / pki.CERT_FILE).exists():
        return None
    try:
        bundle = pki.read_bundle(tls_dir)
        pki.check_valid(bundle.cert_pem)
    except pki.PKIError as e:
        # Said here, at start: a scheduler refuses a bad certificate in the handshake, which the
        # agent would only see as UNAVAILABLE, retried forever.
        raise JoinError(f"{tls_dir}: {e}") from None
    return bundle


@dataclass(frozen=True)
class Joined:
    node_id: str
    role: str
    bundle: pki.Bundle


async def join(address: str, token: str, *, name: str, tls_dir: Path, timeout: float = 10.0) -> Joined:
    try:
        want = pki.parse_token(token)
    except pki.PKIError as e:
        raise JoinError(str(e)) from None
    try:
        ca_pem = await asyncio.to_thread(transport.read_server_ca, address, timeout)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise JoinError(f"cannot read the cluster CA from {address}: {e}") from None
    got = pki.ca_digest(ca_pem)
    if got != want.digest:
        # The secret has not left this host: nothing was sent but a TLS hello.
        raise JoinError(f"the scheduler at {address} presents a CA whose digest {got[:12]}... is not the "
                        f"token's {want.digest[:12]}...: refusing to join (another cluster, or someone in between)")
    key_pem, csr_pem = pki.make_key_and_csr()
    async with transport.dial_join(address, ca_pem) as ch:
        stub = pbg.JoinStub(ch)  # type: ignore[no-untyped-call]
        try:
            r = await stub.IssueNodeCertificate(pb.IssueRequest(token=token, csr=csr_pem, name=name),
                                                timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise JoinError(f"the scheduler at {address} refused to join: {e.details() or e.code().name}") from None
    try:
        subject = pki.verify_issued(ca_pem, r.certificate, key_pem)
    except pki.PKIError as e:
        raise JoinError(f"the scheduler at {address} sent a bad certificate: {e}") from None
    if subject.node_id != r.node_id or subject.role != r.role:
        raise JoinError(f"the scheduler at {address} sent a certificate for {subject.node_id}/{subject.role}, "
                        f"not the {r.node_id}/{r.role} it named")
    # The trust bundle it sends (the root and, during a rotation, the previous one) came over the
    # channel pinned to the token's root: kept if it holds that root.
    trust = r.ca if pki.ca_digest(ca_pem) in pki.bundle_digests(r.ca) else ca_pem
    bundle = pki.Bundle(trust, r.certificate, key_pem)
    pki.write_bundle(tls_dir, bundle)
    log.info("joined cluster %s as %s %s; certificate in %s", subject.cluster_id, r.role, r.node_id, tls_dir)
    return Joined(r.node_id, r.role, bundle)


async def renew(stub: pbg.SchedulerStub, tls_dir: Path, node_id: str, timeout: float = 10.0) -> pki.Bundle:
    """A new key and certificate for this node over its mutual-TLS channel (the scheduler takes the
    id and role from the certificate it sees), checked as at join and written to ``tls_dir``."""
    key_pem, csr_pem = pki.make_key_and_csr()
    r = await stub.RenewCertificate(pb.RenewRequest(csr=csr_pem), timeout=timeout)
    subject = pki.verify_issued(r.ca, r.certificate, key_pem)
    if subject.node_id != node_id:
        raise JoinError(f"the scheduler renewed the certificate as {subject.node_id}, not this node's {node_id}")
    bundle = pki.Bundle(r.ca, r.certificate, key_pem)
    pki.write_bundle(tls_dir, bundle)
    return bundle
