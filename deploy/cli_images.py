"""Image commands of `dockyard` (added to deploy/cli.py's `main`): build, history, prune, save, load,
pull, push, login/logout, system df. They talk to the agent's dockyard.images.Images service.

Registry credentials stay on this side, in ``$DOCKYARD_CONFIG/config.json`` (default
``~/.dockyard/config.json``), in docker's config.json format (``{"auths": {"host": {"auth":
base64("user:password")}}}``, docker.io under ``https://index.docker.io/v1/``), mode 0600. Each
pull, push or build sends the agent only the credentials it needs; the agent stores none.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import grpc

from deploy import credentials, display, options
from deploy.cli import Client, client, fail, fail_rpc
from protos import images_pb2 as ipb
from protos import images_pb2_grpc as ipbg

CHUNK = 256 * 1024


def _stub(ctx: click.Context) -> tuple[Client, ipbg.ImagesStub]:
    cl = client(ctx)
    return cl, ipbg.ImagesStub(cl.channel)  # type: ignore[no-untyped-call]


# --- credentials (client side) --------------------------------------------------------------------

def _read_config() -> dict[str, Any]:
    try:
        return credentials.read_config()
    except credentials.BadConfig as e:
        fail(str(e))


def _write_config(data: dict[str, Any]) -> None:
    path = credentials.config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent="\t")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _key(registry: str) -> str:
    return credentials.key(registry)


def _auth_for(domain: str) -> ipb.AuthConfig:
    return ipb.AuthConfig(**credentials.auth_for(domain, _read_config()))


def _all_auths() -> dict[str, ipb.AuthConfig]:
    cfg = _read_config()
    return {k: ipb.AuthConfig(**credentials.auth_for(k, cfg)) for k in (cfg.get("auths") or {})}


def _domain(ref: str) -> str:
    from agent.images import reference
    from agent.images.errors import ImageError

    try:
        return reference.parse(ref).domain
    except ImageError as e:
        fail(f"invalid reference format: {e}")


# --- build ----------------------------------------------------------------------------------------

def _context_chunks(options: ipb.BuildOptions, tar: Any) -> Iterator[ipb.BuildInput]:
    yield ipb.BuildInput(options=options)
    while data := tar.read(CHUNK):
        yield ipb.BuildInput(context=data)


@click.command("build")
@options.click_options(options.BUILD)
@click.argument("context_dir", metavar="CONTEXT")
@click.pass_context
def build(ctx: click.Context, tags: tuple[str, ...], file: str, build_args: tuple[str, ...], no_cache: bool,
          target: str, network: str, labels: tuple[str, ...], quiet: bool, context_dir: str) -> None:
    """Build an image from a Dockerfile."""
    from agent.images import reference
    from deploy.buildcontext import write_context

    root = Path(context_dir)
    if not root.is_dir():
        fail(f"unable to prepare context: path {context_dir!r} not found")
    df_path = Path(file) if file else root / "Dockerfile"
    try:
        raw = df_path.read_bytes()
    except OSError as e:
        fail(f"failed to read Dockerfile {df_path}: {e.strerror}")
    try:
        dockerfile = raw.decode()
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        fail(f"failed to read Dockerfile {df_path}: line {line}: not valid UTF-8 (byte {raw[e.start]:#04x} "
             f"at offset {e.start}); save it as UTF-8")
    for t in tags:
        try:
            reference.parse(t)
        except Exception as e:
            fail(f'invalid argument "{t}" for "-t, --tag" flag: {e}')
    args: dict[str, str] = {}
    for a in build_args:
        k, eq, v = a.partition("=")
        if not eq:
            v = os.environ.get(k, "")
        args[k] = v
    rel_df = os.path.relpath(df_path.resolve(), root.resolve())
    options = ipb.BuildOptions(
        dockerfile=dockerfile, dockerfile_name=df_path.name if file else "Dockerfile", tags=list(tags),
        build_args=args, no_cache=no_cache, target=target, network=network,
        labels=dict(lbl.partition("=")[::2] for lbl in labels), auths=_all_auths())
    cl, stub = _stub(ctx)
    image_id = ""
    with tempfile.TemporaryFile() as tar:
        write_context(root, tar, rel_df, warn=lambda msg: click.echo(f"WARNING: {msg}", err=True))
        size = tar.tell()
        tar.seek(0)
        if not quiet:
            click.echo(f"Sending build context to dockyard agent  {display.human_size(size)}")
        try:
            for ev in stub.Build(_context_chunks(options, tar)):
                if ev.image_id:
                    image_id = ev.image_id
                if ev.stream and not quiet:
                    sys.stdout.write(ev.stream)
                    sys.stdout.flush()
        except grpc.RpcError as e:
            fail_rpc(e, cl.host)
    if quiet:
        click.echo(image_id)



# --- history, prune, df -----------------------------------------------------------------------------

@click.command("history")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@click.option("-H", "--human", default=True, help="Print sizes and dates in human readable format")
@click.option("--format", "fmt", default="", help="'json' to print JSON")
@click.argument("image_ref", metavar="IMAGE")
@click.pass_context
def history(ctx: click.Context, no_trunc: bool, quiet: bool, human: bool, fmt: str, image_ref: str) -> None:
    """Show the history of an image."""
    cl, stub = _stub(ctx)
    try:
        resp = stub.History(ipb.HistoryRequest(ref=image_ref))
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    if fmt == "json":
        display.emit_json([{"id": h.id, "created": h.created, "created_by": h.created_by, "size": h.size,
                            "comment": h.comment, "empty_layer": h.empty_layer} for h in resp.entries])
        return
    if quiet:
        for h in resp.entries:
            click.echo(h.id if no_trunc or h.id == "<missing>" else h.id.removeprefix("sha256:")[:12])
        return
    rows = []
    for h in resp.entries:
        ident = h.id if no_trunc or h.id == "<missing>" else h.id.removeprefix("sha256:")[:12]
        by = h.created_by if no_trunc or len(h.created_by) <= 45 else h.created_by[:44] + "…"
        rows.append([ident, display.ago(h.created), by, display.human_size(h.size), h.comment])
    display.table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows)



@click.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just dangling ones")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--format", "fmt", default="", help="'json' to print JSON")
@click.pass_context
def prune(ctx: click.Context, all_: bool, force: bool, fmt: str) -> None:
    """Remove unused images."""
    if not force:
        what = "all images without at least one container associated to them" if all_ else "all dangling images"
        if not click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?"):
            return
    prune_images(ctx, all_, fmt)


@click.group("builder")
def builder() -> None:
    """Manage builds."""


@builder.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@click.option("--format", "fmt", default="", help="'json' to print JSON")
@click.pass_context
def builder_prune(ctx: click.Context, force: bool, fmt: str) -> None:
    """Remove the build cache: the build contexts the agent keeps unpacked for the next build."""
    if not force and not click.confirm("WARNING! This will remove all build cache.\nAre you sure you want to continue?"):
        return
    prune_images(ctx, False, fmt, only_build_cache=True)


def prune_images(ctx: click.Context, all_: bool, fmt: str, build_cache: bool = False,
                 only_build_cache: bool = False) -> None:
    """image prune (with ``build_cache``: system prune's, the build cache too; ``only_build_cache``:
    builder prune's)."""
    cl, stub = _stub(ctx)
    try:
        r = stub.Prune(ipb.PruneRequest(all=all_, build_cache=build_cache, only_build_cache=only_build_cache))
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    if fmt == "json":
        display.emit_json({"untagged": list(r.untagged), "deleted": list(r.deleted), "reclaimed": r.reclaimed})
        return
    if r.untagged or r.deleted:
        click.echo("Deleted Images:")
        for u in r.untagged:
            click.echo(f"untagged: {u}")
        for d in r.deleted:
            click.echo(f"deleted: {d}")
        click.echo("")
    click.echo(f"Total reclaimed space: {display.human_size(r.reclaimed)}")


@click.group("system")
def system() -> None:
    """Manage dockyard."""


@system.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage")
@click.option("--format", "fmt", default="", help="'json' to print JSON")
@click.pass_context
def system_df(ctx: click.Context, verbose: bool, fmt: str) -> None:
    """Show dockyard disk usage."""
    cl, stub = _stub(ctx)
    try:
        r = stub.SystemDf(ipb.SystemDfRequest())
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    if fmt == "json":
        display.emit_json({
            "rows": [{"type": x.type, "total": x.total, "active": x.active, "size": x.size,
                      "reclaimable": x.reclaimable} for x in r.rows],
            "images": [{"id": i.id, "repo_tags": list(i.repo_tags), "created": i.created, "size": i.size,
                        "shared_size": i.shared_size, "unique_size": i.unique_size, "containers": i.containers}
                       for i in r.images]})
        return
    rows = []
    for x in r.rows:
        pct = f" ({100 * x.reclaimable // x.size}%)" if x.size else ""
        rows.append([x.type, x.total, x.active, display.human_size(x.size), display.human_size(x.reclaimable) + pct])
    display.table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows)
    if verbose:
        click.echo("\nImages space usage:\n")
        irows = []
        for i in r.images:
            for t in list(i.repo_tags) or ["<none>:<none>"]:
                repo, _, tag = t.rpartition(":")
                irows.append([repo, tag, i.id.removeprefix("sha256:")[:12], display.ago(i.created),
                              display.human_size(i.size), display.human_size(i.shared_size),
                              display.human_size(i.unique_size), i.containers])
        display.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE",
                       "CONTAINERS"], irows)


