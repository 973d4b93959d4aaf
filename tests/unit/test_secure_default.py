"""TLS is the default (Swarm's zero configuration): plaintext only with an explicit --insecure, which
warns; the flags that contradict it are refused before anything starts; `cluster up` hands the join
token to agents in their environment, never in an argv `ps` would show."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deploy import bootstrap as b
from deploy.cli import main
from deploy.cli_cluster import secure_by_default

TOKEN = "DYTKN-1-" + "a" * 50 + "-" + "b" * 25


def test_tls_unless_insecure_and_insecure_warns(capsys: pytest.CaptureFixture[str]) -> None:
    assert secure_by_default(False, False, "x") is True
    assert secure_by_default(True, False, "x") is True
    assert capsys.readouterr().err == ""
    assert secure_by_default(False, True, "the port is open") is False
    assert capsys.readouterr().err == "WARNING: --insecure: the port is open.\n"
    with pytest.raises(click.UsageError, match="--tls and --insecure: give one of them"):
        secure_by_default(True, True, "x")


@pytest.mark.parametrize("argv, message", [
    (["scheduler", "--tls", "--insecure"], "--tls and --insecure: give one of them"),
    (["up", "--tls", "--insecure"], "--tls and --insecure: give one of them"),
    (["agent", "--join", "127.0.0.1:9", "--token", TOKEN, "--insecure"], "--token and --insecure"),
])
def test_contradicting_flags_are_refused_before_anything_starts(argv: list[str], message: str) -> None:
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2 and message in r.output, r.output


def _inventory(tmp: Path, tls: bool, token: str = "") -> b.Inventory:
    f = tmp / "hosts.yaml"
    f.write_text("hosts:\n  - {name: s, address: 10.0.0.1, role: scheduler}\n  - {name: a, address: 10.0.0.2}\n")
    inv = b.load_inventory(f)
    inv.tls, inv.join_token = tls, token
    return inv


def test_cluster_up_says_which_it_is_and_keeps_the_token_out_of_argv(tmp_path: Path) -> None:
    secure = _inventory(tmp_path, True, TOKEN)
    s, a = secure.hosts
    assert "--tls" in b.scheduler_argv(secure, s) and "--insecure" not in b.scheduler_argv(secure, s)
    argv = b.agent_argv(secure, a)
    assert "--insecure" not in argv and "--token" not in argv and not any(TOKEN in x for x in argv), argv
    assert b.agent_env(secure) == {"DOCKYARD_JOIN_TOKEN": TOKEN}
    plain = _inventory(tmp_path, False)
    assert "--insecure" in b.scheduler_argv(plain, s) and "--tls" not in b.scheduler_argv(plain, s)
    assert "--insecure" in b.agent_argv(plain, a) and b.agent_env(plain) == {}


def test_the_remote_helper_reads_its_request_from_stdin(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO('{"op": "no-such-op"}'))
    assert b.remote_main(["-"]) == 1
    assert "no-such-op" in capsys.readouterr().out


def test_our_three_member_etcd_runs_peer_tls_and_client_certificates(tmp_path: Path) -> None:
    f = tmp_path / "hosts.yaml"
    f.write_text("hosts:\n  - {name: s, address: 10.0.0.1, role: scheduler}\n  - {name: a, address: 10.0.0.2}\n"
                 "  - {name: c, address: 10.0.0.3}\n")
    inv = b.load_inventory(f)
    inv.tls = True
    assert inv.etcd_urls == "https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379"
    argv = b.etcd_argv(inv, inv.hosts[1])
    flag = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert flag["--listen-peer-urls"] == "https://10.0.0.2:2380"
    assert flag["--initial-cluster"] == "s=https://10.0.0.1:2380,a=https://10.0.0.2:2380,c=https://10.0.0.3:2380"
    member = "/var/lib/dockyard/etcd-tls/member"
    assert flag["--cert-file"] == flag["--peer-cert-file"] == f"{member}/cert.pem"
    assert flag["--trusted-ca-file"] == flag["--peer-trusted-ca-file"] == f"{member}/ca.pem"
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv
    sched = b.scheduler_argv(inv, inv.hosts[0])
    assert sched[sched.index("--etcd-cert") + 1] == "/var/lib/dockyard/etcd-tls/client/cert.pem"
    assert sched[sched.index("--etcd-server-name") + 1] == "etcd.dockyard"
    assert b.readiness(inv, inv.hosts[1], "etcd") == {"etcd": "https://10.0.0.2:2379", "etcd_tls": member}
