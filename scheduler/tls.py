"""The scheduler's half of the cluster's TLS: the CA in etcd, join tokens, issuance, removed nodes.

- ``ensure_ca(store)``: the first replica makes the cluster CA and both join tokens in one etcd
  transaction guarded "create if absent" (``Put(expect=0)``), so replicas starting together cannot
  make two; the loser of the race reads the winner's. Any replica can then sign.
- ``rotate_token(store, role)`` makes a new secret; the old one is refused at once.
- ``JoinServicer`` serves ``Join.IssueNodeCertificate`` on the join port (server TLS only): the
  token's digest must be this CA's, its secret (compared in constant time) decides the role, the
  scheduler assigns the node id, and only the CSR's public key is used. A wrong secret creates
  nothing and gets UNAUTHENTICATED.
- ``AUTHORIZATION``: which certificate role may call which method of the mutual-TLS port; anything
  not listed is denied (common/transport.py's Authorizer applies it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from common import pki, transport
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg
from scheduler.store import Conflict, Put, Store, StoreError

log = logging.getLogger("dockyard.scheduler.tls")

TOKEN_ROLE = {"worker": "agent", "manager": "scheduler"}  # a token admits a node in this certificate role


@dataclass(frozen=True)
class ClusterCA:
    ca: pki.CA  # the current root: it signs every certificate issued from now on
    tokens: dict[str, str]  # worker|manager -> token
    previous: bytes = b""  # after `cluster ca --rotate`: the old root, still trusted (its certificates live on)

    @property
    def trust(self) -> bytes:
        """What every process trusts: the current root and, during a rotation, the previous one."""
        return self.ca.cert_pem + self.previous


async def ensure_ca(store: Store, *, make: Any = None) -> ClusterCA:
    """The cluster CA and tokens from etcd, made now (once, race-free) when there are none."""
    got = await _read(store)
    if got is not None:
        return got
    ca = pki.make_ca(secrets.token_hex(8)) if make is None else make()
    record = json.dumps({"cert": ca.cert_pem.decode(), "key": ca.key_pem.decode()}).encode()
    ops = [Put(store.keys.ca("root"), record, 0)]
    ops += [Put(store.keys.ca(f"tokens/{r}"), pki.make_token(ca.cert_pem).encode(), 0) for r in TOKEN_ROLE]
    try:
        await store.commit(ops)
        log.info("made the cluster CA of cluster %s", ca.cluster_id)
    except Conflict:
        log.info("another replica made the cluster CA first; using it")
    got = await _read(store)
    if got is None:
        raise RuntimeError("the cluster CA vanished from etcd right after it was made")
    return got


async def _read(store: Store) -> ClusterCA | None:
    raw = await store.get_raw(store.keys.ca("root"))
    if raw is None:
        return None
    record = json.loads(raw[0])
    tokens = {}
    for r in TOKEN_ROLE:
        t = await store.get_raw(store.keys.ca(f"tokens/{r}"))
        if t is not None:
            tokens[r] = t[0].decode()
    return ClusterCA(pki.CA(record["cert"].encode(), record["key"].encode()), tokens,
                     record.get("previous", "").encode())


async def rotate_ca(store: Store) -> ClusterCA:
    """A new root for the same cluster, in one transaction guarded by the old record: the old root
    stays trusted (``previous``) so no certificate in use stops working, every node is re-issued
    from the new one at its next heartbeat (``needs_renewal``), and both join tokens are made anew
    for the new root's digest: an old token, stolen or not, joins nothing. The old key is dropped."""
    raw = await store.get_raw(store.keys.ca("root"))
    if raw is None:
        raise StoreError("there is no cluster CA to rotate (a scheduler without --tls?)")
    old = json.loads(raw[0])
    ca = pki.make_ca(pki.CA(old["cert"].encode(), b"").cluster_id)
    record = json.dumps({"cert": ca.cert_pem.decode(), "key": ca.key_pem.decode(), "previous": old["cert"]}).encode()
    ops = [Put(store.keys.ca("root"), record, raw[1])]
    for r in TOKEN_ROLE:
        t = await store.get_raw(store.keys.ca(f"tokens/{r}"))
        ops.append(Put(store.keys.ca(f"tokens/{r}"), pki.make_token(ca.cert_pem).encode(), t[1] if t else 0))
    await store.commit(ops)
    log.warning("rotated the cluster CA of %s: new root %s...; nodes are re-issued at their next heartbeat",
                ca.cluster_id, ca.digest()[:12])
    got = await _read(store)
    assert got is not None
    return got


async def finish_rotation(store: Store) -> ClusterCA:
    """Drop the previous root: from now on only the current one is trusted (the caller has checked
    that every node serves a certificate of it). One transaction guarded by the record."""
    raw = await store.get_raw(store.keys.ca("root"))
    if raw is None:
        raise StoreError("there is no cluster CA (a scheduler without --tls?)")
    record = json.loads(raw[0])
    if not record.get("previous"):
        raise pki.PKIError("no rotation to finish: only one root is trusted")
    record.pop("previous")
    await store.commit([Put(store.keys.ca("root"), json.dumps(record).encode(), raw[1])])
    got = await _read(store)
    assert got is not None
    log.warning("finished the CA rotation of %s: the previous root is no longer trusted", got.ca.cluster_id)
    return got


