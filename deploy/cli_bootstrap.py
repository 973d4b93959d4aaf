"""`dockyard cluster up|down|status -i hosts.yaml` (added to deploy/cli.py's `main`): a cluster of
hosts bootstrapped over SSH; the work is in deploy/bootstrap.py, this is its face (rich progress
per host, a table of processes, exit codes: 0 done, 1 a host or a step failed, 2 a bad inventory).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from deploy import bootstrap as b


class RichReporter:
    """One line per finished step, a spinner per host while a step runs (on a terminal)."""

    def __init__(self, console: Console, hosts: list[str]) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.width = max((len(h) for h in hosts), default=4)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.tasks = {h: self.progress.add_task(f"{h:<{self.width}}  waiting", total=None) for h in hosts}
        self.started: dict[tuple[str, str], float] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, host: str, step: str) -> None:
        self.started[host, step] = time.monotonic()
        self.progress.update(self.tasks[host], description=f"{host:<{self.width}}  {step}...")

    def _took(self, host: str, step: str) -> str:
        t = self.started.get((host, step))
        return f" [dim]({time.monotonic() - t:.1f} s)[/]" if t is not None else ""

    def ok(self, host: str, step: str, detail: str = "") -> None:
        self.progress.console.print(f"[green]✓[/] {host:<{self.width}}  {step}: {detail}{self._took(host, step)}",
                                    highlight=False)
        self.progress.update(self.tasks[host], description=f"{host:<{self.width}}  {step} done")

    def failed(self, host: str, step: str, message: str) -> None:
        took = self._took(host, step)
        self.progress.console.print(f"[red]✗[/] {host:<{self.width}}  {step} [bold red]failed[/]{took}: ",
                                    end="", highlight=False)
        self.progress.console.print(message, markup=False, highlight=False)  # logs may hold [brackets]
        self.progress.update(self.tasks[host], description=f"{host:<{self.width}}  {step} FAILED")


def _load(path: str) -> b.Inventory:
    try:
        return b.load_inventory(path)
    except b.InventoryError as e:
        click.echo(f"dockyard cluster: bad inventory:\n{e}", err=True)
        sys.exit(2)


def _options(timeout: float, install: bool = True) -> b.Options:
    return b.Options(install=install, connect_timeout=timeout)


def _console() -> Console:
    return Console(stderr=False, highlight=False)


def _report(failed: list[b.StepFailed], console: Console, what: str) -> None:
    if not failed:
        return
    console.print(f"[bold red]{what} failed[/] on {len(failed)} host(s):", highlight=False)
    for f in failed:
        console.print(f"  {f.host}: {f.step}: ", end="", highlight=False)
        console.print(f.message.splitlines()[0] if f.message else "", markup=False, highlight=False)
    sys.exit(1)


@click.group("cluster")
def cluster() -> None:
    """A cluster of hosts over SSH: up, status, down (see deploy/examples/hosts.yaml)."""


inventory_opt = click.option("-i", "--inventory", required=True, type=click.Path(dir_okay=False),
                             help="The hosts (YAML): address, user, port, key, role, labels")
timeout_opt = click.option("--timeout", default=15.0, show_default=True, help="SSH connect timeout per host, seconds")


@cluster.command("up")
@inventory_opt
@timeout_opt
@click.option("--install/--no-install", default=True, show_default=True,
              help="Run deploy/install.sh on every host (--no-install: assume it is installed)")
@click.option("--ready-timeout", default=60.0, show_default=True, help="Seconds a scheduler or agent has to be ready")
@click.option("--tls", is_flag=True, help="Mutual TLS, the default: agents joined by the worker token, the "
              "admin bundle next to the inventory (and in ~/.dockyard when that has none); with 3 hosts or more "
              "our etcd members use peer TLS and client certificates of etcd's own CA (kept in <inventory>.etcd-ca)")
@click.option("--insecure", is_flag=True, help="Plaintext and no authentication on every scheduler and agent port")
def cluster_up(inventory: str, timeout: float, install: bool, ready_timeout: float, tls: bool = False,
               insecure: bool = False) -> None:
    """Copy the project to every host, install it, start the scheduler(s) and an agent per host.

    Safe to run again: what is running stays running. When a host or a step fails, nothing is
    started (or what this run started is stopped again) and the host and the step are named."""
    from deploy.cli_cluster import secure_by_default

    tls = secure_by_default(tls, insecure, "every scheduler and agent of the inventory serves without TLS or "
                                           "authentication: anyone who can reach a port owns the cluster")
    inv = _load(inventory)
    console = _console()
    try:
        bundle = b.make_bundle()
    except OSError as e:
        click.echo(f"dockyard cluster up: cannot bundle the project: {e}", err=True)
        sys.exit(1)
    admin = Path(inventory).resolve().with_suffix(".admin") if tls else None
    inv.tls = tls
    # etcd's own CA (for a 3-member etcd of ours) stays with the operator, beside the admin bundle.
    etcd_ca = Path(inventory).resolve().with_suffix(".etcd-ca") if tls else None
    o = b.Options(install=install, connect_timeout=timeout, ready_timeout=ready_timeout, admin_dir=admin,
                  etcd_ca_dir=etcd_ca)
    with RichReporter(console, [h.name for h in inv.hosts]) as r:
        failed = asyncio.run(b.up(inv, r, o, bundle))
    if failed:
        _report(failed, console, "cluster up")
    if admin is not None:
        from common import pki
        from deploy.up import offer_admin_bundle

        offer_admin_bundle(admin, pki.read_bundle(admin))
    console.print(f"[bold green]cluster up[/]: {len(inv.schedulers)} scheduler(s), {len(inv.hosts)} agent(s). "
                  f"Try: dockyard --scheduler {inv.join} node ls", highlight=False, soft_wrap=True)


@cluster.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="Make a new token: the old one is refused from now on")
@click.option("-q", "--quiet", is_flag=True, help="Print the token only")
@click.pass_context
def join_token(ctx: click.Context, role: str, rotate: bool, quiet: bool) -> None:
    """Print the token that joins a node to this cluster as a worker (agent) or a manager (scheduler)."""
    from deploy.cli_cluster import sched
    from protos import cluster_pb2 as pb

    token = sched(ctx).call("JoinToken", pb.JoinTokenRequest(role=role, rotate=rotate)).token
    if quiet:
        click.echo(token)
        return
    what = "an agent" if role == "worker" else "a scheduler replica"
    click.echo(f"To add {what} to this cluster, run:\n\n    dockyard agent --join HOST:PORT --token {token}\n"
               if role == "worker" else f"The {role} token (for {what}):\n\n    {token}\n")


@cluster.command("ca")
@click.option("--rotate", is_flag=True, help="Make a new root CA: trusted beside the old one, every node re-issued "
              "from it at its next heartbeat, both join tokens made anew; no task stops")
@click.option("--finish", is_flag=True, help="After --rotate, once every node is re-issued: trust the new root alone "
              "(refused, naming them, while a node still serves a certificate of the old one)")
@click.pass_context
def cluster_ca(ctx: click.Context, rotate: bool, finish: bool) -> None:
    """Rotate the cluster's root CA (`--rotate`, then `--finish`)."""
    from deploy.cli_cluster import sched
    from protos import cluster_pb2 as pb

    if rotate == finish:
        raise click.UsageError("say --rotate (a new root CA) or --finish (drop the old root after a rotation)")
    if finish:
        r = sched(ctx).call("FinishCARotation", pb.Empty())
        click.echo(f"only root CA {r.digest[:12]}... is trusted now ({r.nodes} node(s) serve its certificates).\n"
                   "The scheduler rewrote its admin bundle (<state-dir>/client): copy it again where the CLI reads it.")
        return
    r = sched(ctx).call("RotateCA", pb.Empty())
    click.echo(f"new root CA {r.digest[:12]}...: {r.nodes} node(s) are re-issued from it at their next heartbeat.\n"
               "Both join tokens were made anew (`dockyard cluster join-token worker`); the old ones join nothing.\n"
               "The scheduler rewrote its admin bundle (<state-dir>/client): copy it again where the CLI reads it.")


