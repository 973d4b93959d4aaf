"""Certificates renew themselves and are swapped in without a restart (common/renewal.py): a
`--tls --cert-lifetime 30s` scheduler, an agent joined by token, a task on it. Well past the first
certificates' expiry, the node is still ready, the task still runs, the CLI and the scheduler still
reach the agent; the agent's and the scheduler's certificates on disk are new ones for the same ids,
and each TCP port serves its new certificate to a new connection. A removed node's renewal is refused."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from common import pki, transport
from protos import cluster_pb2 as cpb
from protos import cluster_pb2_grpc as cpbg
from tests.cluster_harness import JoinedAgent, SchedulerProcess, cli, running, tls_one_node_cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

LIFETIME = 30


def _served(address: str, client: Path) -> x509.Certificate:
    """The certificate a TLS port presents to a new connection."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(str(client / "cert.pem"), str(client / "key.pem"))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[tuple[SchedulerProcess, JoinedAgent]]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    with tls_one_node_cluster(tmp_path_factory.mktemp("renew"), busybox_tar_path, "renew1", ("--cert-lifetime", f"{LIFETIME}s")) as got:
        yield got


def test_certificates_renew_and_are_swapped_in_without_a_restart(env: tuple[SchedulerProcess, JoinedAgent],
                                                                 tmp_path: Path) -> None:
    sched, agent = env
    admin = sched.cert_path
    first_agent = x509.load_pem_x509_certificate((agent.root / "tls" / "cert.pem").read_bytes())
    first_sched = x509.load_pem_x509_certificate((sched.base / "state" / "tls" / "cert.pem").read_bytes())
    assert first_agent.not_valid_after_utc.timestamp() - time.time() <= LIFETIME + 1
    stack = tmp_path / "r.yaml"
    stack.write_text("services:\n  w:\n    image: busybox:latest\n    command: [\"sleep\", \"600\"]\n")
    r = cli(sched.address, "deploy", "-f", str(stack), "--name", "r", cert_path=str(admin))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: running(sched, "r_w"), 30, "r_w running")
    agent_pid, sched_pid = agent.proc.pid if agent.proc else 0, sched.proc.pid if sched.proc else 0
    # Past the first certificates' NotAfter (renewal is due at 50-80 % of their life).
    deadline = first_agent.not_valid_after_utc.timestamp() + 5
    while time.time() < deadline:
        time.sleep(1)
    now_agent = x509.load_pem_x509_certificate((agent.root / "tls" / "cert.pem").read_bytes())
    now_sched = x509.load_pem_x509_certificate((sched.base / "state" / "tls" / "cert.pem").read_bytes())
    assert now_agent.serial_number != first_agent.serial_number and now_agent.subject == first_agent.subject
    assert now_sched.serial_number != first_sched.serial_number and now_sched.subject == first_sched.subject
    assert now_agent.not_valid_after_utc > first_agent.not_valid_after_utc
    assert (agent.root / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    # The same processes, serving the new certificates to new connections.
    assert agent.proc is not None and agent.proc.pid == agent_pid and agent.proc.poll() is None
    assert sched.proc is not None and sched.proc.pid == sched_pid and sched.proc.poll() is None
    assert _served(agent.listen, admin).serial_number == \
        x509.load_pem_x509_certificate((agent.root / "tls" / "cert.pem").read_bytes()).serial_number
    assert _served(sched.address, admin).not_valid_after_utc > first_sched.not_valid_after_utc
    # Everything still talks: heartbeats (the node stays ready), the dispatcher, a new CLI call.
    nodes = sched.stub.ListNodes(cpb.Empty(), timeout=5).nodes
    assert [n.status for n in nodes] == ["ready"], nodes
    assert running(sched, "r_w")
    r = cli(sched.address, "service", "ps", "r_w", cert_path=str(admin))
    assert r.returncode == 0 and "Running" in r.stdout, r.stdout + r.stderr
    assert "certificate renewed" in agent.log.read_text()
    cli(sched.address, "stack-rm", "r", cert_path=str(admin))


def test_the_admin_bundle_renews_itself_near_its_end(env: tuple[SchedulerProcess, JoinedAgent],
                                                      tmp_path: Path) -> None:
    """The CLI's certificate past 2/3 of its life: a call renews it through the scheduler (same CN
    and role, a new key) and writes it in place, 0600; the next call uses the new one."""
    import asyncio
    import datetime as dt

    from scheduler import tls
    from scheduler.main import parse_endpoints
    from scheduler.store import Store

    sched, _ = env

    async def cluster_ca() -> pki.CA:
        (host, port), = parse_endpoints(sched.etcd)
        store = await Store.connect(host, port)
        try:
            return (await tls.ensure_ca(store)).ca
        finally:
            await store.close()

    ca = asyncio.run(cluster_ca())
    key, csr = pki.make_key_and_csr()
    now = dt.datetime.now(dt.UTC)
    old = pki.sign(ca, csr, node_id="admin", role="admin", sans=[], lifetime=dt.timedelta(seconds=60),
                   now=now - dt.timedelta(seconds=45))  # 75 % of its life gone
    d = tmp_path / "admin"
    pki.write_bundle(d, pki.Bundle(ca.cert_pem, old, key))
    r = cli(sched.address, "node", "ls", cert_path=str(d))
    assert r.returncode == 0 and "renew1" in r.stdout, r.stdout + r.stderr
    assert f"renewed the admin certificate in {d}" in r.stderr, r.stderr
    new = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    assert new.serial_number != x509.load_pem_x509_certificate(old).serial_number
    assert new.not_valid_after_utc > x509.load_pem_x509_certificate(old).not_valid_after_utc
    assert pki.subject_of((d / "cert.pem").read_bytes()).role == "admin"
    assert (d / "key.pem").read_bytes() != key and (d / "key.pem").stat().st_mode & 0o777 == 0o600
    again = cli(sched.address, "node", "ls", cert_path=str(d))
    assert again.returncode == 0 and "renewed" not in again.stderr, again.stderr


def test_a_removed_nodes_renewal_is_refused(env: tuple[SchedulerProcess, JoinedAgent]) -> None:
    sched, agent = env
    bundle = pki.read_bundle(agent.root / "tls")
    r = cli(sched.address, "node", "rm", "--force", "renew1", cert_path=str(sched.cert_path))
    assert r.returncode == 0, r.stdout + r.stderr
    _, csr = pki.make_key_and_csr()
    with transport.dial_blocking(sched.address, transport.Identity(transport.Role.AGENT, bundle),
                                 transport.Role.SCHEDULER) as ch:
        stub = cpbg.SchedulerStub(ch)  # type: ignore[no-untyped-call]
        err = wait_for(lambda: _refused(stub, csr), 10, "the renewal refused")
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED and "removed from the cluster" in (err.details() or "")


def _refused(stub: cpbg.SchedulerStub, csr: bytes) -> grpc.RpcError | None:
    try:
        stub.RenewCertificate(cpb.RenewRequest(csr=csr), timeout=5)
    except grpc.RpcError as e:
        return e
    return None