def needs_renewal(cca: ClusterCA, cert_pem: bytes) -> bool:
    """A caller's certificate that the current root did not sign (issued before a rotation)."""
    return bool(cert_pem) and not pki.issued_by_any(cert_pem, cca.ca.cert_pem)


async def rotate_token(store: Store, role: str) -> str:
    if role not in TOKEN_ROLE:
        raise ValueError(f"join token role {role!r}: expected worker or manager")
    cca = await ensure_ca(store)
    raw = await store.get_raw(store.keys.ca(f"tokens/{role}"))
    token = pki.make_token(cca.ca.cert_pem)
    await store.commit([Put(store.keys.ca(f"tokens/{role}"), token.encode(), raw[1] if raw else 0)])
    return token


def scheduler_bundle(cca: ClusterCA, replica: str, lifetime: dt.timedelta = pki.CERT_LIFETIME) -> pki.Bundle:
    b = pki.issue_bundle(cca.ca, node_id=replica, role="scheduler",
                         sans=[pki.SCHEDULER_NAME, pki.node_name(replica)], lifetime=lifetime)
    return replace(b, ca_pem=cca.trust)


def join_bundle(cca: ClusterCA, replica: str, lifetime: dt.timedelta = pki.CERT_LIFETIME) -> pki.Bundle:
    """What the join port serves: a certificate of the current root and that root alone, last in
    the chain, since the joiner hashes the last certificate against its token's digest."""
    return replace(scheduler_bundle(cca, replica, lifetime), ca_pem=cca.ca.cert_pem)


def write_local_bundles(state_dir: Path, cca: ClusterCA, replica: str,
                        lifetime: dt.timedelta = pki.CERT_LIFETIME) -> pki.Bundle:
    """This replica's own bundle in <state>/tls and an admin client bundle in <state>/client (the
    CLI reads it through DOCKYARD_CERT_PATH or ~/.dockyard)."""
    own = scheduler_bundle(cca, replica, lifetime)
    pki.write_bundle(state_dir / "tls", own)
    write_admin_bundle(state_dir, cca)
    return own


def peer_ips(peer: str) -> list[str]:
    """The IP SAN a joiner gets: the address it joined from, as the scheduler saw it (never what it
    asks for), which is where its CRIU page server answers peers ("ipv4:10.0.0.5:4242" -> 10.0.0.5)."""
    import ipaddress
    from urllib.parse import unquote

    kind, _, rest = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return []
    host = rest.rpartition(":")[0].strip("[]").split("%")[0]
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return []


def write_admin_bundle(state_dir: Path, cca: ClusterCA) -> None:
    """The CLI's bundle in <state>/client: an admin certificate of the current root, trusting ``trust``."""
    pki.write_bundle(state_dir / "client", replace(pki.issue_bundle(cca.ca, node_id="admin", role="admin", sans=[]),
                                                   ca_pem=cca.trust))


class JoinServicer(pbg.JoinServicer):
    def __init__(self, store: Store, *, lifetime: dt.timedelta = pki.CERT_LIFETIME) -> None:
        self.store = store
        self.lifetime = lifetime

    async def IssueNodeCertificate(self, request: pb.IssueRequest, context: Any) -> pb.IssueResponse:
        cca = await ensure_ca(self.store)
        try:
            token = pki.parse_token(request.token)
        except pki.PKIError as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        if token.digest != cca.ca.digest():
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "join token is for another cluster's CA")
        role = ""
        for which, expected in cca.tokens.items():  # every token is compared: the time says nothing
            if pki.secret_matches(token.secret, expected):
                role = TOKEN_ROLE[which]
        if not role:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid join token is necessary to join")
        node_id = secrets.token_hex(8)
        sans = [pki.node_name(node_id)] + ([pki.SCHEDULER_NAME] if role == "scheduler" else [])
        try:
            cert = pki.sign(cca.ca, request.csr, node_id=node_id, role=role, sans=sans, ips=peer_ips(context.peer()),
                            lifetime=self.lifetime)
        except pki.PKIError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        await record_issued(self.store, node_id, cert)
        log.info("issued %s certificate %s to %s (%s)", role, node_id, request.name or "?", context.peer())
        return pb.IssueResponse(node_id=node_id, role=role, certificate=cert, ca=cca.trust)


