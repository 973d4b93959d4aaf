"""docker's command groups over the short forms (added to deploy/cli.py's `main`): the same command
objects under `dockyard container ...`, `network ...` and `system ...`, so `dockyard container ls`,
`dockyard container run -p 3000:3000 -it IMAGE sh` and `dockyard ps` are one command each. The
`image` group lives in deploy/cli.py and cli_images.py; `stack` in cli_stack.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from deploy import display


@click.group("container")
def container() -> None:
    """Manage containers."""


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.pass_context
def container_prune(ctx: click.Context, force: bool) -> None:
    """Remove all stopped containers."""
    total, failed = prune_containers(ctx, force)
    click.echo(f"Total reclaimed space: {display.human_size(total)}")
    if failed:
        sys.exit(1)


def prune_containers(ctx: click.Context, force: bool) -> tuple[int, bool]:
    """Remove every container that is not running (created or exited); (bytes reclaimed, any failed)."""
    import grpc

    from deploy.cli import client
    from protos import agent_pb2 as pb

    if not force and not click.confirm("WARNING! This will remove all stopped containers.\n"
                                       "Are you sure you want to continue?"):
        sys.exit(0)
    cl = client(ctx)
    stopped = [c for c in cl.call("ListContainers", pb.ListContainersRequest(all=True)).containers
               if c.state in ("exited", "created", "dead")]
    removed, failed = [], False
    for c in stopped:
        try:
            cl.stub.RemoveContainer(pb.RemoveContainerRequest(id=c.id))
            removed.append(c)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                click.echo(f"Error response from daemon: {e.details()}", err=True)  # type: ignore[attr-defined]
                failed = True
    if removed:
        click.echo("Deleted Containers:")
        for c in removed:
            click.echo(c.id)
        click.echo("")
    return sum(getattr(c, "size_rw", 0) for c in removed), failed


@click.group("network")
def network() -> None:
    """Manage networks."""


# The networks a container can join on one host (`run --network`): the agent's bridge, the host's
# own stack, or none; docker's default three.
_BUILTIN = (("bridge", "bridge"), ("host", "host"), ("none", "null"))


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display network names")
@click.option("--format", "fmt", default="", help="'json' to print JSON")
def network_ls(quiet: bool, fmt: str) -> None:
    """List networks."""
    if quiet:
        for name, _ in _BUILTIN:
            click.echo(name)
        return
    items = [{"Name": name, "Driver": driver, "Scope": "local"} for name, driver in _BUILTIN]
    if fmt == "json":
        display.emit_json(items)
        return
    display.table(["NAME", "DRIVER", "SCOPE"], [[i["Name"], i["Driver"], i["Scope"]] for i in items])


@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just dangling ones")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--volumes", is_flag=True, help="Prune anonymous volumes (with -a: every unused volume)")
@click.pass_context
def system_prune(ctx: click.Context, all_: bool, force: bool, volumes: bool) -> None:
    """Remove stopped containers, dangling images (with -a: every image no container uses) and the
    build cache, and with --volumes the volumes no container uses (anonymous ones; with -a all)."""
    from deploy.cli_images import prune_images
    from deploy.cli_volumes import volume_prune

    if not force:
        images = "all images without at least one container associated to them" if all_ else "all dangling images"
        vols = ("  - all volumes not used by at least one container\n" if all_ else
                "  - all anonymous volumes not used by at least one container\n") if volumes else ""
        if not click.confirm(f"WARNING! This will remove:\n  - all stopped containers\n{vols}  - {images}\n"
                             "  - all build cache\n\nAre you sure you want to continue?"):
            return
    _, failed = prune_containers(ctx, True)
    if volumes:
        ctx.invoke(volume_prune, all_=all_, force=True, filters=())
    prune_images(ctx, all_, "", build_cache=True)
    if failed:
        sys.exit(1)


@click.command("events")
@click.option("--since", default="", help="Show events created since this time (unix seconds, RFC 3339, or 10m)")
@click.option("--until", default="", help="Stream events until this time")
@click.option("-f", "--filter", "filters", multiple=True,
              help="Filter output: container=NAME|ID, event=start, type=container, label=k[=v], image=REF")
@click.option("--format", "fmt", default="", help="'json' to print one JSON object per line")
@click.pass_context
def system_events(ctx: click.Context, since: str, until: str, filters: tuple[str, ...], fmt: str) -> None:
    """Get real time events from the agent (containers: create, start, die, pause, rename, destroy, ...)."""
    import json
    import time

    import grpc

    from deploy.cli import _time_arg, client, fail_rpc
    from protos import agent_pb2 as pb

    wanted: dict[str, list[str]] = {}
    for f in filters:
        k, sep, v = f.partition("=")
        if not sep or k not in ("container", "event", "type", "label", "image"):
            raise click.BadParameter(f"{f!r}: use container=, event=, type=, label= or image=", param_hint="--filter")
        wanted.setdefault(k, []).append(v)

    def match(ev: pb.Event) -> bool:
        a = ev.attributes
        checks: dict[str, Callable[[str], bool]] = {"type": lambda v: ev.type == v, "event": lambda v: ev.action == v,
                  "container": lambda v: ev.actor_id.startswith(v) or a.get("name") == v.lstrip("/"),
                  "image": lambda v: a.get("image") == v,
                  "label": lambda v: v.partition("=")[0] in a and (not v.partition("=")[1]
                                                                   or a[v.partition("=")[0]] == v.partition("=")[2])}
        # values of one key are alternatives; different keys must all match (docker's rule)
        return all(any(checks[k](v) for v in vs) for k, vs in wanted.items())

    cl = client(ctx)
    try:
        for ev in cl.stub.Events(pb.EventsRequest(since=_time_arg(since), until=_time_arg(until))):
            if not match(ev):
                continue
            if fmt == "json":
                click.echo(json.dumps({"Type": ev.type, "Action": ev.action, "Actor": {
                    "ID": ev.actor_id, "Attributes": dict(ev.attributes)}, "timeNano": ev.time_nano}))
                continue
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ev.time_nano // 1_000_000_000))
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(ev.attributes.items()))
            click.echo(f"{when}.{ev.time_nano % 1_000_000_000:09d}Z {ev.type} {ev.action} {ev.actor_id} ({attrs})")
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    except KeyboardInterrupt:
        pass


def _install() -> None:
    from deploy import cli_images  # noqa: F401 - its `system` group and image commands first
    from deploy.cli_cluster import _cli_modules

    for mod in _cli_modules():
        main = mod.main
        commands: dict[str, Any] = main.commands
        for name in ("attach", "create", "exec", "export", "inspect", "kill", "logs", "pause", "port", "rename",
                     "restart", "rm", "run", "start", "stats", "stop", "top", "unpause", "update", "wait", "checkpoint",
                     "restore"):
            container.add_command(commands[name], name)
        for alias in ("ls", "ps", "list"):
            container.add_command(commands["ps"], alias)
        container.add_command(container_prune, "prune")
        main.add_command(container)
        main.add_command(network)
        system = commands["system"]
        system.add_command(commands["info"], "info")
        system.add_command(system_prune, "prune")
        system.add_command(system_events, "events")
        image = commands["image"]
        image.add_command(commands["images"], "list")


_install()