@cluster.command("down")
@inventory_opt
@timeout_opt
def cluster_down(inventory: str, timeout: float) -> None:
    """Stop the agents, then the scheduler(s), on every host (by the PIDs `up` recorded).
    Containers keep running under their shims, as when an agent restarts."""
    inv = _load(inventory)
    console = _console()
    with RichReporter(console, [h.name for h in inv.hosts]) as r:
        failed = asyncio.run(b.down(inv, r, _options(timeout)))
    _report(failed, console, "cluster down")
    console.print("[bold green]cluster down[/]: stopped", highlight=False)


def _uptime(s: Any) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@cluster.command("status")
@inventory_opt
@timeout_opt
@click.option("--format", "fmt", default="", help="'json' for JSON")
def cluster_status(inventory: str, timeout: float, fmt: str) -> None:
    """Each host's dockyard processes: pid, running or not, uptime, log file."""
    inv = _load(inventory)
    console = _console()
    found, failed = asyncio.run(b.status(inv, b.QuietReporter(), _options(timeout)))
    errors = {f.host: f"{f.step}: {f.message}" for f in failed}
    if fmt == "json":
        import json

        click.echo(json.dumps({h.name: found.get(h.name, {"error": errors.get(h.name, "")}) for h in inv.hosts},
                              indent=2))
        sys.exit(1 if failed else 0)
    table = Table(box=None, header_style="bold")
    for col in ("HOST", "ADDRESS", "ROLE", "PROCESS", "PID", "STATE", "UPTIME", "LOG"):
        table.add_column(col)
    for h in inv.hosts:
        if h.name in errors:
            table.add_row(h.name, h.address, h.role, "-", "-", f"[red]unreachable[/]: {errors[h.name]}", "-", "-")
            continue
        procs = found.get(h.name, {})
        wanted = ["scheduler", "agent"] if h.is_scheduler else ["agent"]
        for name in wanted + sorted(set(procs) - set(wanted)):
            p = procs.get(name)
            if p is None:
                table.add_row(h.name, h.address, h.role, name, "-", "[yellow]not started[/]", "-", "-")
            else:
                state = "[green]running[/]" if p["running"] else "[red]dead[/] (pid file left)"
                table.add_row(h.name, h.address, h.role, name, str(p["pid"]), state, _uptime(p["uptime"]), p["log"])
    console.print(table)
    sys.exit(1 if failed else 0)


def _cli_modules() -> list[Any]:
    """deploy.cli, and also __main__ when `python -m deploy.cli` runs it (a second module object)."""
    import deploy.cli as cli

    mods: list[Any] = [cli]
    entry = sys.modules.get("__main__")
    if entry is not None and entry is not cli and getattr(entry, "__file__", "") == cli.__file__:
        mods.append(entry)
    return mods


for _mod in _cli_modules():
    _mod.main.add_command(cluster)
