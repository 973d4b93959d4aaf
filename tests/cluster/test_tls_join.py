"""Joining on real TLS and a real etcd: the CA made once under a race, tokens per role, the join
port (server TLS only), the agent's digest check before its secret leaves, rotation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from agent.join import JoinError, join
from common import pki, transport
from common.transport import Role
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg
from scheduler import tls
from scheduler.store import Store
from tests.etcd_server import EtcdServer, etcd, etcd_server

__all__ = ["etcd", "etcd_server"]  # fixtures, used by name

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


class Recording(tls.JoinServicer):
    """The real servicer, counting the requests that reached it (to prove a secret was never sent)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.calls = 0

    async def IssueNodeCertificate(self, request: pb.IssueRequest, context: Any) -> pb.IssueResponse:
        self.calls += 1
        return await super().IssueNodeCertificate(request, context)


async def _join_port(store: Store, cca: tls.ClusterCA) -> tuple[Any, str, Recording]:
    ident = transport.Identity(Role.SCHEDULER, tls.scheduler_bundle(cca, "s1"))
    srv = transport.server(ident)
    servicer = Recording(store)
    pbg.add_JoinServicer_to_server(servicer, srv)  # type: ignore[no-untyped-call]
    port = transport.serve(srv, "127.0.0.1:0", ident, client_auth=False)
    await srv.start()
    return srv, f"127.0.0.1:{port}", servicer


def test_the_ca_is_made_once_by_racing_replicas(etcd: EtcdServer) -> None:
    async def main() -> None:
        stores = [await Store.connect(etcd.host, etcd.port) for _ in range(3)]
        try:
            made = await asyncio.gather(*(tls.ensure_ca(s) for s in stores))
            assert len({m.ca.cert_pem for m in made}) == 1
            assert set(made[0].tokens) == {"worker", "manager"}
            assert made[0].tokens["worker"] != made[0].tokens["manager"]
            assert pki.parse_token(made[0].tokens["worker"]).digest == made[0].ca.digest()
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_join_by_token_digest_check_wrong_secret_and_rotation(etcd: EtcdServer, tmp_path: Path) -> None:
    async def main() -> None:
        store = await Store.connect(etcd.host, etcd.port)
        cca = await tls.ensure_ca(store)
        srv, addr, servicer = await _join_port(store, cca)
        try:
            worker = cca.tokens["worker"]
            joined = await join(addr, worker, name="h1", tls_dir=tmp_path / "tls")
            assert joined.role == "agent"
            s = pki.subject_of(joined.bundle.cert_pem)
            assert (s.node_id, s.role, s.cluster_id) == (joined.node_id, "agent", cca.ca.cluster_id)
            assert os.stat(tmp_path / "tls" / "key.pem").st_mode & 0o777 == 0o600
            assert os.stat(tmp_path / "tls").st_mode & 0o777 == 0o700
            manager = await join(addr, cca.tokens["manager"], name="s2", tls_dir=tmp_path / "m")
            assert manager.role == "scheduler"

            # The right digest, a wrong secret: refused, and nothing written under nodes/.
            t = pki.parse_token(worker)
            wrong = f"{pki.TOKEN_PREFIX}{t.digest}-{'0' * 25}"
            with pytest.raises(JoinError, match="a valid join token is necessary"):
                await join(addr, wrong, name="h2", tls_dir=tmp_path / "x")
            assert await store.list_nodes() == []
            assert not (tmp_path / "x").exists()

            # A token of another cluster's CA: aborted on the agent's side, the secret never sent.
            before = servicer.calls
            other = pki.make_token(pki.make_ca("other").cert_pem)
            with pytest.raises(JoinError, match="refusing to join"):
                await join(addr, other, name="h3", tls_dir=tmp_path / "y")
            assert servicer.calls == before

            # After rotation the old token is refused and the new one works.
            new = await tls.rotate_token(store, "worker")
            assert new != worker
            with pytest.raises(JoinError, match="a valid join token is necessary"):
                await join(addr, worker, name="h4", tls_dir=tmp_path / "z")
            assert (await join(addr, new, name="h4", tls_dir=tmp_path / "z")).role == "agent"
            with pytest.raises(JoinError, match="join token: expected"):
                await join(addr, "SWMTKN-1-abc", name="h5", tls_dir=tmp_path / "w")
        finally:
            await srv.stop(None)
            await store.close()

    asyncio.run(main())


def test_the_crl_lists_every_certificate_of_a_removed_node_and_no_other(etcd: EtcdServer, tmp_path: Path) -> None:
    """What the leader sends with a move for CRIU's page server (scheduler/tls.py revocation_list):
    signed by the cluster CA, listing the serials issued to a node on the denylist, its renewed
    certificate too, and none of a node still in the cluster."""
    from cryptography import x509

    async def main() -> None:
        store = await Store.connect(etcd.host, etcd.port)
        cca = await tls.ensure_ca(store)
        srv, addr, _ = await _join_port(store, cca)
        try:
            gone = await join(addr, cca.tokens["worker"], name="h1", tls_dir=tmp_path / "a")
            kept = await join(addr, cca.tokens["worker"], name="h2", tls_dir=tmp_path / "b")
            _, csr = pki.make_key_and_csr()
            renewed = await tls.renew(store, csr, transport.Caller(gone.node_id, "agent"),
                                      "ipv4:127.0.0.1:1")
            assert x509.load_pem_x509_crl(await tls.revocation_list(store)).__len__() == 0
            await store.commit([await tls.denied_op(store, gone.node_id)])
            crl = x509.load_pem_x509_crl(await tls.revocation_list(store))
            assert crl.is_signature_valid(cca.ca.cert.public_key())  # type: ignore[arg-type]
            assert {r.serial_number for r in crl} == {pki.serial_of(gone.bundle.cert_pem),
                                                     pki.serial_of(renewed.certificate)}
            assert crl.get_revoked_certificate_by_serial_number(pki.serial_of(kept.bundle.cert_pem)) is None
        finally:
            await srv.stop(None)
            await store.close()

    asyncio.run(main())


def test_a_renewal_asking_for_another_id_or_role_gets_its_own(etcd: EtcdServer) -> None:
    """Research case 8: the CSR of a renewal asks for another node's CN, the admin role and the
    scheduler's name; the certificate carries the caller's id and role, as its old one did."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    async def main() -> None:
        store = await Store.connect(etcd.host, etcd.port)
        try:
            await tls.ensure_ca(store)
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other-node"),
                                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin")]))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(pki.SCHEDULER_NAME)]), critical=False)
                   .sign(key, hashes.SHA256()))
            r = await tls.renew(store, csr.public_bytes(Encoding.PEM), transport.Caller("n1", "agent"),
                                "ipv4:127.0.0.1:1")
            s = pki.subject_of(r.certificate)
            assert (r.node_id, r.role, s.node_id, s.role) == ("n1", "agent", "n1", "agent")
            sans = x509.load_pem_x509_certificate(r.certificate).extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            assert sans == ["n1.node.dockyard"]
        finally:
            await store.close()

    asyncio.run(main())
