"""The pure parts of scheduler/migrate.py: live or cold (and why), the migration record's JSON, and
which tasks a rebalance moves. Tables of {name, input, want}."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from scheduler.migrate import MigrationError, Migrator, choose_mode
from scheduler.model import (
    Availability,
    Capabilities,
    DesiredState,
    Migration,
    Node,
    NodeStatus,
    Task,
    TaskState,
)

CPU = ("avx", "avx2", "fma", "sse4_2", "xsave")


def node(name: str, criu: bool = True, cgroup: int = 2, kernel: str = "6.18.44-fc-v782",
         cpu: tuple[str, ...] = CPU, **kw: Any) -> Node:
    return Node(name=name, capabilities=Capabilities(criu=criu, cgroup_version=cgroup, kernel=kernel,
                                                     cpu_features=cpu), **kw)


@pytest.mark.parametrize("name, source, target, asked, want", [
    ("both have criu: live", node("a"), node("b"), "", ("live", "")),
    ("asked cold", node("a"), node("b"), "cold", ("cold", "")),
    ("no criu on the source", node("a", criu=False), node("b"), "", ("cold", "a has no working CRIU")),
    ("no criu on the target", node("a"), node("b", criu=False), "", ("cold", "b has no working CRIU")),
    ("cgroup versions differ", node("a", cgroup=1), node("b"), "", ("cold", "cgroup v1 on a, v2 on b")),
    ("architectures differ", node("a"), node("b", arch="aarch64"), "", ("cold", "a is x86_64, b is aarch64")),
    ("newer kernel on the target: live", node("a", kernel="6.1.0-18-amd64"), node("b"), "", ("live", "")),
    ("same version, other build: live", node("a", kernel="6.18.44-debian"), node("b"), "", ("live", "")),
    ("older kernel on the target", node("a"), node("b", kernel="6.1.0-18-amd64"), "",
     ("cold", "b's kernel 6.1.0-18-amd64 is older than a's 6.18.44-fc-v782")),
    ("older patch level on the target", node("a", kernel="6.18.45"), node("b", kernel="6.18.9"), "",
     ("cold", "b's kernel 6.18.9 is older than a's 6.18.45")),
    ("kernel unknown (an old agent)", node("a"), node("b", kernel=""), "",
     ("cold", "b's kernel is unknown (its agent is too old to say)")),
    ("the target's CPU has more: live", node("a"), node("b", cpu=(*CPU, "avx512f")), "", ("live", "")),
    ("the target's CPU lacks features", node("a", cpu=(*CPU, "avx512f", "avx512bw")), node("b"), "",
     ("cold", "b's CPU lacks avx512bw, avx512f, which a's has")),
    ("many missing are counted", node("a", cpu=tuple(f"f{i:02}" for i in range(11))), node("b", cpu=()), "",
     ("cold", "b's CPU lacks f00, f01, f02, f03, f04, f05, f06, f07 and 3 more, which a's has")),
])
def test_choose_mode(name: str, source: Node, target: Node, asked: str, want: tuple[str, str]) -> None:
    assert choose_mode(source, target, asked) == want


def test_live_asked_where_it_cannot_be_is_an_error_saying_why() -> None:
    with pytest.raises(MigrationError, match="cannot migrate live: b has no working CRIU"):
        choose_mode(node("a"), node("b", criu=False), "live")
    with pytest.raises(MigrationError, match="cannot migrate live: b's CPU lacks avx512f, which a's has"):
        choose_mode(node("a", cpu=(*CPU, "avx512f")), node("b"), "live")


def test_capabilities_go_from_registration_to_etcd_and_back() -> None:
    """What the agent registers (kernel, arch, CPU features, lazy pages) reaches choose_mode's Node
    through the register request, the etcd JSON and the NodeInfo a CLI sees."""
    import json

    from protos import cluster_pb2 as pb
    from scheduler import codec
    from scheduler.convert import node_from_register, node_info
    from scheduler.store import _dumps

    req = pb.RegisterRequest(name="n1", address="10.0.0.1:7000", capabilities=pb.Capabilities(
        criu=True, cgroup_version=1, lazy_pages=True, kernel="6.18.44", arch="x86_64",
        cpu_features=["avx2", "avx"]))
    n = node_from_register(req)
    assert n.capabilities == Capabilities(criu=True, cgroup_version=1, lazy_pages=True, kernel="6.18.44",
                                          cpu_features=("avx", "avx2"))
    back = codec.decode_node(json.loads(_dumps(n)))
    assert back.capabilities == n.capabilities and back.arch == "x86_64"
    info = node_info(back)
    assert list(info.capabilities.cpu_features) == ["avx", "avx2"] and info.capabilities.kernel == "6.18.44"


def test_the_agent_advertises_this_hosts_kernel_and_cpu_features() -> None:
    from agent.checkpoint.host_features import cpu_features, probe

    here = probe()
    assert here.kernel == __import__("os").uname().release and here.arch
    if here.arch == "x86_64":
        assert "sse2" in here.cpu_features  # every x86_64 CPU has it
    two_cpus = "flags\t\t: fpu sse sse2 avx2 constant_tsc\n\nflags\t\t: fpu sse sse2 rep_good\n"
    assert cpu_features(two_cpus, "x86_64") == ("fpu", "sse", "sse2")  # common to all, instruction sets only
    assert cpu_features("Features\t: fp asimd aes\n", "aarch64") == ("aes", "asimd", "fp")


def test_the_record_round_trips_through_json() -> None:
    m = Migration(id="m1", task_id="t1", service="web", slot=2, source="a", target="b", mode="live",
                  phase="running", reason="", started_at=12.5, leader="r1")
    back = Migration.decode(m.encode(), 42)
    assert back.mod_revision == 42 and back.task_name == "web.2"
    back.mod_revision = 0
    assert back == m


def _migrator(nodes: list[Node], tasks: list[Task], migrating: tuple[str, ...] = ()) -> Migrator:
    view = SimpleNamespace(nodes={n.name: n for n in nodes}, tasks={t.id: t for t in tasks},
                           migrations={f"m{i}": SimpleNamespace(task_id=tid) for i, tid in enumerate(migrating)})
    return Migrator(view, None, None, None, replica="r")  # type: ignore[arg-type]


def _tasks(spec: dict[str, int], service: str = "web") -> list[Task]:
    out, slot = [], 0
    for n, count in spec.items():
        for _ in range(count):
            slot += 1
            out.append(Task(service=service, slot=slot, id=f"{service}{slot}", spec_version="v", node=n,
                            desired_state=DesiredState.RUNNING, state=TaskState.RUNNING))
    return out


@pytest.mark.parametrize("name, nodes, load, migrating, want", [
    ("balanced: nothing", ["a", "b"], {"a": 2, "b": 2}, (), {"a": 2, "b": 2}),
    ("a new empty node gets its share", ["a", "b", "c"], {"a": 3, "b": 3}, (), {"a": 2, "b": 2, "c": 2}),
    ("off by one is balanced", ["a", "b"], {"a": 3, "b": 2}, (), {"a": 3, "b": 2}),
    ("down and drained nodes take nothing", ["a", "b", "down", "drained"], {"a": 4, "b": 0}, (),
     {"a": 2, "b": 2}),
    ("a task being migrated is not moved again", ["a", "b"], {"a": 4, "b": 0}, ("web1", "web2", "web3"),
     {"a": 4, "b": 0}),
])
def test_rebalance_plan(name: str, nodes: list[str], load: dict[str, int], migrating: tuple[str, ...],
                        want: dict[str, int]) -> None:
    ns = [node(n, status=NodeStatus.DOWN if n == "down" else NodeStatus.READY,
               availability=Availability.DRAIN if n == "drained" else Availability.ACTIVE) for n in nodes]
    ts = _tasks(load)
    moves = _migrator(ns, ts, migrating).rebalance_plan()
    after = {n: 0 for n in load}
    where = {t.id: t.node for t in ts}
    for t, to in moves:
        assert to != t.node and t.id not in migrating
        where[t.id] = to
    for n in where.values():
        assert n is not None
        after[n] = after.get(n, 0) + 1
    assert {k: v for k, v in after.items() if v or k in want} == want
