"""`dockyard network create|ls|inspect|rm|connect|disconnect` (docker's flags): cluster networks
through the scheduler, and with `-d bridge` the agent's own user-defined bridge networks.

The commands join the `network` group of deploy/cli_groups.py; `ls` lists the node's built-in
networks (bridge, host, none: scope local), the agent's user networks (scope local) when it
answers, and, when a scheduler is given (--scheduler or DOCKYARD_SCHEDULER), the cluster's (scope
swarm), as `docker network ls` does on a Swarm manager. `connect` and `disconnect` change a
container of the agent, running or not (agent/netattach.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import click

from deploy import display
from deploy.cli_groups import _BUILTIN, network
from protos import agent_pb2 as pb_agent
from protos import cluster_pb2 as pb

if TYPE_CHECKING:
    from deploy.cli_cluster import SchedulerClient
    from deploy.stack import Stack, StackNetwork


# The scheduler's side, imported when a command needs it: `network connect` of a local container
# should not pay for the cluster and stack modules (about 0.3 s of every run here).
def sched(ctx: click.Context) -> SchedulerClient:
    from deploy.cli_cluster import sched as scheduler

    return scheduler(ctx)


def scheduler_addr(ctx: click.Context) -> str:
    from deploy.cli_cluster import scheduler_addr as addr

    return addr(ctx)


def _msg_dict(msg: Any) -> dict[str, Any]:
    from deploy.cli_cluster import _msg_dict as to_dict

    return to_dict(msg)


def fail(msg: str) -> NoReturn:
    from deploy.cli_cluster import fail as failed

    failed(msg)


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--label")
        out[k] = v if sep else ""
    return out


def _agent(ctx: click.Context) -> Any:
    from deploy.cli import client

    return client(ctx)


def _local_networks(ctx: click.Context) -> list[Any]:
    """The agent's user networks, or none when no agent answers (a CLI used against a scheduler)."""
    import grpc

    try:
        return list(_agent(ctx).stub.ListLocalNetworks(pb_agent.Empty(), timeout=5).networks)
    except grpc.RpcError:
        return []


