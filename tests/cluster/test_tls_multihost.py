"""A --tls cluster on hosts made of network namespaces (tests/multihost.py): a scheduler --tls in the
root namespace on the cluster bridge, agents on two hosts joined by token, a deploy placed over
mutual TLS, and a host-loss reschedule with everything on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from protos import cluster_pb2 as cpb
from tests.cluster_harness import SchedulerProcess, cli, free_port_pair, running, wait_for
from tests.etcd_server import EtcdServer
from tests.multihost import cluster, join, multihost_session_check_fixture  # noqa: F401

pytestmark = [pytest.mark.multinode, pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

WEB = """
services:
  web:
    image: busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/"]
    deploy:
      replicas: 4
      restart_policy: {condition: any, delay: 1s}
"""


def test_deploy_and_host_loss_over_mutual_tls(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path,
                                              multihost_session_check: None) -> None:
    tmp_path = tmp_path_factory.mktemp("tm")  # short: container sockets live under it (AF_UNIX 108 bytes)
    with cluster(2, tmp_path / "c", busybox_tar_path) as c:
        etcd = EtcdServer.start()
        s = SchedulerProcess(tmp_path / "s", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port_pair()}", tls=True)
        try:
            s.start()

            def ok(*args: str) -> str:
                r = cli(s.address, *args, cert_path=str(s.cert_path))
                assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
                return r.stdout

            token = ok("cluster", "join-token", "worker", "-q").strip()
            t0 = time.monotonic()
            for h in c:
                join(h, s.address, token)
            wait_for(lambda: len([n for n in s.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                  if n.status == "ready"]) == 2, 30, "2 nodes ready")
            print(f"\n2 agents restarted and joined by token over TLS: {time.monotonic() - t0:.2f} s")
            for h in c:
                assert (h.root / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
            stack = tmp_path / "m.yaml"
            stack.write_text(WEB)
            ok("deploy", "-f", str(stack), "--name", "m")
            wait_for(lambda: len(running(s, "m_web")) == 4, 40, "4 running")
            assert {t.node for t in running(s, "m_web")} == {"host1", "host2"}
            t0 = time.monotonic()
            c[2].kill()
            wait_for(lambda: len([t for t in running(s, "m_web") if t.node == "host1"]) == 4, 30,
                     "4 running on host1", every=0.05)
            print(f"host lost -> its tasks running elsewhere, over TLS: {time.monotonic() - t0:.2f} s")
        finally:
            s.stop()
            etcd.stop()