# --- save and load ----------------------------------------------------------------------------------

@click.command("save")
@options.click_options(options.SAVE)
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def save(ctx: click.Context, output: str, fmt: str, images: tuple[str, ...]) -> None:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    cl, stub = _stub(ctx)
    if not output and sys.stdout.isatty():
        fail("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    req = ipb.SaveRequest(refs=list(images), format=fmt)
    if not output:
        try:
            for chunk in stub.Save(req):
                sys.stdout.buffer.write(chunk.data)
        except grpc.RpcError as e:
            fail_rpc(e, cl.host)
        return
    tmp = output + ".partial"  # a failed save leaves no half archive under the asked name
    try:
        with open(tmp, "wb") as out:
            for chunk in stub.Save(req):
                out.write(chunk.data)
    except grpc.RpcError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fail_rpc(e, cl.host)
    except OSError as e:
        fail(f"failed to save to {output}: {e.strerror}")
    os.replace(tmp, output)


@click.command("load")
@options.click_options(options.LOAD)
@click.pass_context
def load(ctx: click.Context, input_: str, quiet: bool) -> None:
    """Load an image from a tar archive (docker-archive or OCI layout) or STDIN."""
    cl, stub = _stub(ctx)

    def chunks(f: Any) -> Iterator[ipb.Chunk]:
        while data := f.read(CHUNK):
            yield ipb.Chunk(data=data)

    try:
        if input_:
            try:
                with open(input_, "rb") as f:
                    r = stub.Load(chunks(f))
            except OSError as e:
                fail(f"open {input_}: {e.strerror}")
        else:
            if sys.stdin.isatty():
                fail("requested load from stdin, but stdin is empty")
            r = stub.Load(chunks(sys.stdin.buffer))
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    if quiet:
        return
    for i in r.images:
        if i.repo_tags:
            for t in i.repo_tags:
                click.echo(f"Loaded image: {t}")
        else:
            click.echo(f"Loaded image ID: {i.id}")


# --- pull, push, login ---------------------------------------------------------------------------------

class _ProgressView:
    """Per-layer progress: rich bars on a terminal, docker's status lines otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.tty = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.last: dict[str, str] = {}
        self.tasks: dict[str, Any] = {}
        self.bar: Any = None
        self.lock = threading.Lock()
        if self.tty:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), console=self.console, transient=False)
            self.bar.start()

    def update(self, p: ipb.Progress) -> None:
        if self.quiet:
            return
        if not p.id:
            if self.bar is not None:
                self.bar.console.print(p.status)
            else:
                click.echo(p.status)
            return
        if self.bar is not None:
            task = self.tasks.get(p.id)
            desc = f"{p.id}: {p.status}"
            if task is None:
                self.tasks[p.id] = self.bar.add_task(desc, total=p.total or None, completed=p.current)
            else:
                self.bar.update(task, description=desc, completed=p.current, total=p.total or None)
            return
        if self.last.get(p.id) != p.status:
            self.last[p.id] = p.status
            if p.status not in ("Downloading", "Pushing", "Extracting"):
                click.echo(f"{p.id}: {p.status}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@click.command("pull")
@options.click_options(options.PULL)
@click.argument("ref", metavar="NAME[:TAG|@DIGEST]")
@click.pass_context
def pull(ctx: click.Context, quiet: bool, ref: str) -> None:
    """Download an image from a registry."""
    from agent.images import reference

    cl, stub = _stub(ctx)
    view = _ProgressView(quiet)
    try:
        for p in stub.Pull(ipb.PullRequest(ref=ref, auth=_auth_for(_domain(ref)))):
            view.update(p)
    except grpc.RpcError as e:
        view.close()
        fail_rpc(e, cl.host)
    view.close()
    click.echo(str(reference.parse(ref)))


@click.command("push")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@click.argument("ref", metavar="NAME[:TAG]")
@click.pass_context
def push(ctx: click.Context, quiet: bool, ref: str) -> None:
    """Upload an image to a registry."""
    cl, stub = _stub(ctx)
    view = _ProgressView(quiet)
    try:
        for p in stub.Push(ipb.PushRequest(ref=ref, auth=_auth_for(_domain(ref)))):
            view.update(p)
    except grpc.RpcError as e:
        view.close()
        fail_rpc(e, cl.host)
    view.close()


@click.command("login")
@click.option("-u", "--username", default="")
@click.option("-p", "--password", default="")
@click.option("--password-stdin", is_flag=True, help="Take the password from stdin")
@click.argument("server", required=False, default="docker.io")
@click.pass_context
def login(ctx: click.Context, username: str, password: str, password_stdin: bool, server: str) -> None:
    """Log in to a registry; the credentials are kept in ~/.dockyard/config.json ($DOCKYARD_CONFIG)."""
    if password and password_stdin:
        fail("--password and --password-stdin are mutually exclusive")
    if password_stdin:
        if not username:
            fail("Must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    if password and not password_stdin:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if not username:
        username = click.prompt("Username")
    if not password:
        password = click.prompt("Password", hide_input=True)
    host = server.removeprefix("https://").removeprefix("http://").rstrip("/")
    cl, stub = _stub(ctx)
    try:
        r = stub.Login(ipb.LoginRequest(registry=host, auth=ipb.AuthConfig(username=username, password=password)))
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    data = _read_config()
    auths = data.setdefault("auths", {})
    entry: dict[str, str] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    if r.identity_token:
        entry = {"identitytoken": r.identity_token, "username": username}
    auths[_key(host)] = entry
    _write_config(data)
    click.echo(r.status or "Login Succeeded")


@click.command("logout")
@click.argument("server", required=False, default="docker.io")
def logout(server: str) -> None:
    """Log out from a registry (forget its credentials)."""
    data = _read_config()
    key = _key(server.removeprefix("https://").removeprefix("http://").rstrip("/"))
    if key not in (data.get("auths") or {}):
        click.echo(f"Not logged in to {server}")
        return
    del data["auths"][key]
    _write_config(data)
    click.echo(f"Removing login credentials for {key}")


def _cli_modules() -> list[Any]:
    """deploy.cli, and also __main__ when `python -m deploy.cli` runs it (a second module object)."""
    import deploy.cli as cli

    mods: list[Any] = [cli]
    entry = sys.modules.get("__main__")
    if entry is not None and entry is not cli and getattr(entry, "__file__", "") == cli.__file__:
        mods.append(entry)
    return mods


for _mod in _cli_modules():
    for _cmd in (build, history, save, load, pull, push):
        _mod.main.add_command(_cmd)
        _mod.image.add_command(_cmd)
    for _cmd in (system, login, logout):
        _mod.main.add_command(_cmd)
    _mod.image.add_command(prune)
    _mod.main.add_command(builder)
