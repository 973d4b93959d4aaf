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
from dataclasses import dataclass
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
    ca: pki.CA
    tokens: dict[str, str]  # worker|manager -> token


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
    return ClusterCA(pki.CA(record["cert"].encode(), record["key"].encode()), tokens)


async def rotate_token(store: Store, role: str) -> str:
    if role not in TOKEN_ROLE:
        raise ValueError(f"join token role {role!r}: expected worker or manager")
    cca = await ensure_ca(store)
    raw = await store.get_raw(store.keys.ca(f"tokens/{role}"))
    token = pki.make_token(cca.ca.cert_pem)
    await store.commit([Put(store.keys.ca(f"tokens/{role}"), token.encode(), raw[1] if raw else 0)])
    return token


def scheduler_bundle(cca: ClusterCA, replica: str, lifetime: dt.timedelta = pki.CERT_LIFETIME) -> pki.Bundle:
    return pki.issue_bundle(cca.ca, node_id=replica, role="scheduler",
                            sans=[pki.SCHEDULER_NAME, pki.node_name(replica)], lifetime=lifetime)


def write_local_bundles(state_dir: Path, cca: ClusterCA, replica: str) -> pki.Bundle:
    """This replica's own bundle in <state>/tls and an admin client bundle in <state>/client (the
    CLI reads it through DOCKYARD_CERT_PATH or ~/.dockyard)."""
    own = scheduler_bundle(cca, replica)
    pki.write_bundle(state_dir / "tls", own)
    pki.write_bundle(state_dir / "client", pki.issue_bundle(cca.ca, node_id="admin", role="admin", sans=[]))
    return own


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
            cert = pki.sign(cca.ca, request.csr, node_id=node_id, role=role, sans=sans, lifetime=self.lifetime)
        except pki.PKIError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        log.info("issued %s certificate %s to %s (%s)", role, node_id, request.name or "?", context.peer())
        return pb.IssueResponse(node_id=node_id, role=role, certificate=cert, ca=cca.ca.cert_pem)


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


def authorizer(cca: ClusterCA, denied: DenyList | None = None) -> transport.Authorizer:
    if denied is None:
        return transport.Authorizer(AUTHORIZATION, cca.ca.cluster_id)
    return transport.Authorizer(AUTHORIZATION, cca.ca.cluster_id, denied.__contains__)
