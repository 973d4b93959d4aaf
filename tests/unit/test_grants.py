"""Migration grants (common/grants.py) and the agent's peer authorization (agent/authz.py): a peer
agent's certificate alone reaches nothing on another agent; with a grant the leader signed it
reaches only the migration's calls, for the grant's container, once. Each case fails if the attack
works: no grant, a grant signed by another CA or by an agent, for another source or target,
expired, tampered, replayed, or naming another container."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agent import authz
from agent.model import Forbidden
from common import grants, pki, transport
from common.transport import Role
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg


@pytest.fixture(scope="module")
def ca() -> pki.CA:
    return pki.make_ca("cluster1")


@pytest.fixture(scope="module")
def leader(ca: pki.CA) -> pki.Bundle:
    return pki.issue_bundle(ca, node_id="s1", role="scheduler", sans=[pki.SCHEDULER_NAME])


def _grant(bundle: pki.Bundle, **kw: Any) -> bytes:
    g = {"migration": "m1", "container": "web.1.t1", "source": "n1", "target": "n2", "not_after": time.time() + 60}
    g.update(kw)
    return grants.sign(bundle, grants.Grant(**g))


def _verify(ca: pki.CA, raw: bytes, caller: str = "n1", me: str = "n2") -> grants.Grant:
    return grants.verify(raw, ca_pem=ca.cert_pem, cluster_id=ca.cluster_id, caller=caller, me=me)


def test_a_leaders_grant_verifies_for_its_source_and_target(ca: pki.CA, leader: pki.Bundle) -> None:
    g = _verify(ca, _grant(leader))
    assert (g.migration, g.container, g.source, g.target) == ("m1", "web.1.t1", "n1", "n2")


@pytest.mark.parametrize("case, match", [
    ("other CA", "not signed by a scheduler of this cluster's CA"),
    ("agent signer", "not this cluster's scheduler"),
    ("other cluster", "not this cluster's scheduler"),
    ("other source", "is for source n1, not the caller n9"),
    ("other target", "is for target n2, not this node"),
    ("expired", "expired"),
    ("too long", "lives longer than 600 s"),
    ("tampered", "signature does not verify"),
    ("garbage", "malformed"),
])
def test_a_bad_grant_is_refused(ca: pki.CA, leader: pki.Bundle, case: str, match: str) -> None:
    caller, me = "n1", "n2"
    if case == "other CA":
        raw = _grant(pki.issue_bundle(pki.make_ca(ca.cluster_id), node_id="s1", role="scheduler", sans=[]))
    elif case == "agent signer":
        raw = _grant(pki.issue_bundle(ca, node_id="n1", role="agent", sans=[]))  # the source signs itself one
    elif case == "other cluster":
        other = pki.make_ca("cluster2")
        raw = _grant(pki.issue_bundle(other, node_id="s1", role="scheduler", sans=[]))
        ca = pki.CA(ca.cert_pem + other.cert_pem, ca.key_pem)  # even if that CA were trusted
    elif case == "other source":
        raw, caller = _grant(leader), "n9"
    elif case == "other target":
        raw, me = _grant(leader), "n3"
    elif case == "expired":
        raw = _grant(leader, not_after=time.time() - 1)
    elif case == "too long":
        raw = _grant(leader, not_after=time.time() + 3600)
    elif case == "tampered":
        outer = json.loads(_grant(leader))
        claims = json.loads(base64.b64decode(outer["claims"]))
        claims["container"] = "db.1.t9"
        outer["claims"] = base64.b64encode(json.dumps(claims, sort_keys=True).encode()).decode()
        raw = json.dumps(outer).encode()
    else:
        raw = b"{not json"
    with pytest.raises(PermissionError, match=match):
        _verify(ca, raw, caller, me)


class Target(pbg.AgentServicer):
    """A target agent's servicer as far as a peer can reach it: the grant checks of agent/server.py."""

    def __init__(self) -> None:
        self.peers = authz.PeerGrants()

    async def Info(self, request: pb.Empty, context: Any) -> pb.AgentInfo:
        return pb.AgentInfo(name="n2")

    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.ContainerSummary:
        return pb.ContainerSummary(id="made")

    async def RestoreContainer(self, request_iterator: AsyncIterator[pb.RestoreChunk], context: Any) -> pb.ContainerSummary:
        header = None
        async for chunk in request_iterator:
            header = chunk.header if chunk.HasField("header") else header
        assert header is not None
        try:
            self.peers.check_restore(header.name, header.id, time.time())
        except Forbidden as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        return pb.ContainerSummary(id="restored", name=header.name)


