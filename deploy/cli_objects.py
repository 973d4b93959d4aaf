"""`dockyard secret|config create|ls|inspect|rm`: the cluster's secrets and configs (docker's verbs).

Both live in the scheduler's etcd (a secret sealed with the scheduler's key: scheduler/objects.py)
and reach a node only when a task placed there uses one. `inspect` never shows a secret's data
(a config's, like docker, it does show); `rm` is refused while a service uses it.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import click

from deploy import display
from deploy.cli_cluster import _msg_dict, fail, sched
from deploy.cli_network import _labels
from protos import cluster_pb2 as pb

# Docker's limit; the scheduler checks it too, this only spares sending a huge file.
MAX_SIZE = 500 * 1024


def read_data(path: str, what: str) -> bytes:
    """A file's bytes, or stdin's for "-"; too big or empty is an error naming the file."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_SIZE + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_SIZE + 1)
    except OSError as e:
        fail(f"{what}: cannot read {path}: {e.strerror or e}")
    if len(data) > MAX_SIZE:
        fail(f"{what}: {'stdin' if path == '-' else path} is over the limit of {MAX_SIZE // 1024} KiB")
    if not data:
        fail(f"{what}: {'stdin' if path == '-' else path} is empty")
    return data


def _group(kind: str) -> click.Group:
    @click.group(kind, help=f"Manage the cluster's {kind}s.")
    def group() -> None:
        pass

    @group.command("create")
    @click.option("-l", "--label", "labels", multiple=True, help=f"{kind.capitalize()} labels: KEY=VALUE")
    @click.argument("name")
    @click.argument("file", metavar="FILE|-")
    @click.pass_context
    def create(ctx: click.Context, labels: tuple[str, ...], name: str, file: str) -> None:
        data = read_data(file, f"{kind} create {name}")
        r = sched(ctx).call("CreateObject", pb.FileObject(kind=kind, name=name, data=data, labels=_labels(labels)))
        click.echo(r.name)

    create.help = f"Create a {kind} from a file, or from stdin with '-'."

    @group.command("ls")
    @click.option("-q", "--quiet", is_flag=True, help="Only display names")
    @click.option("--format", "fmt", default=None, type=click.Choice(["json"]), help="json: print JSON (Go templates are not supported)")
    @click.pass_context
    def ls(ctx: click.Context, quiet: bool, fmt: str) -> None:
        found = sched(ctx).call("ListObjects", pb.ListObjectsRequest(kind=kind)).objects
        if quiet:
            for o in found:
                click.echo(o.name)
        elif fmt == "json":
            display.emit_json([_info(o) for o in found])
        else:
            display.table(["NAME", "SIZE", "CREATED", "SERVICES"],
                          [[o.name, o.size, display.ago(o.created_at), ",".join(o.services)] for o in found])

    ls.help = f"List {kind}s."

    @group.command("inspect")
    @click.argument("names", nargs=-1, required=True)
    @click.pass_context
    def inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
        display.emit_json([_info(sched(ctx).call("InspectObject", pb.ObjectRef(kind=kind, name=n)))
                           for n in names])

    inspect.help = f"Display detailed information on {kind}s" + (" (never the data)." if kind == "secret"
                                                                   else " (the data as base64, as docker).")

    @group.command("rm")
    @click.argument("names", nargs=-1, required=True)
    @click.pass_context
    def rm(ctx: click.Context, names: tuple[str, ...]) -> None:
        for n in names:
            sched(ctx).call("RemoveObject", pb.ObjectRef(kind=kind, name=n))
            click.echo(n)

    rm.help = f"Remove {kind}s (refused while a service uses one)."
    return group


def _info(o: pb.ObjectInfo) -> dict[str, Any]:
    d = _msg_dict(o)
    d.pop("data", None)
    if o.kind == "config":
        d["data"] = base64.b64encode(o.data).decode()
    return d


def _install() -> None:
    from deploy.cli_cluster import _cli_modules

    for kind in ("secret", "config"):
        group = _group(kind)
        for mod in _cli_modules():
            mod.main.add_command(group)


_install()
