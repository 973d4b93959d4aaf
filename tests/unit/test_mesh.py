"""The routing mesh and endpoint modes, the pure parts: which addresses the allocator hands out on
the ingress network (tasks of meshed services, every node), port conflicts between services,
dnsrr (no VIP), the map an agent turns into its mesh plan, and the iptables rules it writes."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from agent.netsync import desired_of
from agent.runtime.network.mesh import Chains, MeshPort, chain_rules
from deploy.stack import StackError, load_stack
from protos import cluster_pb2 as pb
from scheduler import network as netmod
from scheduler.convert import network_info
from scheduler.model import NetworkAttachment, PortSpec, Service, ServiceSpec, Task, TaskState
from scheduler.network import Allocation, Assign, NetworkError, Release, check_endpoint, plan_addresses

INGRESS = replace(netmod.ingress_network([]), vni=4099)
APP = netmod.new_network("appnet", [INGRESS])


def spec(name: str = "web", *ports: PortSpec, networks: tuple[str, ...] = (), mode: str = "vip") -> ServiceSpec:
    return ServiceSpec(name, "busybox", replicas=2, ports=ports,
                       networks=tuple(NetworkAttachment(n) for n in networks), endpoint_mode=mode)


def mesh(pub: int, target: int = 80) -> PortSpec:
    return PortSpec(target=target, published=pub, mode="ingress")


def host(pub: int, target: int = 80) -> PortSpec:
    return PortSpec(target=target, published=pub, mode="host")


def task(tid: str, slot: int, s: ServiceSpec, node: str = "n1") -> Task:
    return Task(s.name, slot, tid, s.digest, node=node, state=TaskState.RUNNING)


class World:
    def __init__(self, *specs: ServiceSpec, nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        self.services = {s.name: Service(s) for s in specs}
        self.tasks: dict[str, Task] = {}
        self.allocs: dict[tuple[str, str], Allocation] = {}
        self.nodes = nodes
        self.rev = itertools.count(10)

    def write(self) -> list[netmod.AddressOp]:
        ops = plan_addresses({"ingress": INGRESS, "appnet": APP}, self.allocs.values(), (), self.tasks,
                             self.services, 0.0, nodes=self.nodes)
        for op in ops:
            if isinstance(op, Assign):
                a = op.allocation
                self.allocs[a.network, a.ip] = replace(a, mod_revision=next(self.rev))
            elif isinstance(op, Release):
                del self.allocs[op.allocation.network, op.allocation.ip]
        return ops

    def owners(self, network: str) -> set[str]:
        return {a.task_id for a in self.allocs.values() if a.network == network}


def test_an_ingress_port_gives_each_task_and_every_node_an_ingress_address_and_no_vip_there() -> None:
    s = spec("web", mesh(8080))
    w = World(s)
    w.tasks = {"t1": task("t1", 1, s), "t2": task("t2", 2, s, "n2")}
    w.write()
    assert w.owners("ingress") == {"t1", "t2", "node:n1", "node:n2", "node:n3"}
    assert not w.owners("appnet")
    assert w.write() == []  # idempotent
    # the service gone (its tasks too): every ingress address is freed, the nodes' included
    w.services.clear()
    w.tasks.clear()
    freed = w.write()
    assert {op.allocation.task_id for op in freed if isinstance(op, Release)} == {
        "t1", "t2", "node:n1", "node:n2", "node:n3"}
    assert not w.owners("ingress")


def test_a_removed_node_loses_its_ingress_address_and_a_new_one_gets_one() -> None:
    s = spec("web", mesh(8080))
    w = World(s)
    w.write()
    w.nodes = ("n1", "n4")
    w.write()
    assert w.owners("ingress") == {"node:n1", "node:n4"}


def test_host_mode_and_unpublished_ports_do_not_join_the_mesh() -> None:
    s = spec("web", host(8080), PortSpec(target=81))
    assert netmod.attached(s) == () and s.host_ports == ((8080, "tcp"),) and not s.mesh_ports
    m = spec("api", mesh(9090), networks=("appnet",))
    assert netmod.attached(m) == ("appnet", "ingress") and m.host_ports == ()


def test_dnsrr_has_no_virtual_ip_and_switching_to_it_frees_the_vip() -> None:
    s = spec("web", networks=("appnet",))
    w = World(s)
    w.tasks = {"t1": task("t1", 1, s)}
    w.write()
    assert w.owners("appnet") == {"t1", "vip:web"}
    w.services["web"] = Service(replace(s, endpoint_mode="dnsrr"))
    ops = w.write()
    assert [op.allocation.task_id for op in ops if isinstance(op, Release)] == ["vip:web"]
    assert w.owners("appnet") == {"t1"}
    assert replace(s, endpoint_mode="dnsrr").digest == s.digest  # no task restarts for it


@pytest.mark.parametrize(("new", "message"), [
    (spec("api", mesh(8080)), "port 8080/tcp is already published by service web (ingress mode)"),
    (spec("api", host(8080)), "port 8080/tcp is already published by service web (ingress mode)"),
    (spec("api", mesh(8080), mode="dnsrr"), "published in ingress mode, which needs endpoint_mode vip"),
    (spec("api", networks=("ingress",)), "network ingress is the routing mesh's"),
    (spec("api", mode="anycast"), "endpoint_mode 'anycast': vip or dnsrr"),
])
def test_conflicting_endpoints_are_refused_with_the_reason(new: ServiceSpec, message: str) -> None:
    with pytest.raises(NetworkError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_endpoint(new, [spec("web", mesh(8080))])


def test_compatible_endpoints_pass() -> None:
    check_endpoint(spec("api", host(8080)), [spec("web", host(8080))])  # host mode: placement keeps them apart
    check_endpoint(spec("api", mesh(8080, 80)), [spec("web", mesh(8081)), spec("api", mesh(8080))])  # itself
    check_endpoint(spec("api", PortSpec(target=80, published=8080, protocol="udp", mode="ingress")),
                   [spec("web", mesh(8080))])


def test_the_ingress_network_takes_another_subnet_when_its_own_is_used() -> None:
    taken = netmod.new_network("big", [], subnet="10.255.0.0/20")
    net = netmod.ingress_network([taken])
    assert net.ingress and net.name == "ingress" and not net.network.overlaps(taken.network)
    assert netmod.ingress_network([]).subnet == "10.255.0.0/16"
    assert netmod.Network.decode(net.encode()).ingress


def _map(node: str) -> pb.NetworkMap:
    s = spec("web", mesh(8080), PortSpec(target=53, published=5353, protocol="udp", mode="ingress"))
    services = {"web": Service(s)}
    tasks = {"t1": task("t1", 1, s, "n1"), "t2": task("t2", 2, s, "n2").with_(state=TaskState.STARTING)}
    allocs = [Allocation("ingress", "10.255.0.2", "t1", "web", 1), Allocation("ingress", "10.255.0.3", "t2", "web", 2),
              Allocation("ingress", "10.255.0.4", "node:n1", "", 0), Allocation("ingress", "10.255.0.5", "node:n3", "", 0)]
    eps = netmod.endpoints({"ingress": INGRESS}, allocs, tasks, {"n1": "10.0.0.1:7070", "n3": "10.0.0.3:7070",
                                                                 "n2": "10.0.0.2:7070"}, services)
    return pb.NetworkMap(revision=3, networks=[network_info(INGRESS, ["web"], eps, [],
                                                            netmod.mesh_ports(services))])


def test_an_agent_meshes_to_ready_tasks_from_its_own_address() -> None:
    d = desired_of(_map("n3"), "n3")
    assert d.mesh is not None and (d.mesh.address, d.mesh.prefixlen) == ("10.255.0.5", 16)
    assert d.mesh.ports == (MeshPort("udp", 5353, ("10.255.0.2:53",)), MeshPort("tcp", 8080, ("10.255.0.2:80",)))
    # its own address is local; the other node's address and both tasks are peers
    assert d.local["ingress"] == {"10.255.0.5"}
    assert {p.ip: p.vtep for p in d.peers["ingress"]} == {"10.255.0.2": "10.0.0.1", "10.255.0.3": "10.0.0.2",
                                                         "10.255.0.4": "10.0.0.1"}
    assert desired_of(_map("n2"), "n2").mesh is None  # no address of its own yet: no rules


def test_the_rules_spread_each_port_and_snat_only_what_was_dnatted() -> None:
    c = Chains.of("dyh1c1")
    rules = chain_rules(c, "doabc", "10.255.0.5", [MeshPort("tcp", 8080, ("10.255.0.2:80", "10.255.0.3:80",
                                                                           "10.255.0.7:80")),
                                                    MeshPort("udp", 53, ())])
    nat = rules["nat"]
    assert nat[:2] == [f":{c.dnat} - [0:0]", f":{c.snat} - [0:0]"]
    dnat = [r for r in nat if "DNAT --to" in r]
    assert [r.split()[-1] for r in dnat] == ["10.255.0.2:80", "10.255.0.3:80", "10.255.0.7:80"]
    assert "--probability 0.33333333" in dnat[0] and "--probability 0.50000000" in dnat[1]
    assert "statistic" not in dnat[2] and all("-p tcp -m tcp --dport 8080" in r for r in dnat)
    assert f"-A {c.snat} -o doabc -m conntrack --ctstate DNAT -j SNAT --to-source 10.255.0.5" in nat
    assert len(c.dnat) <= 28 and c.dnat != Chains.of("dyh1c2").dnat


def write(tmp: Path, text: str) -> Path:
    p = tmp / "s.yaml"
    p.write_text(text)
    return p


def test_a_stack_sets_endpoint_mode_and_refuses_dnsrr_with_an_ingress_port(tmp_path: Path) -> None:
    st = load_stack(write(tmp_path, "services:\n  db:\n    image: busybox\n    deploy: {endpoint_mode: dnsrr}\n"
                                    "  web:\n    image: busybox\n    ports: ['8080:80', {target: 81, published: 81, "
                                    "mode: host}]\n"), "s")
    assert st.service("db").endpoint_mode == "dnsrr" and st.service("web").endpoint_mode == "vip"
    assert [p.meshed for p in st.service("web").ports] == [True, False]
    with pytest.raises(StackError) as e:
        load_stack(write(tmp_path, "services:\n  web:\n    image: busybox\n    ports: ['8080:80']\n"
                                   "    deploy: {endpoint_mode: dnsrr}\n"), "s")
    assert e.value.line == 5 and "needs endpoint_mode vip" in str(e.value)
    with pytest.raises(StackError) as e:
        load_stack(write(tmp_path, "services:\n  web:\n    image: busybox\n    deploy: {endpoint_mode: anycast}\n"),
                   "s")
    assert e.value.field == "services.web.deploy.endpoint_mode"


def test_services_naming_no_network_join_the_stacks_default_one(tmp_path: Path) -> None:
    from deploy.stack import with_default_network

    st = load_stack(write(tmp_path, "services:\n  a:\n    image: busybox\n  b:\n    image: busybox\n"
                                    "    networks: [own]\nnetworks:\n  own: {}\n"), "s")
    d = with_default_network(st)
    assert [x.networks for x in d.services] == [(NetworkAttachment("s_default"),), (NetworkAttachment("s_own"),)]
    assert {n.key: n.name for n in d.networks} == {"own": "s_own", "default": "s_default"}
    every = load_stack(write(tmp_path, "services:\n  b:\n    image: busybox\n    networks: [own]\n"
                                       "networks:\n  own: {}\n"), "s")
    assert with_default_network(every) is every  # nothing to add
    # a `default:` entry of the file configures it (here: an existing network)
    ext = load_stack(write(tmp_path, "services:\n  a:\n    image: busybox\nnetworks:\n"
                                     "  default: {external: true, name: shared}\n"), "s")
    assert with_default_network(ext).services[0].networks == (NetworkAttachment("shared"),)


def test_service_create_reads_networks_endpoint_mode_and_ingress_ports() -> None:
    import click

    from deploy.cli_stack import service_create
    from deploy.service_flags import build_service_spec

    def spec_of(*args: str) -> ServiceSpec:
        ctx = service_create.make_context("create", list(args))
        p = dict(ctx.params)
        return build_service_spec(p.pop("image"), p.pop("command"), p)

    s = spec_of("--name", "web", "--network", "appnet", "--network", "name=other,alias=www,alias=w2",
                "-p", "8080:80", "-p", "published=81,target=81,mode=host", "busybox", "httpd")
    assert s.name == "web" and s.networks == (NetworkAttachment("appnet"), NetworkAttachment("other", ("www", "w2")))
    assert [p.meshed for p in s.ports] == [True, False] and s.endpoint_mode == "vip"
    with pytest.raises(click.UsageError, match="needs --endpoint-mode vip"):
        spec_of("--name", "web", "--endpoint-mode", "dnsrr", "-p", "8080:80", "busybox")
    with pytest.raises(click.BadParameter, match="unknown field 'bogus'"):
        spec_of("--name", "web", "--network", "name=a,bogus=1", "busybox")


def test_internal_networks_isolate_a_task_and_refuse_host_ports(tmp_path: Path) -> None:
    from agent.model import Overlay, isolated
    from scheduler.dispatch import overlays_of
    from scheduler.view import View

    back = netmod.new_network("back", [INGRESS, APP], internal=True)
    st = load_stack(write(tmp_path, "services:\n  db:\n    image: busybox\n    networks: [back]\n"
                                    "networks:\n  back: {internal: true}\n"), "s")
    assert st.networks[0].internal
    nets = {"back": back, "ingress": INGRESS, "appnet": APP}
    with pytest.raises(NetworkError, match="every network of the service is internal"):
        check_endpoint(spec("db", host(8080), networks=("back",)), [], nets)
    check_endpoint(spec("db", mesh(8080), networks=("back",)), [], nets)  # the mesh needs no route out
    check_endpoint(spec("db", host(8080), networks=("back", "appnet")), [], nets)

    # the dispatcher marks a task isolated only when all its networks are internal (ingress aside)
    view = View.__new__(View)
    view.networks = nets
    s = spec("db", mesh(8080), networks=("back",))
    t = task("t1", 1, s)
    view.allocations = {("back", "10.240.2.2"): Allocation("back", "10.240.2.2", "t1", "db", 1),
                        ("ingress", "10.255.0.2"): Allocation("ingress", "10.255.0.2", "t1", "db", 1),
                        ("appnet", "10.240.1.2"): Allocation("appnet", "10.240.1.2", "t1", "db", 1)}
    out = overlays_of(t, s, view)
    assert out is not None and [(o.network, o.internal) for o in out] == [("back", True), ("ingress", True)]
    mixed = overlays_of(t, spec("db", networks=("back", "appnet")), view)
    assert mixed is not None and [o.internal for o in mixed] == [True, False]
    assert isolated([Overlay("back", internal=True), Overlay("ingress", internal=True)])
    assert not isolated([Overlay("back", internal=True), Overlay("appnet")]) and not isolated([])


def test_a_starting_container_keeps_its_resolver_until_it_stops() -> None:
    """The resolver opens while the container is wired (status still "created"): a save of the
    container in that window must not close it; an exit does."""
    from types import SimpleNamespace

    from agent.resolver import Resolvers

    closed: list[str] = []
    r = Resolvers()
    r.by_container["c1"] = SimpleNamespace(close=lambda: closed.append("c1"))  # type: ignore[assignment]
    for status in ("created", "running", "paused"):
        r.on_change(SimpleNamespace(id="c1", state=SimpleNamespace(status=status)))
    assert closed == [] and "c1" in r.by_container
    r.on_change(SimpleNamespace(id="c1", state=SimpleNamespace(status="exited")))
    assert closed == ["c1"] and "c1" not in r.by_container
