"""`dockyard network create|ls|inspect|rm`: cluster networks, through the scheduler (docker's flags).

The commands join the `network` group of deploy/cli_groups.py; `ls` lists the node's built-in
networks (bridge, host, none: scope local) and, when a scheduler is given (--scheduler or
DOCKYARD_SCHEDULER), the cluster's (scope swarm), as `docker network ls` does on a Swarm manager."""

from __future__ import annotations

from typing import Any

import click

from deploy import display
from deploy.cli_cluster import _msg_dict, fail, sched, scheduler_addr
from deploy.cli_groups import _BUILTIN, network
from deploy.stack import Stack, StackNetwork
from protos import cluster_pb2 as pb


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--label")
        out[k] = v if sep else ""
    return out


@network.command("create")
@click.option("-d", "--driver", default="overlay", show_default=True, help="Network driver (overlay)")
@click.option("--subnet", default="", help="Subnet in CIDR form (default: a free /24 of 10.240.0.0/12)")
@click.option("--attachable", is_flag=True, help="Plain containers may join it (not supported yet: refused)")
@click.option("--internal", is_flag=True, help="No route out: a task only on internal networks reaches nothing beyond them")
@click.option("--opt", "-o", "opts", multiple=True, help="Driver option: mtu=N")
@click.option("--label", "labels", multiple=True, help="Set metadata on the network: KEY=VALUE")
@click.argument("name")
@click.pass_context
def network_create(ctx: click.Context, driver: str, subnet: str, attachable: bool, internal: bool,
                   opts: tuple[str, ...], labels: tuple[str, ...], name: str) -> None:
    """Create a network."""
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
    display.emit_json([_msg_dict(sched(ctx).call("InspectNetwork", pb.NetworkRef(name=n))) for n in names])


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove networks (refused while a service uses one or an endpoint is attached)."""
    for n in names:
        sched(ctx).call("RemoveNetwork", pb.NetworkRef(name=n))
        click.echo(n)


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
