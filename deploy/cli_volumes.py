"""`dockyard volume create|ls|inspect|rm|prune` (added to deploy/cli.py's `main`), as docker's.

They talk to the agent's dockyard.volumes.Volumes service (agent/volumes/service.py).
"""

from __future__ import annotations

import sys

import click
import grpc

from deploy import display
from deploy.cli import client, fail_rpc
from deploy.cli_images import _cli_modules
from protos import volumes_pb2 as vpb
from protos import volumes_pb2_grpc as vpbg


def _stub(ctx: click.Context) -> vpbg.VolumesStub:
    return vpbg.VolumesStub(client(ctx).channel)  # type: ignore[no-untyped-call]


def _call(ctx: click.Context, method: str, request: object) -> object:
    try:
        return getattr(_stub(ctx), method)(request)
    except grpc.RpcError as e:
        fail_rpc(e, client(ctx).host)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k or (not eq and flag in ("-o", "--opt")):
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint=f"'{flag}'")
        out[k] = val
    return out


def _as_dict(v: vpb.Volume) -> dict[str, object]:
    """docker volume inspect's shape."""
    import datetime

    d: dict[str, object] = {
        "CreatedAt": datetime.datetime.fromtimestamp(v.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Driver": v.driver, "Labels": dict(v.labels) or None, "Mountpoint": v.mountpoint, "Name": v.name,
        "Options": dict(v.options) or None, "Scope": "local",
        "UsageData": {"RefCount": len(v.used_by), "Size": v.size},
    }
    return d


@click.group()
def volume() -> None:
    """Manage volumes."""


@volume.command("create")
@click.option("-d", "--driver", default="local", show_default=True, help="Specify volume driver name")
@click.option("--label", "labels", multiple=True, help="Set metadata for a volume")
@click.option("-o", "--opt", "opts", multiple=True, help="Set driver specific options (type=, device=, o=)")
@click.argument("name", required=False, default="")
@click.pass_context
def volume_create(ctx: click.Context, driver: str, labels: tuple[str, ...], opts: tuple[str, ...], name: str) -> None:
    """Create a volume."""
    v = _call(ctx, "Create", vpb.CreateRequest(name=name, driver=driver, labels=_pairs(labels, "--label"),
                                               options=_pairs(opts, "-o")))
    assert isinstance(v, vpb.Volume)
    click.echo(v.name)


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter: dangling=true, name=, label=K[=V], driver=")
@click.option("--format", "fmt", default=None, type=click.Choice(["json"]), help="json: print JSON (Go templates are not supported)")
@click.pass_context
def volume_ls(ctx: click.Context, quiet: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List volumes."""
    resp = _call(ctx, "List", vpb.ListRequest(filters=_pairs(filters, "--filter")))
    assert isinstance(resp, vpb.ListResponse)
    if quiet:
        for v in resp.volumes:
            click.echo(v.name)
    elif fmt == "json":
        display.emit_json([_as_dict(v) for v in resp.volumes])
    else:
        display.table(["DRIVER", "VOLUME NAME"], [[v.driver, v.name] for v in resp.volumes])


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def volume_inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Display detailed information on one or more volumes."""
    out = []
    for n in names:
        v = _call(ctx, "Inspect", vpb.VolumeRef(name=n))
        assert isinstance(v, vpb.Volume)
        out.append(_as_dict(v))
    display.emit_json(out)


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="Do not fail on a volume that does not exist")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def volume_rm(ctx: click.Context, force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more volumes. A volume in use by a container cannot be removed."""
    resp = _call(ctx, "Remove", vpb.RemoveRequest(names=list(names), force=force))
    assert isinstance(resp, vpb.RemoveResponse)
    for n in resp.removed:
        click.echo(n)
    for e in resp.errors:
        click.echo(f"Error response from daemon: {e}", err=True)
    if resp.errors:
        sys.exit(1)


@volume.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused volumes, not just anonymous ones")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--filter", "filters", multiple=True, help="label=K[=V]")
@click.pass_context
def volume_prune(ctx: click.Context, all_: bool, force: bool, filters: tuple[str, ...]) -> None:
    """Remove unused volumes (anonymous ones only, unless --all)."""
    labels = {}
    for f in filters:
        key, _, value = f.partition("=")
        if key != "label":
            raise click.BadParameter(f"{f!r}: only label=K[=V] filters are supported", param_hint="'--filter'")
        k, _, v = value.partition("=")
        labels[k] = v
    if not force:
        what = "all local volumes not used by at least one container" if all_ else \
            "all anonymous local volumes not used by at least one container"
        if not click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?"):
            return
    resp = _call(ctx, "Prune", vpb.PruneRequest(all=all_, labels=labels))
    assert isinstance(resp, vpb.PruneResponse)
    if resp.removed:
        click.echo("Deleted Volumes:")
        for n in resp.removed:
            click.echo(n)
        click.echo("")
    click.echo(f"Total reclaimed space: {display.human_size(resp.space_reclaimed)}")


for _mod in _cli_modules():
    _mod.main.add_command(volume)
