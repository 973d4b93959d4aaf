"""Mutual TLS and authorization through common/transport.py, on real TLS over loopback: each case
fails if the attack works (plaintext, no client certificate, a foreign CA, a worker calling an admin
method, unary or streaming, a removed node, a host answering with another node's certificate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from common import pki, transport
from common.transport import Role
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg

S = "/dockyard.cluster.Scheduler/"
TABLE = {S + "Status": frozenset({"admin"}), S + "Logs": frozenset({"admin"}),
         S + "Register": frozenset({"agent"})}


class Servicer(pbg.SchedulerServicer):
    async def Status(self, request: pb.Empty, context: Any) -> pb.SchedulerStatus:
        who = transport.caller()
        assert who is not None
        return pb.SchedulerStatus(replica=f"{who.role}:{who.node_id}")

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        return pb.RegisterResponse(lease_id=1)

    async def Logs(self, request: pb.LogsRequest, context: Any) -> AsyncIterator[pb.LogLine]:
        yield pb.LogLine(task="t1")

    async def ListNodes(self, request: pb.Empty, context: Any) -> pb.ListNodesResponse:
        return pb.ListNodesResponse()  # in no table row: denied by default


@pytest.fixture(scope="module")
def ca() -> pki.CA:
    return pki.make_ca("cluster1")


def _ident(ca: pki.CA, role: Role, node_id: str, ou: str, sans: list[str]) -> transport.Identity:
    return transport.Identity(role, pki.issue_bundle(ca, node_id=node_id, role=ou, sans=sans))


async def _status(ch: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    try:
        r = await pbg.SchedulerStub(ch).Status(pb.Empty(), timeout=3)  # type: ignore[no-untyped-call]
        return grpc.StatusCode.OK, r.replica
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""


@pytest.mark.slow
def test_mutual_tls_and_the_role_table(ca: pki.CA) -> None:
    removed: set[str] = set()

    async def main() -> None:
        sched = _ident(ca, Role.SCHEDULER, "s1", "scheduler", [pki.SCHEDULER_NAME])
        srv = transport.server(sched, transport.Authorizer(TABLE, ca.cluster_id, removed.__contains__))
        pbg.add_SchedulerServicer_to_server(Servicer(), srv)  # type: ignore[no-untyped-call]
        port = transport.serve(srv, "127.0.0.1:0", sched)
        await srv.start()
        addr = f"127.0.0.1:{port}"
        admin = _ident(ca, Role.CLI, "admin", "admin", [])
        agent = _ident(ca, Role.AGENT, "n1", "agent", [pki.node_name("n1")])
        foreign = _ident(pki.make_ca("cluster1"), Role.CLI, "admin", "admin", [])
        try:
            async with transport.dial(addr, admin, Role.SCHEDULER) as ch:
                assert await _status(ch) == (grpc.StatusCode.OK, "admin:admin")
            # Plaintext, TLS without a client certificate, a foreign CA with the same names: the handshake fails.
            for who in (transport.CLI, foreign):
                async with transport.dial(addr, who, Role.SCHEDULER) as ch:
                    assert (await _status(ch))[0] is grpc.StatusCode.UNAVAILABLE
            async with transport.dial_join(addr, ca.cert_pem) as ch:
                assert (await _status(ch))[0] is grpc.StatusCode.UNAVAILABLE
            # A worker's certificate: its own method passes; an admin method, unary or streaming, and a
            # method in no row of the table are refused.
            async with transport.dial(addr, agent, Role.SCHEDULER) as ch:
                stub = pbg.SchedulerStub(ch)  # type: ignore[no-untyped-call]
                assert (await stub.Register(pb.RegisterRequest(name="n1"), timeout=3)).lease_id == 1
                code, details = await _status(ch)
                assert code is grpc.StatusCode.PERMISSION_DENIED and "agent n1 may not call Status" in details
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    async for _ in stub.Logs(pb.LogsRequest(target="t1"), timeout=3):
                        pass
                assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.ListNodes(pb.Empty(), timeout=3)
                assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
                # Removed from the cluster: refused on its next call on the same open channel.
                removed.add("n1")
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Register(pb.RegisterRequest(name="n1"), timeout=3)
                assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
                assert "removed from the cluster" in (e.value.details() or "")
        finally:
            await srv.stop(None)

    asyncio.run(main())


@pytest.mark.slow
def test_a_host_with_another_nodes_certificate_is_refused_by_name(ca: pki.CA) -> None:
    async def main() -> None:
        # The scheduler dials node n2 but the host there presents n3's certificate; and an agent's
        # certificate cannot pass for a scheduler's.
        n3 = _ident(ca, Role.AGENT, "n3", "agent", [pki.node_name("n3")])
        srv = transport.server(n3, transport.Authorizer({S + "Status": frozenset({"scheduler", "admin"})},
                                                         ca.cluster_id))
        pbg.add_SchedulerServicer_to_server(Servicer(), srv)  # type: ignore[no-untyped-call]
        port = transport.serve(srv, "127.0.0.1:0", n3)
        await srv.start()
        sched = _ident(ca, Role.SCHEDULER, "s1", "scheduler", [pki.SCHEDULER_NAME])
        try:
            async with transport.dial(f"127.0.0.1:{port}", sched, Role.AGENT, "n2") as ch:
                assert (await _status(ch))[0] is grpc.StatusCode.UNAVAILABLE
            async with transport.dial(f"127.0.0.1:{port}", sched, Role.SCHEDULER) as ch:
                assert (await _status(ch))[0] is grpc.StatusCode.UNAVAILABLE
            async with transport.dial(f"127.0.0.1:{port}", sched, Role.AGENT, "n3") as ch:
                assert await _status(ch) == (grpc.StatusCode.OK, "scheduler:s1")
        finally:
            await srv.stop(None)

    asyncio.run(main())


@pytest.mark.slow
def test_an_expired_client_certificate_is_refused(ca: pki.CA) -> None:
    import datetime as dt

    async def main() -> None:
        sched = _ident(ca, Role.SCHEDULER, "s1", "scheduler", [pki.SCHEDULER_NAME])
        srv = transport.server(sched, transport.Authorizer(TABLE, ca.cluster_id))
        pbg.add_SchedulerServicer_to_server(Servicer(), srv)  # type: ignore[no-untyped-call]
        port = transport.serve(srv, "127.0.0.1:0", sched)
        await srv.start()
        key, csr = pki.make_key_and_csr()
        old = pki.sign(ca, csr, node_id="admin", role="admin", sans=[], lifetime=dt.timedelta(hours=1),
                       now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
        expired = transport.Identity(Role.CLI, pki.Bundle(ca.cert_pem, old, key))
        try:
            async with transport.dial(f"127.0.0.1:{port}", expired, Role.SCHEDULER) as ch:
                assert (await _status(ch))[0] is grpc.StatusCode.UNAVAILABLE
        finally:
            await srv.stop(None)

    asyncio.run(main())


@pytest.mark.slow
def test_a_certificate_of_another_cluster_is_denied(ca: pki.CA) -> None:
    # The right CA, but the server belongs to another cluster id (research case 2: PERMISSION_DENIED).
    async def main() -> None:
        sched = _ident(ca, Role.SCHEDULER, "s1", "scheduler", [pki.SCHEDULER_NAME])
        srv = transport.server(sched, transport.Authorizer(TABLE, "another-cluster"))
        pbg.add_SchedulerServicer_to_server(Servicer(), srv)  # type: ignore[no-untyped-call]
        port = transport.serve(srv, "127.0.0.1:0", sched)
        await srv.start()
        try:
            async with transport.dial(f"127.0.0.1:{port}", _ident(ca, Role.CLI, "admin", "admin", []),
                                      Role.SCHEDULER) as ch:
                code, details = await _status(ch)
                assert code is grpc.StatusCode.PERMISSION_DENIED and "not of this cluster" in details
        finally:
            await srv.stop(None)

    asyncio.run(main())


def test_dialling_a_node_over_tls_needs_its_id(ca: pki.CA) -> None:
    agent = _ident(ca, Role.AGENT, "n1", "agent", [])
    with pytest.raises(ValueError, match="needs its node id"):
        transport.dial_blocking("127.0.0.1:1", agent, Role.AGENT)
    # A unix socket stays local trust, whatever the identity.
    transport.dial_blocking("unix:///nonexistent.sock", agent, Role.AGENT).close()


def test_every_method_has_a_row_in_the_tables() -> None:
    # Deny by default means a new RPC nobody listed is refused under --tls: this test says which.
    from agent import authz
    from scheduler.tls import AUTHORIZATION

    scheduler = pb.DESCRIPTOR.services_by_name["Scheduler"]
    assert sorted(f"/{scheduler.full_name}/{m.name}" for m in scheduler.methods) == sorted(AUTHORIZATION)
    table = authz.table()
    # A peer agent reaches only what a migration's target is asked (and then only with a grant).
    assert {m for m, roles in table.items() if "agent" in roles} == authz.PEER_METHODS
    assert "/dockyard.agent.Agent/CreateContainer" in table and "/dockyard.agent.Agent/Exec" in table
    assert "/dockyard.volumes.Volumes/CheckMigration" in table
