"""Moving tasks between nodes with everything on: a --tls scheduler, three netns hosts joined by
token, and `dockyard migrate --live` / `--cold` / `node drain` through mutual TLS. The source agent
dials the target by its node id with its own certificate and the leader's migration grant; a peer
without a grant (here: host1's own certificate and key, used by hand) reaches nothing on host2."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common import grants, pki, transport
from protos import agent_pb2 as apb
from protos import agent_pb2_grpc as apbg
from protos import cluster_pb2 as cpb
from tests.cluster_harness import SchedulerProcess, cli, free_port_pair, running, tasks, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import Cluster, Host, cluster, join, multihost_session_check_fixture  # noqa: F401

pytestmark = [pytest.mark.multinode, pytest.mark.criu, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

COUNTER = "i=0; while :; do i=$$((i+1)); echo $$i; sleep 0.05; done"


class Env:
    def __init__(self, c: Cluster, s: SchedulerProcess, tmp: Path) -> None:
        self.c, self.s, self.tmp = c, s, tmp

    def ok(self, *args: str) -> str:
        r = cli(self.s.address, *args, cert_path=str(self.s.cert_path))
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def deploy(self, stack: str, replicas: int = 1) -> list[cpb.TaskInfo]:
        p = self.tmp / f"{stack}.yaml"
        p.write_text(f"""
services:
  app:
    image: busybox:latest
    command: ["sh", "-c", "{COUNTER}"]
    deploy:
      replicas: {replicas}
      restart_policy: {{condition: any, delay: 1s}}
