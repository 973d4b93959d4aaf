"""etcd with a CA of its own and client-certificate auth (scheduler/etcd_tls.py), real processes:
`dockyard scheduler --tls` starts its etcd on https with --client-cert-auth; plaintext, TLS
without a certificate, and the cluster CA's admin and agent certificates are all refused by etcd
itself; only the scheduler's etcd client certificate reads and writes. A second replica reaches
that etcd as an external one (`--etcd https://... --etcd-cacert/--etcd-cert/--etcd-key`), and a
missing or readable key is refused with its name."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import pki
from protos import cluster_pb2 as cpb
from scheduler.etcd_tls import ETCD_NAME
from scheduler.store import Put, Store, Unavailable
from tests.agent_harness import CLI, REPO, _env
from tests.cluster_harness import SchedulerProcess, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture(scope="module")
def sched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    s = SchedulerProcess(tmp_path_factory.mktemp("etls") / "s", tls=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _etcd_port(s: SchedulerProcess) -> int:
    import json

    return int(json.loads((s.base / "state" / "etcd.json").read_text())["client"])


async def _try(port: int, tls: pki.Bundle | None, name: str = ETCD_NAME) -> str:
    try:
        store = await Store.connect(endpoints=[("127.0.0.1", port)], timeout=3, tls=tls, server_name=name)
    except Unavailable as e:
        return f"refused: {e}"
    try:
        await store.commit([Put(b"/dockyard/test/etls", b"x", None)])
        got = await store.get_raw(b"/dockyard/test/etls")
        return f"ok {got is not None and got[0] == b'x'}"
    finally:
        await store.close()


def test_our_etcd_runs_https_with_client_certificate_auth(sched: SchedulerProcess) -> None:
    pid = sched.embedded_etcd_pid()
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--client-cert-auth" in argv and b"--peer-client-cert-auth" in argv
    assert any(a.startswith(b"https://127.0.0.1:") for a in argv)
    d = sched.base / "state" / "etcd-tls"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for sub in ("ca", "server", "client"):
        assert stat.S_IMODE(os.stat(d / sub / "key.pem").st_mode) == 0o600
    # Its own CA: not the cluster's.
    assert (d / "ca" / "ca.pem").read_bytes() != (sched.base / "state" / "tls" / "ca.pem").read_bytes()
    assert sched.status().leader


@pytest.mark.parametrize("who", ["plaintext", "admin bundle", "scheduler's cluster certificate",
                                 "foreign CA with the right name", "etcd client certificate"])
def test_only_the_etcd_client_certificate_reaches_etcd(sched: SchedulerProcess, who: str) -> None:
    state = sched.base / "state"
    etcd_ca = (state / "etcd-tls" / "ca" / "ca.pem").read_bytes()
    cluster = pki.read_bundle(state / "client")
    if who == "plaintext":
        tls = None
    elif who == "admin bundle":
        tls = pki.Bundle(etcd_ca, cluster.cert_pem, cluster.key_pem)  # trusting etcd's CA, even
    elif who == "scheduler's cluster certificate":
        raw = pki.read_bundle(state / "tls")
        tls = pki.Bundle(etcd_ca, raw.cert_pem, raw.key_pem)
    elif who == "foreign CA with the right name":
        evil = pki.make_ca("etcd-x", common_name="dockyard etcd CA")
        b = pki.issue_bundle(evil, node_id="scheduler", role="etcd", sans=[])
        tls = pki.Bundle(etcd_ca, b.cert_pem, b.key_pem)
    else:
        tls = pki.read_bundle(state / "etcd-tls" / "client")
    got = asyncio.run(_try(_etcd_port(sched), tls))
    if who == "etcd client certificate":
        assert got == "ok True", got
    else:
        assert got.startswith("refused"), got


def test_etcd_must_answer_by_its_name(sched: SchedulerProcess) -> None:
    client = pki.read_bundle(sched.base / "state" / "etcd-tls" / "client")
    got = asyncio.run(_try(_etcd_port(sched), client, name=pki.SCHEDULER_NAME))
    assert got.startswith("refused"), got


def test_a_second_replica_reaches_it_as_an_external_etcd_over_tls(sched: SchedulerProcess, tmp_path: Path) -> None:
    c = sched.base / "state" / "etcd-tls" / "client"
    url = f"https://127.0.0.1:{_etcd_port(sched)}"
    flags = ("--etcd-cacert", str(c / "ca.pem"), "--etcd-cert", str(c / "cert.pem"), "--etcd-key", str(c / "key.pem"))
    b = SchedulerProcess(tmp_path / "b", etcd=url, tls=True, extra_args=flags)
    try:
        b.start()
        st = b.status()
        assert st.replica and not st.leader  # the first replica leads, through the same etcd
        nodes = b.stub.ListNodes(cpb.Empty(), timeout=5)
        assert isinstance(nodes, cpb.ListNodesResponse)
    finally:
        b.stop()
    wait_for(lambda: sched.status().leader, 10, "the first replica still leading")


@pytest.mark.parametrize("case, message", [
    ("no key", "needs --etcd-key as well"),
    ("readable key", "lets group or others read the key"),
])
def test_bad_etcd_client_files_are_named(sched: SchedulerProcess, tmp_path: Path, case: str, message: str) -> None:
    c = sched.base / "state" / "etcd-tls" / "client"
    url = f"https://127.0.0.1:{_etcd_port(sched)}"
    args = ["--etcd-cacert", str(c / "ca.pem"), "--etcd-cert", str(c / "cert.pem")]
    if case == "readable key":
        key = tmp_path / "key.pem"
        key.write_bytes((c / "key.pem").read_bytes())
        key.chmod(0o644)
        args += ["--etcd-key", str(key)]
    r = subprocess.run([*CLI, "scheduler", "--etcd", url, "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "s"),
                        "--metrics-addr", "", *args], capture_output=True, text=True, timeout=30, env=_env(), cwd=REPO)
    assert r.returncode != 0 and message in r.stderr + r.stdout, r.stderr + r.stdout


def test_tls_without_a_client_certificate_is_refused(sched: SchedulerProcess) -> None:
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(sched.base / "state" / "etcd-tls" / "ca" / "ca.pem"))
    ctx.check_hostname = False
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{_etcd_port(sched)}/health", timeout=5, context=ctx).read()


def test_an_insecure_scheduler_will_not_serve_a_tls_clusters_etcd(sched: SchedulerProcess) -> None:
    """--insecure on the state directory of a TLS scheduler: refused before its etcd (the cluster CA's
    key is in it) could start in plaintext."""
    r = subprocess.run([*CLI, "scheduler", "--insecure", "--listen", "127.0.0.1:0", "--metrics-addr", "",
                        "--state-dir", str(sched.base / "state")],
                       capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert r.returncode != 0 and "holds a TLS cluster (etcd-tls/)" in r.stderr, r.stderr
    assert sched.status().leader
