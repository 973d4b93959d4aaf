"""Bootstrap without hosts: the inventory's checks (file:line, every problem), the bundle, the
remote supervisor run locally, and vagrant validate; the SSH runs are in tests/cluster/test_bootstrap.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy import bootstrap as b
from tests.agent_harness import CLI, REPO, _env
from tests.multihost import alive

GOOD = """\
defaults:
  user: root
  port: 22
hosts:
  - name: n1
    address: 10.0.0.1
    role: scheduler
    labels: {zone: a, ssd: true, rack: 7}
  - address: 10.0.0.2
"""


def parse(text: str, tmp: Path) -> b.Inventory:
    f = tmp / "hosts.yaml"
    f.write_text(text)
    return b.load_inventory(f)


def test_inventory_good(tmp_path: Path) -> None:
    inv = parse(GOOD, tmp_path)
    assert [h.name for h in inv.hosts] == ["n1", "10.0.0.2"]
    n1, n2 = inv.hosts
    assert (n1.role, n2.role) == ("scheduler", "agent")
    assert n1.labels == {"zone": "a", "ssd": "true", "rack": "7"}
    assert (n1.port, n1.user, n1.sudo, n1.advertise) == (22, "root", False, "10.0.0.1")
    assert n1.python == "/opt/dockyard/.venv/bin/python"
    assert inv.join == "10.0.0.1:2377"
    argv = b.agent_argv(inv, n2)
    assert argv[argv.index("--join") + 1] == "10.0.0.1:2377" and argv[argv.index("--name") + 1] == "10.0.0.2"


def test_three_hosts_or_more_run_a_three_member_etcd(tmp_path: Path) -> None:
    inv = parse("hosts:\n  - {name: a, address: 10.0.0.1}\n  - {name: s1, address: 10.0.0.2, role: scheduler}\n"
                "  - {name: s2, address: 10.0.0.3, role: scheduler}\n  - {name: c, address: 10.0.0.4}\n"
                "  - {name: d, address: 10.0.0.5}\n", tmp_path)  # two schedulers, no etcd: ours
    assert [h.name for h in inv.etcd_members] == ["s1", "s2", "a"]  # the schedulers' hosts first
    urls = "http://10.0.0.2:2379,http://10.0.0.3:2379,http://10.0.0.1:2379"
    assert inv.etcd_urls == urls
    sched = b.scheduler_argv(inv, inv.hosts[1])
    assert sched[sched.index("--etcd") + 1] == urls  # every replica is given every member
    argv = b.etcd_argv(inv, inv.hosts[0])
    flag = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert flag["--name"] == "a" and flag["--initial-cluster-state"] == "new"
    assert flag["--initial-cluster"] == "s1=http://10.0.0.2:2380,s2=http://10.0.0.3:2380,a=http://10.0.0.1:2380"
    assert flag["--listen-client-urls"] == flag["--advertise-client-urls"] == "http://10.0.0.1:2379"
    assert flag["--listen-peer-urls"] == flag["--initial-advertise-peer-urls"] == "http://10.0.0.1:2380"
    assert flag["--data-dir"] == "/var/lib/dockyard/etcd"
    assert flag["--initial-cluster-token"] == b.etcd_argv(inv, inv.hosts[2])[argv.index("--initial-cluster-token") + 1]
    assert b.readiness(inv, inv.hosts[0], "etcd") == {"etcd": "http://10.0.0.1:2379"}
    # two hosts: no members of ours (one scheduler starts its own etcd); the user's etcd: theirs
    assert not parse("hosts:\n  - {address: a, role: scheduler}\n  - {address: b}\n", tmp_path).etcd_members
    theirs = parse("etcd: http://e:2379\nhosts:\n  - {address: a, role: scheduler}\n  - {address: b}\n"
                   "  - {address: c}\n", tmp_path)
    assert not theirs.etcd_members and theirs.etcd_urls == "http://e:2379"


def test_inventory_defaults_and_keys(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("not checked here\n")
    inv = parse("defaults: {user: vagrant, key: id, known_hosts: false, project_dir: /srv/dy}\n"
                "hosts:\n  - {address: h1, role: scheduler, user: admin, sudo: false}\n  - {address: h2}\n", tmp_path)
    h1, h2 = inv.hosts
    assert h1.key == str(tmp_path / "id") and not h1.verify_host_key
    assert (h1.user, h1.sudo) == ("admin", False)
    assert (h2.user, h2.sudo, h2.python) == ("vagrant", True, "/srv/dy/.venv/bin/python")


BAD: list[tuple[str, str, str]] = [
    # (name, file, a message the error must contain)
    ("empty", "", "hosts.yaml:1: (document): must be a mapping"),
    ("not yaml", "hosts:\n  - address: a\n   role: scheduler\n", "hosts.yaml:3:4: not valid YAML"),
    ("no hosts", "defaults: {user: root}\n", "hosts.yaml:1: hosts: must be a non-empty list"),
    ("hosts not a list", "hosts: {a: 1}\n", "hosts.yaml:1: hosts: must be a non-empty list"),
    ("unknown top field", "hostz: []\nhosts: [{address: a, role: scheduler}]\n",
     "hosts.yaml:1: hostz: unknown field; known: hosts, defaults, etcd"),
    ("missing address", "hosts:\n  - role: scheduler\n    name: n1\n",
     "hosts.yaml:2: hosts[0]: missing field `address`"),
    ("host not a mapping", "hosts:\n  - 10.0.0.1\n", "hosts.yaml:2: hosts[0]: must be a mapping"),
    ("bad port", "hosts:\n  - address: a\n    role: scheduler\n    port: 70000\n",
     "hosts.yaml:4: hosts[0].port: must be a port number 1..65535, got 70000"),
    ("port text", "hosts:\n  - address: a\n    port: ssh\n    role: scheduler\n",
     "hosts.yaml:3: hosts[0].port: must be a port number 1..65535, got 'ssh'"),
    ("bad role", "hosts:\n  - address: a\n    role: master\n",
     "hosts.yaml:3: hosts[0].role: must be one of scheduler, agent, got 'master'"),
    ("typo field", "hosts:\n  - address: a\n    role: scheduler\n    lables: {a: b}\n",
     "hosts.yaml:4: hosts[0].lables: unknown field"),
    ("name in defaults", "defaults:\n  name: x\nhosts: [{address: a, role: scheduler}]\n",
     "hosts.yaml:2: defaults.name: unknown field (only per host)"),
    ("missing key file", "defaults:\n  key: nope/id_ed25519\nhosts: [{address: a, role: scheduler}]\n",
     "hosts.yaml:2: defaults.key: no such file:"),
    ("labels a list", "hosts:\n  - address: a\n    role: scheduler\n    labels: [a, b]\n",
     "hosts.yaml:4: hosts[0].labels: must be a mapping of KEY: VALUE"),
    ("label value a mapping", "hosts:\n  - address: a\n    role: scheduler\n    labels:\n      zone: {x: 1}\n",
     "hosts.yaml:5: hosts[0].labels.zone: label value must be text or a number"),
    ("bad label key", "hosts:\n  - address: a\n    role: scheduler\n    labels: {'a b': c}\n",
     "hosts.yaml:4: hosts[0].labels.a b: label key 'a b'"),
    ("relative state dir", "hosts:\n  - address: a\n    role: scheduler\n    state_dir: var/dy\n",
     "hosts.yaml:4: hosts[0].state_dir: must be an absolute path on the host, got 'var/dy'"),
    ("sudo not bool", "hosts:\n  - address: a\n    role: scheduler\n    sudo: yes please\n",
     "hosts.yaml:4: hosts[0].sudo: must be true or false"),
    ("agent args not a list", "hosts:\n  - address: a\n    role: scheduler\n    agent_args: --debug\n",
     "hosts.yaml:4: hosts[0].agent_args: must be a list of command-line arguments"),
    ("duplicate name", "hosts:\n  - {name: n, address: a, role: scheduler}\n  - {name: n, address: b}\n",
     "hosts.yaml:3: hosts[1].name: 'n' is also the name of hosts[0]"),
    ("duplicate address", "hosts:\n  - {address: a, role: scheduler}\n  - {name: two, address: a}\n",
     "hosts.yaml:3: hosts[1].address: a:22 is also hosts[0]'s"),
    ("duplicate field", "hosts:\n  - address: a\n    address: b\n", "hosts.yaml:3: hosts[0].address: given twice"),
    ("no scheduler", "hosts:\n  - address: a\n  - address: b\n",
     "hosts.yaml:1: hosts: no host has `role: scheduler`"),
    ("two schedulers, no etcd", "hosts:\n  - {address: a, role: scheduler}\n  - {address: b, role: scheduler}\n",
     "hosts.yaml:3: hosts[1].role: 2 hosts have `role: scheduler`: replicas share one etcd"),
    ("bad etcd", "etcd: 10.0.0.1:2379\nhosts:\n  - {address: a, role: scheduler}\n",
     "hosts.yaml:1: etcd: must be etcd client URLs"),
    ("address with space", "hosts:\n  - address: 'a b'\n    role: scheduler\n",
     "hosts.yaml:2: hosts[0].address: 'a b' has spaces in it"),
]


@pytest.mark.parametrize(("text", "want"), [(t, w) for _, t, w in BAD], ids=[n for n, _, _ in BAD])
def test_inventory_bad(tmp_path: Path, text: str, want: str) -> None:
    with pytest.raises(b.InventoryError) as e:
        parse(text, tmp_path)
    assert want in str(e.value), str(e.value)
    assert str(e.value).startswith(str(tmp_path / "hosts.yaml")), str(e.value)


def test_inventory_reports_every_problem(tmp_path: Path) -> None:
    with pytest.raises(b.InventoryError) as e:
        parse("hosts:\n  - address: a\n    port: 0\n  - address: b\n    role: boss\n", tmp_path)
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in e.value.problems] == ["3", "5"], e.value.problems


def test_inventory_unreadable(tmp_path: Path) -> None:
    with pytest.raises(b.InventoryError, match="cannot read the inventory"):
        b.load_inventory(tmp_path / "missing.yaml")


def test_cli_bad_inventory_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "hosts.yaml"
    f.write_text("hosts:\n  - address: a\n    role: master\n")
    r = subprocess.run([*CLI, "cluster", "up", "-i", str(f)], capture_output=True, text=True, env=_env(), cwd=REPO,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"{f}:3: hosts[0].role: must be one of scheduler, agent" in r.stderr


def test_bundle_is_reproducible_and_complete() -> None:
    one, two = b.make_bundle(), b.make_bundle()
    assert one.sha256 == two.sha256 and one.data == two.data
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(one.data), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {"deploy/bootstrap.py", "deploy/install.sh", "protos/cluster_pb2.py", b.MANIFEST} <= names
    assert not any(n.startswith((".venv/", ".git/")) for n in names)


def test_remote_start_stop_status(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    req = {"op": "start", "name": "sleeper", "argv": ["sleep", "300"], "cwd": str(tmp_path), "state_dir": state}
    first = b.remote_start(req)
    try:
        assert first["state"] == "running" and not first["already"]
        again = b.remote_start(req)
        assert again["already"] and again["pid"] == first["pid"]
        st = b.remote_status({"state_dir": state})
        assert st["sleeper"]["running"] and st["sleeper"]["pid"] == first["pid"]
        assert st["sleeper"]["uptime"] is not None and st["sleeper"]["uptime"] >= 0
        # A pid file whose process is gone (or a pid reused by another) is never signalled.
        pidfile = Path(state, "run", "other.pid")
        pidfile.write_text(json.dumps({"pid": os.getpid(), "start_time": 1}))
        assert b.remote_stop({"state_dir": state, "names": ["other"]})["other"]["state"] == "not running"
        assert alive(os.getpid())
        out = b.remote_stop({"state_dir": state, "names": ["sleeper"]})
        assert out["sleeper"]["state"] == "stopped"
        assert not alive(first["pid"])
        assert b.remote_status({"state_dir": state}) == {}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first["pid"], 9)


@pytest.mark.slow
def test_remote_start_failure_is_reported_and_cleaned(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    out = b.remote_start({"op": "start", "name": "bad", "argv": ["sh", "-c", "echo boom >&2; exit 3"],
                          "cwd": str(tmp_path), "state_dir": state, "ready": {"scheduler": "127.0.0.1:1"},
                          "timeout": 10})
    assert "exited with code 3" in out["error"] and "boom" in out["error"]
    assert not Path(state, "run", "bad.pid").exists()


def test_up_local_reads_the_inventory_on_the_host(tmp_path: Path) -> None:
    # On a host, the SSH side's key files are absent: not an error there (check_files=False).
    f = tmp_path / "hosts.yaml"
    f.write_text(GOOD.replace("  port: 22\n", "  port: 22\n  key: .vagrant/machines/n1/libvirt/private_key\n"))
    with pytest.raises(b.InventoryError, match="no such file"):
        b.load_inventory(f)
    assert b.load_inventory(f, check_files=False).hosts[0].key == ".vagrant/machines/n1/libvirt/private_key"
    out = b.up_local({"inventory": str(f), "host": "nope"})
    assert out["error"].endswith("no host named 'nope'")


@pytest.mark.slow
def test_vagrant_validate(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (apt-get install --no-install-recommends vagrant)")
    work = tmp_path / "vagrant"
    shutil.copytree(REPO / "vagrant", work)
    for n in ("1", "3"):
        r = subprocess.run(["vagrant", "validate"], cwd=work, capture_output=True, text=True, timeout=180,
                           env={**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "DOCKYARD_NODES": n,
                                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DISABLE_VBOXSYMLINKCREATE": "1"})
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
        assert "Vagrantfile validated successfully" in r.stdout
    bad = subprocess.run(["vagrant", "validate"], cwd=work, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "DOCKYARD_NODES": "0",
                              "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert bad.returncode != 0 and "DOCKYARD_NODES" in bad.stdout + bad.stderr
    sh = subprocess.run(["bash", "-n", str(REPO / "vagrant" / "build-box.sh")], capture_output=True, text=True)
    assert sh.returncode == 0, sh.stderr


@pytest.mark.parametrize(("extra", "want"), [
    ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nesting depth"),  # libyaml's bound comes first in a flow
    ("x:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(100)), "nested more than 64 levels deep"),
    ("x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10)), "once aliases are expanded"),
    ("x: &loop [*loop]\n", "a cycle"),
], ids=["deep flow", "deep block", "billion laughs", "cycle"])
def test_hostile_inventory_is_refused_quickly(tmp_path: Path, extra: str, want: str) -> None:
    import time

    t = time.monotonic()
    with pytest.raises(b.InventoryError) as e:
        parse(GOOD + extra, tmp_path)
    assert time.monotonic() - t < 20.0  # refused in ~1 ms; a hang is what this catches
    assert want in str(e.value) and str(e.value).startswith(str(tmp_path / "hosts.yaml") + ":")