""")
        self.ok("deploy", "-f", str(p), "--name", stack)
        found: list[cpb.TaskInfo] = wait_for(
            lambda: (ts := running(self.s, f"{stack}_app")) and len(ts) == replicas and ts, 60, f"{stack} running")
        return found

    def host(self, name: str) -> Host:
        return self.c[int(name.removeprefix("host"))]

    def settled(self, task_id: str) -> str:
        def ok() -> str | None:
            if self.s.stub.ListMigrations(cpb.Empty(), timeout=5).migrations:
                return None
            where = [h.name for h in self.c for ct in h.stub.ListContainers(apb.ListContainersRequest(
                filters={"label": "dockyard.task"}), timeout=10).containers if ct.labels["dockyard.task"] == task_id]
            t = next(t for t in tasks(self.s, all_=True) if t.id == task_id)
            return where[0] if len(where) == 1 and t.state == "running" and t.node == where[0] else None

        node: str = wait_for(ok, 60, f"task {task_id} settled with one copy")
        return node


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
        multihost_session_check: None) -> Iterator[Env]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")
    base = tmp_path_factory.mktemp("tmig")
    # The agents' fault hook (common/faults.py: a pause after the dump, set by a file per host).
    with pytest.MonkeyPatch.context() as mp, cluster(3, base, busybox_tar_path) as c:
        mp.setenv("DOCKYARD_FAULT_INJECTION", "1")  # read by the agents the harness starts
        etcd = EtcdServer.start()
        s = SchedulerProcess(base / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port_pair()}", tls=True,
                             ttl=10)
        try:
            s.start()
            e = Env(c, s, base)
            token = e.ok("cluster", "join-token", "worker", "-q").strip()
            for h in c:
                join(h, s.address, token)
            wait_for(lambda: len([n for n in s.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                  if n.status == "ready" and n.capabilities.criu]) == 3, 40, "3 nodes ready with CRIU")
            yield e
        finally:
            s.stop()
            etcd.stop()


def _numbers(h: Host, ref: str) -> list[int]:
    return [int(x) for x in h.cli("logs", ref).stdout.split() if x.isdigit()]


def _other(env: Env, node: str) -> str:
    return next(h.name for h in env.c if h.name != node)


def test_live_migration_over_mutual_tls_keeps_memory(env: Env) -> None:
    (t,) = env.deploy("lv")
    src, name = env.host(t.node), f"{t.name}.{t.id}"
    wait_for(lambda: len(_numbers(src, name)) > 20, 20, "counting")
    to = _other(env, t.node)
    t0 = time.monotonic()
    out = env.ok("migrate", t.name, "--to", to, "--live")
    print(f"\n{out.strip()}\nlive migration over TLS: {time.monotonic() - t0:.2f} s")
    assert "downtime" in out and f"to {to} (live)" in out, out
    assert env.settled(t.id) == to
    dst = env.host(to)
    wait_for(lambda: len(_numbers(dst, name)) > 3, 20, "counting on the target")
    assert _numbers(dst, name)[0] > 20  # went on from where it was
    # Post-copy, its pages pulled over TLS: the target's criu checked the source's certificate.
    assert "post-copy over TLS: criu page server speaks TLSv1" in dst.log.read_text()
    (pulled,) = [p.read_text() for p in (dst.root / "containers").glob("*/lazy-pages.log")]
    assert "TLS handshake completed" in pulled and "Error" not in pulled.replace("Error (criu/util.c", ""), pulled[-2000:]


def test_cold_migration_and_drain_over_mutual_tls(env: Env) -> None:
    (t,) = env.deploy("cd")
    name = f"{t.name}.{t.id}"
    assert env.host(t.node).cli("exec", name, "sh", "-c", "echo before > /root/f").returncode == 0
    to = _other(env, t.node)
    assert "(cold)" in env.ok("migrate", t.name, "--to", to, "--cold")
    assert env.settled(t.id) == to
    assert env.host(to).cli("exec", name, "cat", "/root/f").stdout == "before\n"
    try:
        out = env.ok("node", "drain", to)
        assert f"{to} drained" in out, out
        assert env.settled(t.id) != to
    finally:
        env.ok("node", "activate", to)


def test_a_peer_agent_without_a_grant_reaches_nothing(env: Env) -> None:
    h1, h2 = env.c[1], env.c[2]
    me = transport.Identity(transport.Role.AGENT, pki.read_bundle(h1.root / "tls"))
    n2 = pki.subject_of((h2.root / "tls" / "cert.pem").read_bytes()).node_id
    ch = transport.dial_blocking(h2.address, me, transport.Role.AGENT, n2)
    stub = apbg.AgentStub(ch)  # type: ignore[no-untyped-call]
    try:
        for call in (lambda: stub.Info(apb.Empty(), timeout=5),
                     lambda: stub.ListContainers(apb.ListContainersRequest(), timeout=5),
                     lambda: stub.RestoreContainer(iter([apb.RestoreChunk(header=apb.RestoreHeader(name="x"))]),
                                                   timeout=5),
                     # a grant it signed with its own (agent) key
                     lambda: stub.Info(apb.Empty(), timeout=5, metadata=((grants.METADATA, grants.sign(
                         me.tls, grants.Grant("m", "x", me_id(me), n2, time.time() + 60))),))):  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED, e.value
    finally:
        ch.close()


def _removed_nodes_certificate(env: Env) -> Path:
    """A certificate the scheduler really issued (joined by the worker token), whose node is then on
    the denylist as `node rm` leaves it: what a removed node still holds."""
    import asyncio

    from agent.join import join as join_cluster
    from agent.join import join_address
    from scheduler import tls
    from scheduler.main import parse_endpoints
    from scheduler.store import Store

    token = env.ok("cluster", "join-token", "worker", "-q").strip()
    d = env.tmp / f"removed-{time.monotonic_ns()}"

    async def main() -> None:
        joined = await join_cluster(join_address(env.s.address), token, name="gone", tls_dir=d)
        (host, port), = parse_endpoints(env.s.etcd)
        store = await Store.connect(host, port)
        try:
            await store.commit([await tls.denied_op(store, joined.node_id)])
        finally:
            await store.close()

    asyncio.run(main())
    return d


@pytest.mark.parametrize("who", ["another CA", "a removed node"])
def test_a_page_server_client_without_a_cluster_certificate_gets_no_pages(env: Env, who: str) -> None:
    """Research case 17: during a post-copy move, someone with another CA's certificate, or with the
    certificate of a node removed from the cluster (refused through the CRL the leader sends with the
    move), connects to the source's page server first. The handshake is refused, CRIU's dump fails
    and unfreezes the container, the move rolls back, and the container counts on where it was."""
    import json
    import socket
    import ssl
    import subprocess

    from tests.agent_harness import CLI, REPO, _env

    evil = _removed_nodes_certificate(env) if who == "a removed node" else env.tmp / "evil"
    if who == "another CA":
        pki.write_bundle(evil, pki.issue_bundle(pki.make_ca("x"), node_id="n9", role="agent", sans=[]))
    (t,) = env.deploy("ps" if who == "another CA" else "pr")
    src, to = env.host(t.node), _other(env, t.node)
    name = f"{t.name}.{t.id}"
    wait_for(lambda: len(_numbers(src, name)) > 20, 20, "counting")
    pause = src.root / "fault-pause-after-dump"  # agent/migration.py waits there after the dump
    pause.write_text("4")
    e = _env()
    e.update(DOCKYARD_SCHEDULER=env.s.address, DOCKYARD_CERT_PATH=str(env.s.cert_path))
    proc = subprocess.Popen([*CLI, "migrate", t.name, "--to", to, "--live"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=e, cwd=REPO)
    try:
        note = wait_for(lambda: list((src.root / "containers").glob("*/lazy-dump.json")), 30, "the lazy dump")
        where = json.loads(note[0].read_text())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.load_cert_chain(str(evil / "cert.pem"), str(evil / "key.pem"))
        got = b""
        try:
            with socket.create_connection((where["address"], where["port"]), timeout=5) as raw, \
                    ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\0" * 24)
                got = tls.recv(4096)
        except (OSError, ssl.SSLError) as err:
            print(f"\nthe page server refused {who}'s certificate: {err}")
        assert got == b""  # not one page
        out, _ = proc.communicate(timeout=90)
    finally:
        pause.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
    print(out.strip())
    assert proc.returncode != 0 or "rolled back" in out, out
    # Refused for the reason named (a client that got through would also end the one-shot dump).
    log = (note[0].parent / "dump.log").read_text(errors="replace")
    assert ("The certificate chain is revoked" if who == "a removed node" else "issuer is unknown") in log, \
        log[-3000:]
    assert env.settled(t.id) == t.node  # rolled back: only the source runs it
    before = _numbers(src, name)[-1]
    wait_for(lambda: _numbers(src, name)[-1] > before + 5, 20, "counting on after the refused client")
    assert _numbers(src, name).count(1) == 1  # went on, never started over


def test_a_tampered_archive_is_refused_before_anything_is_made(env: Env) -> None:
    """A source holding a real grant (signed here with the leader's key, as the leader would) sends
    an archive whose bytes are not the ones its header's sha256 names: refused, nothing made."""
    import hashlib

    h1, h2 = env.c[1], env.c[2]
    me = transport.Identity(transport.Role.AGENT, pki.read_bundle(h1.root / "tls"))
    n2 = pki.subject_of((h2.root / "tls" / "cert.pem").read_bytes()).node_id
    leader = pki.read_bundle(env.s.base / "state" / "tls")
    g = grants.sign(leader, grants.Grant("mt", "evil.1.x", me_id(me), n2, time.time() + 60))
    before = {c.name for c in h2.stub.ListContainers(apb.ListContainersRequest(all=True), timeout=10).containers}
    archive = b"\0" * 4096
    chunks = [apb.RestoreChunk(header=apb.RestoreHeader(name="evil.1.x", sha256=hashlib.sha256(archive).hexdigest())),
              apb.RestoreChunk(data=archive[:-1] + b"\1")]
    with transport.dial_blocking(h2.address, me, transport.Role.AGENT, n2) as ch, \
            pytest.raises(grpc.RpcError) as e:
        apbg.AgentStub(ch).RestoreContainer(iter(chunks), timeout=30,  # type: ignore[no-untyped-call]
                                            metadata=((grants.METADATA, g),))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "the sender said" in (e.value.details() or ""), e.value
    after = {c.name for c in h2.stub.ListContainers(apb.ListContainersRequest(all=True), timeout=10).containers}
    assert after == before


def me_id(ident: transport.Identity) -> str:
    assert ident.tls is not None
    return pki.subject_of(ident.tls.cert_pem).node_id