def test_a_peer_agent_needs_the_leaders_grant_over_mutual_tls(ca: pki.CA, leader: pki.Bundle) -> None:
    target = pki.issue_bundle(ca, node_id="n2", role="agent", sans=[pki.node_name("n2")])
    source = transport.Identity(Role.AGENT, pki.issue_bundle(ca, node_id="n1", role="agent", sans=[pki.node_name("n1")]))
    other = transport.Identity(Role.AGENT, pki.issue_bundle(ca, node_id="n7", role="agent", sans=[]))
    scheduler = transport.Identity(Role.SCHEDULER, leader)

    async def call(ch: grpc.aio.Channel, what: str, grant: bytes = b"", name: str = "web.1.t1",
                   restore_id: str = "") -> tuple[grpc.StatusCode, str]:
        stub = pbg.AgentStub(ch)  # type: ignore[no-untyped-call]
        md = ((grants.METADATA, grant),) if grant else ()

        async def chunks() -> AsyncIterator[pb.RestoreChunk]:
            yield pb.RestoreChunk(header=pb.RestoreHeader(name=name, id=restore_id))

        try:
            if what == "restore":
                r = await stub.RestoreContainer(chunks(), timeout=3, metadata=md)
                return grpc.StatusCode.OK, r.id
            if what == "create":
                return grpc.StatusCode.OK, (await stub.CreateContainer(pb.CreateContainerRequest(), timeout=3,
                                                                       metadata=md)).id
            return grpc.StatusCode.OK, (await stub.Info(pb.Empty(), timeout=3, metadata=md)).name
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""

    async def main() -> None:
        ident = transport.Identity(Role.AGENT, target)
        srv = transport.server(ident, authz.authorizer(lambda: target))
        pbg.add_AgentServicer_to_server(Target(), srv)  # type: ignore[no-untyped-call]
        port = transport.serve(srv, "127.0.0.1:0", ident)
        await srv.start()
        addr = f"127.0.0.1:{port}"
        deny = grpc.StatusCode.PERMISSION_DENIED
        try:
            async with transport.dial(addr, source, Role.AGENT, "n2") as ch:
                # No grant: not even Info; and never CreateContainer, grant or not.
                code, why = await call(ch, "info")
                assert code is deny and "only with a migration grant" in why
                assert (await call(ch, "restore"))[0] is deny
                assert (await call(ch, "create", _grant(leader)))[0] is deny
                # A grant the source signed itself (its agent key), or for another target.
                assert (await call(ch, "restore", _grant(source.tls)))[0] is deny  # type: ignore[arg-type]
                assert (await call(ch, "restore", _grant(leader, target="n3")))[0] is deny
                # The right grant, but another container; a local checkpoint; then the grant's container once.
                g = _grant(leader)
                code, why = await call(ch, "restore", g, name="db.1.t9")
                assert code is deny and "is for container web.1.t1" in why
                assert (await call(ch, "restore", g, restore_id="db.1.t9"))[0] is deny
                assert await call(ch, "info", g) == (grpc.StatusCode.OK, "n2")
                assert await call(ch, "restore", g) == (grpc.StatusCode.OK, "restored")
                code, why = await call(ch, "restore", g)  # replayed
                assert code is deny and "used to restore once already" in why
            # Another agent holding the source's grant (stolen): refused by its certificate's CN.
            async with transport.dial(addr, other, Role.AGENT, "n2") as ch:
                code, why = await call(ch, "restore", _grant(leader, migration="m2"))
                assert code is deny and "not the caller n7" in why
            # The scheduler itself needs no grant.
            async with transport.dial(addr, scheduler, Role.AGENT, "n2") as ch:
                assert await call(ch, "create") == (grpc.StatusCode.OK, "made")
        finally:
            await srv.stop(None)

    asyncio.run(main())