def _aux(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k or not sep or not v:
            raise click.BadParameter(f"{item!r}: expected NAME=IP", param_hint="--aux-address")
        out[k] = v
    return out


@network.command("create")
@click.option("-d", "--driver", default="overlay", show_default=True,
              help="Network driver: overlay (the cluster's) or bridge (this agent's)")
@click.option("--subnet", default="", help="Subnet in CIDR form (default: a free /24 of 10.240.0.0/12, or of "
              "the agent's pool with -d bridge)")
@click.option("--gateway", default="", help="-d bridge: the bridge's address (default: the subnet's first)")
@click.option("--ip-range", default="", help="-d bridge: give containers addresses from this part of the subnet")
@click.option("--aux-address", "aux", multiple=True, help="-d bridge: NAME=IP never given to a container")
@click.option("--attachable", is_flag=True, help="Plain containers may join it (not supported yet: refused)")
@click.option("--internal", is_flag=True, help="No route out: a task only on internal networks reaches nothing beyond them")
@click.option("--opt", "-o", "opts", multiple=True, help="Driver option: mtu=N")
@click.option("--label", "labels", multiple=True, help="Set metadata on the network: KEY=VALUE")
@click.argument("name")
@click.pass_context
def network_create(ctx: click.Context, driver: str, subnet: str, gateway: str, ip_range: str, aux: tuple[str, ...],
                   attachable: bool, internal: bool, opts: tuple[str, ...], labels: tuple[str, ...], name: str) -> None:
    """Create a network."""
    if driver == "bridge":
        if opts:
            raise click.BadParameter("dockyard's bridge driver takes no option", param_hint="--opt")
        n = _agent(ctx).call("CreateLocalNetwork", pb_agent.LocalNetworkSpec(
            name=name, subnet=subnet, gateway=gateway, labels=_labels(labels), internal=internal,
            ip_range=ip_range, aux_addresses=_aux(aux)))
        click.echo(n.id)
        return
    if gateway or ip_range or aux:
        raise click.BadParameter("--gateway, --ip-range and --aux-address are for -d bridge networks",
                                 param_hint="--driver")
    mtu = 0
    for o in opts:
        k, _, v = o.partition("=")
        if k in ("mtu", "com.docker.network.driver.mtu") and v.isdigit():
            mtu = int(v)
        else:
            raise click.BadParameter(f"{o!r}: the only driver option is mtu=N", param_hint="--opt")
    r = sched(ctx).call("CreateNetwork", pb.CreateNetworkRequest(
        name=name, driver=driver, subnet=subnet, attachable=attachable, internal=internal, mtu=mtu,
        labels=_labels(labels)))
    click.echo(r.name)


network.commands.pop("ls", None)  # the local-only listing of cli_groups: replaced by the one below


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display network names")
@click.option("--format", "fmt", default="", help="'json' to print JSON")
@click.pass_context
def network_ls(ctx: click.Context, quiet: bool, fmt: str) -> None:
    """List networks: this node's built-in ones and, with a scheduler, the cluster's."""
    items: list[dict[str, Any]] = [{"Name": name, "Driver": driver, "Scope": "local", "Subnet": "", "VNI": "",
                                    "Endpoints": "", "Services": ""} for name, driver in _BUILTIN]
    for ln in _local_networks(ctx):
        items.append({"Name": ln.name, "Driver": "bridge", "Scope": "local", "Subnet": ln.subnet, "VNI": "",
                      "Endpoints": len(ln.containers), "Services": "", "Internal": ln.internal})
    if scheduler_addr(ctx):
        for n in sched(ctx).call("ListNetworks", pb.Empty()).networks:
            items.append({"Name": n.name, "Driver": n.driver, "Scope": "swarm", "Subnet": n.subnet, "VNI": n.vni,
                          "Endpoints": len(n.endpoints), "Services": ",".join(n.services),
                          "Attachable": n.attachable, "Internal": n.internal, "MTU": n.mtu})
    if quiet:
        for i in items:
            click.echo(i["Name"])
    elif fmt == "json":
        display.emit_json(items)
    else:
        display.table(["NAME", "DRIVER", "SCOPE", "SUBNET", "VNI", "ENDPOINTS", "SERVICES"],
                      [[i["Name"], i["Driver"], i["Scope"], i["Subnet"], i["VNI"], i["Endpoints"], i["Services"]]
                       for i in items])


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Display detailed information on networks (with every endpoint: task, address, node)."""
    local = {ln.name: ln for ln in _local_networks(ctx)}
    display.emit_json([_msg_dict(local[n]) if n in local else
                       _msg_dict(sched(ctx).call("InspectNetwork", pb.NetworkRef(name=n))) for n in names])


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove networks (refused while a service uses one or an endpoint is attached)."""
    local = {ln.name for ln in _local_networks(ctx)}
    for n in names:
        if n in local:
            _agent(ctx).call("RemoveLocalNetwork", pb_agent.LocalNetworkRef(name=n))
        else:
            sched(ctx).call("RemoveNetwork", pb.NetworkRef(name=n))
        click.echo(n)


@network.command("connect")
@click.option("--alias", "aliases", multiple=True, help="Add a network-scoped alias for the container")
@click.option("--ip", default="", help="IPv4 address on that network (default: the next free one)")
@click.argument("name")
@click.argument("container")
@click.pass_context
def network_connect(ctx: click.Context, aliases: tuple[str, ...], ip: str, name: str, container: str) -> None:
    """Connect a container to a user network (running or not: it gets eth1, eth2 ... at once)."""
    _agent(ctx).call("ConnectNetwork", pb_agent.NetworkConnectRequest(network=name, container=container,
                                                                       aliases=list(aliases), ip=ip))


@network.command("disconnect")
@click.option("-f", "--force", is_flag=True, help="Accepted as docker's (the disconnect is never refused for a "
              "live container)")
@click.argument("name")
@click.argument("container")
@click.pass_context
def network_disconnect(ctx: click.Context, force: bool, name: str, container: str) -> None:
    """Disconnect a container from a network (its interface, names and address go at once)."""
    _agent(ctx).call("DisconnectNetwork", pb_agent.NetworkConnectRequest(network=name, container=container))


def loopback_nodes(ctx: click.Context) -> list[str]:
    """Nodes whose agent address is a loopback one: they cannot carry a cluster network (a VXLAN
    endpoint there reaches no other host), so a stack on them gets no default network."""
    import ipaddress

    out = []
    for n in sched(ctx).call("ListNodes", pb.Empty()).nodes:
        host = n.address.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
        try:
            if ipaddress.ip_address(host).is_loopback:
                out.append(n.name)
        except ValueError:
            continue
    return out


def with_default_network(ctx: click.Context, stack: Stack) -> Stack:
    """The stack with `<stack>_default` for its services that name no network (Swarm's rule),
    unless the cluster's nodes are on loopback addresses (one host for tests or a laptop: then
    services reach each other through published ports, and the CLI says so)."""
    from deploy.stack import with_default_network as add_default

    added = add_default(stack)
    if added is stack:
        return stack
    loop = loopback_nodes(ctx)
    if loop:
        click.echo(f"note: no network {stack.name}_default: node {', '.join(loop[:3])} listens on a loopback address, "
                   "which cannot carry a cluster network (give the agents --advertise HOST:PORT)", err=True)
        return stack
    return added


def remove_stack_networks(ctx: click.Context, stacks: tuple[str, ...], timeout: float = 30.0) -> None:
    """The stacks' own networks (labelled with their namespace), once their endpoints are gone:
    the tasks are being stopped, so a network still holding addresses is tried again a while."""
    import time

    import grpc

    doomed = [n.name for n in sched(ctx).call("ListNetworks", pb.Empty()).networks
              if n.labels.get("com.docker.stack.namespace") in stacks]
    deadline = time.monotonic() + timeout
    for name in doomed:
        while True:
            try:
                sched(ctx).call("RemoveNetwork", pb.NetworkRef(name=name), fatal=False)
                click.echo(f"Removing network {name}")
                break
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.FAILED_PRECONDITION,) or time.monotonic() > deadline:  # type: ignore[attr-defined]
                    click.echo(f"Failed to remove network {name}: {e.details()}", err=True)  # type: ignore[attr-defined]
                    break
                time.sleep(0.3)


def ensure_stack_networks(ctx: click.Context, stack: Stack) -> None:
    """Create the stack's own networks that do not exist yet; check that external ones do."""
    have = {n.name: n for n in sched(ctx).call("ListNetworks", pb.Empty()).networks}
    wanted = {a.name for s in stack.services for a in s.networks}
    for net in stack.networks:
        if net.name not in wanted and not net.external:
            continue
        if net.name in have:
            continue
        if net.external:
            fail(f"dockyard deploy: network {net.name} is declared as external but does not exist "
                 f"(dockyard network create -d overlay {net.name})")
        _create(ctx, net, stack.name)
        click.echo(f"Creating network {net.name}")


def _create(ctx: click.Context, net: StackNetwork, stack: str) -> None:
    sched(ctx).call("CreateNetwork", pb.CreateNetworkRequest(
        name=net.name, driver=net.driver, subnet=net.subnet, attachable=net.attachable, internal=net.internal,
        labels={**dict(net.labels), "com.docker.stack.namespace": stack}))
