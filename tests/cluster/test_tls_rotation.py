"""`dockyard cluster ca --rotate` on real processes: a --tls scheduler, an agent joined by token, a
task on it. After the rotation the agent is re-issued from the new root at its next heartbeat and
trusts both roots, the node stays ready, the task keeps running (the same container), the scheduler
still places on it, the rewritten admin bundle works, the old token (stolen or not) joins nothing:
the join aborts before its secret is sent, since the join port's CA no longer has its digest; the
new token joins."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.join import JoinError, join, join_address
from common import pki, transport
from protos import cluster_pb2 as cpb
from tests.cluster_harness import JoinedAgent, SchedulerProcess, cli, running, tls_one_node_cluster, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[tuple[SchedulerProcess, JoinedAgent]]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    with tls_one_node_cluster(tmp_path_factory.mktemp("rot"), busybox_tar_path, "rot1", ()) as got:
        yield got


def _roots(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def test_rotating_the_root_reissues_nodes_and_stops_no_task(env: tuple[SchedulerProcess, JoinedAgent],
                                                            tmp_path: Path) -> None:
    sched, agent = env
    admin = str(sched.cert_path)
    old_token = cli(sched.address, "cluster", "join-token", "worker", "-q", cert_path=admin).stdout.strip()
    old_root = _roots((agent.root / "tls" / "ca.pem").read_bytes())[0]
    stack = tmp_path / "r.yaml"
    stack.write_text("services:\n  w:\n    image: busybox:latest\n    command: [\"sleep\", \"600\"]\n")
    assert cli(sched.address, "deploy", "-f", str(stack), "--name", "r", cert_path=admin).returncode == 0
    (t,) = wait_for(lambda: running(sched, "r_w"), 30, "r_w running")
    shutil.copytree(sched.cert_path, tmp_path / "old-admin")

    r = cli(sched.address, "cluster", "ca", "--rotate", cert_path=admin)
    assert r.returncode == 0 and "new root CA" in r.stdout, r.stdout + r.stderr
    print("\n" + r.stdout.strip())

    old_pem = old_root.public_bytes(Encoding.PEM)
    wait_for(lambda: not pki.issued_by_any((agent.root / "tls" / "cert.pem").read_bytes(), old_pem), 20,
             "the agent re-issued from the new root")
    trust = _roots((agent.root / "tls" / "ca.pem").read_bytes())
    assert len(trust) == 2 and old_root in trust  # both roots trusted while certificates of the old live on
    new_root = next(c for c in trust if c != old_root)
    assert pki.issued_by_any((agent.root / "tls" / "cert.pem").read_bytes(), new_root.public_bytes(Encoding.PEM))
    # Nothing stopped: the node, the task's very container; the scheduler still places on the node.
    assert [n.status for n in sched.stub.ListNodes(cpb.Empty(), timeout=5).nodes] == ["ready"]
    (t2,) = running(sched, "r_w")
    assert t2.container_id == t.container_id
    assert cli(sched.address, "service", "scale", "r_w=2", cert_path=admin).returncode == 0
    wait_for(lambda: len(running(sched, "r_w")) == 2, 30, "a second task placed after the rotation")
    # The rewritten admin bundle is of the new root; the copy taken before still works (old root trusted).
    assert pki.issued_by_any((sched.cert_path / "cert.pem").read_bytes(), new_root.public_bytes(Encoding.PEM))
    for bundle in (admin, str(tmp_path / "old-admin")):
        r = cli(sched.address, "node", "ls", cert_path=bundle)
        assert r.returncode == 0 and "rot1" in r.stdout, r.stdout + r.stderr
    # The old token: the join port presents the new root, whose digest is not the token's. Aborted
    # before the secret is sent. The new token joins.
    new_token = cli(sched.address, "cluster", "join-token", "worker", "-q", cert_path=admin).stdout.strip()
    assert new_token != old_token and pki.parse_token(new_token).digest == pki.ca_digest(new_root.public_bytes(Encoding.PEM))
    with pytest.raises(JoinError, match="is not the token's"):
        asyncio.run(join(join_address(sched.address), old_token, name="thief", tls_dir=tmp_path / "thief"))
    assert not (tmp_path / "thief").exists()
    got = asyncio.run(join(join_address(sched.address), new_token, name="late", tls_dir=tmp_path / "late"))
    assert got.role == "agent" and len(_roots(got.bundle.ca_pem)) == 2

    # --finish: every node serves a new-root certificate, so the old root is dropped. The scheduler
    # then serves a certificate of the new root, still reaches the node, and a bundle of the old
    # root is refused.
    r = cli(sched.address, "cluster", "ca", "--finish", cert_path=admin)
    assert r.returncode == 0 and "is trusted now" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: pki.issued_by_any(transport.served_certificate(sched.address, transport.CLI.with_tls(
        pki.read_bundle(sched.cert_path))), new_root.public_bytes(Encoding.PEM)), 10, "the scheduler on the new root")
    assert _roots((sched.cert_path / "ca.pem").read_bytes()) == [new_root]
    assert cli(sched.address, "service", "scale", "r_w=3", cert_path=admin).returncode == 0
    wait_for(lambda: len(running(sched, "r_w")) == 3, 30, "a task placed after the rotation finished")
    old = cli(sched.address, "node", "ls", cert_path=str(tmp_path / "old-admin"))
    assert old.returncode != 0, old.stdout
    r = cli(sched.address, "cluster", "ca", "--finish", cert_path=admin)
    assert r.returncode != 0 and "no rotation to finish" in r.stdout + r.stderr, r.stdout + r.stderr
    cli(sched.address, "stack-rm", "r", cert_path=admin)
