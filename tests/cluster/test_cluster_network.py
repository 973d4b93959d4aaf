"""Cluster networks through the real control plane: a real etcd, a scheduler process and the
`dockyard` CLI (no agent: the records, addresses and refusals are the scheduler's alone).
`network create|ls|inspect|rm`, stack networks created by deploy, one address per task from a
create-if-absent transaction, an exhausted pool keeping tasks pending with the reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_harness import SchedulerProcess, cli, tasks, wait_for
from tests.etcd_server import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


class Env:
    def __init__(self, etcd: EtcdServer, sched: SchedulerProcess, tmp: Path) -> None:
        self.etcd, self.sched, self.tmp = etcd, sched, tmp

    def run(self, *args: str) -> tuple[int, str, str]:
        r = cli(self.sched.address, *args, timeout=60)
        return r.returncode, r.stdout, r.stderr

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"dockyard {' '.join(args)}: {out}\n{err}"
        return out

    def inspect(self, name: str) -> dict[str, object]:
        got: list[dict[str, object]] = json.loads(self.ok("network", "inspect", name))
        return got[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("clnet")
    etcd = EtcdServer.start()
    sched = SchedulerProcess(base / "sched", etcd=etcd.endpoint, metrics=False)
    try:
        sched.start()
        yield Env(etcd, sched, base)
    finally:
        sched.stop()
        etcd.stop()


def test_create_ls_inspect_rm_and_bad_input(env: Env) -> None:
    assert env.ok("network", "create", "-d", "overlay", "appnet").strip() == "appnet"
    env.ok("network", "create", "--subnet", "10.99.0.0/24", "-o", "mtu=1400", "--label", "tier=db", "other")
    a, o = env.inspect("appnet"), env.inspect("other")
    assert (a["subnet"], a["vni"], a["mtu"], a["gateway"], a["driver"]) == (
        "10.240.0.0/24", 4096, 1450, "10.240.0.1", "overlay")
    assert (o["subnet"], o["vni"], o["mtu"], o["labels"]) == ("10.99.0.0/24", 4097, 1400, {"tier": "db"})
    ls = env.ok("network", "ls")
    assert ls.splitlines()[0].split() == ["NAME", "DRIVER", "SCOPE", "SUBNET", "VNI", "ENDPOINTS", "SERVICES"]
    rows = [ln.split() for ln in ls.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["bridge", "bridge", "local"], ["host", "host", "local"],
                                     ["none", "null", "local"], ["appnet", "overlay", "swarm"],
                                     ["other", "overlay", "swarm"]]
    assert rows[3][3:6] == ["10.240.0.0/24", "4096", "0"]
    assert env.ok("network", "ls", "-q").split() == ["bridge", "host", "none", "appnet", "other"]
    assert [n["Name"] for n in json.loads(env.ok("network", "ls", "--format", "json"))
            if n["Scope"] == "swarm"] == ["appnet", "other"]
    for args, message in [
        (("appnet",), "network appnet already exists"),
        (("--subnet", "10.99.0.128/25", "x"), "overlaps 10.99.0.0/24 of network other"),
        (("--subnet", "10.1.2.0/33", "x"), "subnet '10.1.2.0/33'"),
        (("-d", "macvlan", "x"), "driver 'macvlan'"),   # (-d bridge: the agent's own networks)
        (("bad/name",), "network name 'bad/name'"),
        (("--attachable", "x"), "--attachable: plain containers cannot join cluster networks yet"),
        (("-o", "foo=1", "x"), "the only driver option is mtu=N"),
    ]:
        code, _, err = env.run("network", "create", *args)
        assert code != 0 and message in err, (args, err)
    assert env.ok("network", "ls", "-q").split()[3:] == ["appnet", "other"]
    env.ok("network", "rm", "other")
    code, _, err = env.run("network", "inspect", "other")
    assert code != 0 and "network other not found" in err
    code, _, err = env.run("network", "rm", "other")
    assert code != 0 and "network other not found" in err


def test_tasks_get_addresses_and_an_exhausted_pool_stays_pending(env: Env) -> None:
    f = env.tmp / "st.yaml"
    f.write_text("""
services:
  web:
    image: busybox:latest
    networks:
      front:
        aliases: [www]
    deploy: {replicas: 7}
networks:
  front:
    ipam: {config: [{subnet: 10.98.0.0/29}]}
""")
    out = env.ok("deploy", "-f", str(f), "--name", "st")
    assert "Creating network st_front" in out and "Creating service st_web" in out
    net = env.inspect("st_front")
    assert net["subnet"] == "10.98.0.0/29" and net["services"] == ["st_web"]

    # /29: .2 .. .6 (.1 is the gateway); the service's VIP (made with the service, before its tasks)
    # takes the highest, .6: 4 tasks hold an address, 3 wait for one
    def allocated(vips: bool = False) -> list[tuple[str, str]]:
        return sorted((v.decode(), k.decode().rsplit("/", 1)[-1])
                      for k, v in env.etcd.range("/dockyard/net/ipam/st_front/")
                      if vips or not json.loads(v)["task_id"].startswith("vip:"))

    held = wait_for(lambda: len(allocated()) == 4 and allocated(), 20, "4 addresses")
    assert sorted(ip for _, ip in held) == [f"10.98.0.{i}" for i in range(2, 6)]
    assert [ip for v, ip in allocated(vips=True) if "vip:" in v] == ["10.98.0.6"]
    owners = {json.loads(v)["task_id"] for v, _ in held}
    ts = tasks(env.sched, "st_web")
    assert len(ts) == 7 and owners <= {t.id for t in ts}
    waiting = wait_for(lambda: [t for t in tasks(env.sched, "st_web") if "no free address" in t.error], 20,
                       "tasks waiting for an address")
    assert len(waiting) == 3 and {t.id for t in waiting}.isdisjoint(owners)
    assert all(t.error == "pending: no free address in st_front" and t.state == "pending" for t in waiting)
    assert "no free address in st_front" in env.ok("service", "ps", "st_web")

    # in use: refused, nothing removed
    code, _, err = env.run("network", "rm", "st_front")
    assert code != 0 and "in use by service st_web" in err
    # scale down to 3: the scaled-away slots' addresses go to quarantine, nobody gets them yet
    env.ok("service", "scale", "st_web=3")
    wait_for(lambda: len(allocated()) == 3, 20, "3 addresses held")
    resting = {k.decode().rsplit("/", 1)[-1] for k, _ in env.etcd.range("/dockyard/net/quarantine/st_front/")}
    assert len(resting) == 1
    assert not [t for t in tasks(env.sched, "st_web") if "no free address" in t.error and t.slot <= 3]

    env.ok("stack-rm", "st")   # (the stack's own networks go with it, as Swarm's)
    wait_for(lambda: not allocated(vips=True), 20, "every address freed, the VIP's too")
    wait_for(lambda: "st_front" not in env.ok("network", "ls", "-q").split(), 20, "the stack's network removed")
    assert not env.etcd.range("/dockyard/net/quarantine/st_front/")


def test_deploy_refuses_an_unknown_external_network(env: Env) -> None:
    f = env.tmp / "ext.yaml"
    f.write_text("""
services:
  web: {image: busybox:latest, networks: [shared]}
networks:
  shared: {external: true, name: nosuchnet}
""")
    code, _, err = env.run("deploy", "-f", str(f), "--name", "ext")
    assert code != 0 and "network nosuchnet is declared as external but does not exist" in err
    assert "ext_web" not in env.ok("service", "ls")