async def renew(store: Store, csr_pem: bytes, who: transport.Caller, peer: str,
                lifetime: dt.timedelta = pki.CERT_LIFETIME) -> pb.IssueResponse:
    """A caller's new certificate: its id and role come from the certificate it called with (the
    Authorizer verified it, and refused it if the node was removed), only the CSR's key is new."""
    cca = await ensure_ca(store)
    if who.role == "admin":  # the CLI's bundle (deploy/cli_cluster.py renews it near its end): client only
        cert = pki.sign(cca.ca, csr_pem, node_id=who.node_id, role="admin", sans=[], lifetime=lifetime)
        log.info("renewed the admin certificate %s (%s)", who.node_id, peer)
        return pb.IssueResponse(node_id=who.node_id, role="admin", certificate=cert, ca=cca.trust)
    if who.role not in TOKEN_ROLE.values():
        raise pki.PKIError(f"{who.role or 'no role'} certificates are not renewed here")
    sans = [pki.node_name(who.node_id)] + ([pki.SCHEDULER_NAME] if who.role == "scheduler" else [])
    cert = pki.sign(cca.ca, csr_pem, node_id=who.node_id, role=who.role, sans=sans, ips=peer_ips(peer),
                    lifetime=lifetime)
    await record_issued(store, who.node_id, cert)
    log.info("renewed the %s certificate of %s (%s)", who.role, who.node_id, peer)
    return pb.IssueResponse(node_id=who.node_id, role=who.role, certificate=cert, ca=cca.trust)


S = "/dockyard.cluster.Scheduler/"
_AGENT = frozenset({"agent"})
_ADMIN_OR_SCHEDULER = frozenset({"admin", "scheduler"})  # a follower forwards to the leader
# The agent RPCs, the rest are the CLI's (and a forwarding replica's).
AUTHORIZATION: dict[str, frozenset[str]] = {
    **{S + m: _AGENT for m in ("Register", "Heartbeat", "ReportTasks", "WatchNetworks", "TaskFiles")},
    **{S + m: _ADMIN_OR_SCHEDULER for m in (
        "Status", "ListNodes", "InspectNode", "UpdateNode", "RemoveNode", "Deploy", "CreateService",
        "ListServices", "InspectService", "ListTasks", "ScaleService", "UpdateService", "RollbackService",
        "RemoveServices", "Logs", "Exec", "MigrateTask", "DrainNode", "Rebalance", "ListMigrations",
        "CreateNetwork", "ListNetworks", "InspectNetwork", "RemoveNetwork",
        "CreateObject", "ListObjects", "InspectObject", "RemoveObject")},
    S + "JoinToken": frozenset({"admin"}),
    S + "RotateCA": frozenset({"admin"}),
    S + "FinishCARotation": frozenset({"admin"}),
    S + "RenewCertificate": frozenset({"agent", "scheduler", "admin"}),
}


class DenyList:
    """Node ids removed from the cluster (``/dockyard/ca/denied/<id>``, written by ``node rm`` in the
    same transaction that deletes the node), kept in memory from a watch so the Authorizer checks it
    on every RPC without a round trip: a removed node's open channel is refused at its next call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ids: set[str] = set()

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ids

    async def load(self) -> int:
        prefix = self.store.keys.ca("denied/")
        rev, items = await self.store.range(prefix)
        self.ids = {bytes(kv.key)[len(prefix):].decode() for kv in items}
        return rev

    async def run(self, retry: float = 0.5) -> None:
        prefix = self.store.keys.ca("denied/")
        while True:
            try:
                rev = await self.load()
                async for ev in self.store.watch(prefix, start_revision=rev + 1):
                    name = ev.key[len(prefix):].decode()
                    if ev.kind == "put":
                        self.ids.add(name)
                    else:
                        self.ids.discard(name)
            except StoreError as e:
                log.warning("denied-node watch: %s; retrying", e)
            await asyncio.sleep(retry)


async def denied_op(store: Store, node_id: str) -> Put:
    """The denylist entry of a removed node, on a lease as long as any certificate it holds can live
    (every one is issued for at most CERT_LIFETIME): after that the entry expires by itself."""
    lease = await store.grant_lease(int((pki.CERT_LIFETIME + pki.BACKDATE).total_seconds()))
    return Put(store.keys.ca(f"denied/{node_id}"), b"", None, lease=lease)


async def record_issued(store: Store, node_id: str, cert_pem: bytes) -> None:
    """Every certificate issued to a node, by serial (``/dockyard/ca/issued/<id>/<serial>``, on a
    lease that ends with it), so that a removed node's certificates can be listed in a CRL."""
    lease = await store.grant_lease(int((pki.CERT_LIFETIME + pki.BACKDATE).total_seconds()))
    await store.commit([Put(store.keys.ca(f"issued/{node_id}/{pki.serial_of(cert_pem):x}"), b"", None, lease=lease)])


async def revocation_list(store: Store) -> bytes:
    """The current root's CRL of every certificate issued to a removed node (the denylist): for
    CRIU's page server, which checks certificates itself (--tls-cacrl), not through the Authorizer."""
    cca = await ensure_ca(store)
    denied = store.keys.ca("denied/")
    _, items = await store.range(denied)
    serials = []
    for kv in items:
        prefix = store.keys.ca(f"issued/{bytes(kv.key)[len(denied):].decode()}/")
        _, issued = await store.range(prefix)
        serials += [int(bytes(i.key)[len(prefix):].decode(), 16) for i in issued]
    return pki.make_crl(cca.ca, serials)


def authorizer(cca: ClusterCA, denied: DenyList | None = None) -> transport.Authorizer:
    if denied is None:
        return transport.Authorizer(AUTHORIZATION, cca.ca.cluster_id)
    return transport.Authorizer(AUTHORIZATION, cca.ca.cluster_id, denied.__contains__)
