"""`dockyard stack deploy|config|ls|ps|services|rm` and `dockyard service create`, as docker has them
(added to deploy/cli.py's `main` and cli_cluster's `service` group; through the scheduler).

    dockyard stack deploy -c stack.yaml shop        # = dockyard deploy -f stack.yaml --name shop
    dockyard stack ls | ps shop | services shop | rm shop
    dockyard stack config -c stack.yaml              # the services it would deploy, as JSON, deploying nothing
    dockyard service create --name web --replicas 3 -p 8080:80 -e MODE=prod --limit-memory 256M nginx
    dockyard service create --name agent --mode global --constraint node.labels.zone==a agent:1
"""

from __future__ import annotations

import time
from typing import Any

import click

from deploy import display
from deploy.cli_cluster import (
    _json_or_table,
    deploy_stack,
    fail,
    load_stacks,
    sched,
    service,
    service_ls,
    service_ps,
    stack_rm,
)
from protos import cluster_pb2 as pb


@click.group("stack")
def stack() -> None:
    """Manage stacks (Compose files deployed as services)."""


@stack.command("deploy")
@click.option("-c", "--compose-file", "files", multiple=True, required=True, help="Path to a Compose file")
@click.option("--prune", is_flag=True, help="Prune services that are no longer referenced")
@click.argument("name", required=False)
@click.pass_context
def stack_deploy(ctx: click.Context, files: tuple[str, ...], prune: bool, name: str | None) -> None:
    """Deploy a new stack or update an existing stack (NAME, or `name:` in the file)."""
    deploy_stack(ctx, files, name, prune)


@stack.command("config")
@click.option("-c", "--compose-file", "files", multiple=True, required=True, help="Path to a Compose file")
@click.argument("name", required=False)
def stack_config(files: tuple[str, ...], name: str | None) -> None:
    """Print the services a deploy would make (variables interpolated, defaults filled in), as JSON."""
    from scheduler import codec

    stack_name, specs = load_stacks(files, name)
    display.emit_json({"name": stack_name, "services": [codec.encode(s) for s in specs.values()]})


def _services_of(ctx: click.Context, stack_name: str) -> list[Any]:
    r = sched(ctx).call("ListServices", pb.ListServicesRequest(stack=stack_name))
    if not r.services:
        fail(f"nothing found in stack: {stack_name}")
    return list(r.services)


@stack.command("ls")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.pass_context
def stack_ls(ctx: click.Context, fmt: str) -> None:
    """List stacks."""
    r = sched(ctx).call("ListServices", pb.ListServicesRequest())
    counts: dict[str, int] = {}
    for s in r.services:
        if s.stack:
            counts[s.stack] = counts.get(s.stack, 0) + 1
    items = [{"name": k, "services": v} for k, v in sorted(counts.items())]
    _json_or_table(fmt, items, ["NAME", "SERVICES"], lambda it: [it["name"], it["services"]])


@stack.command("services")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.argument("name")
@click.pass_context
def stack_services(ctx: click.Context, fmt: str, name: str) -> None:
    """List the services in the stack."""
    _services_of(ctx, name)
    ctx.invoke(service_ls, fmt=fmt, stack=name)


@stack.command("ps")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.option("--no-trunc", is_flag=True)
@click.option("--running", is_flag=True, help="Only tasks wanted running (hide the history)")
@click.argument("name")
@click.pass_context
def stack_ps(ctx: click.Context, fmt: str, no_trunc: bool, running: bool, name: str) -> None:
    """List the tasks in the stack."""
    names = tuple(s.name for s in _services_of(ctx, name))
    ctx.invoke(service_ps, fmt=fmt, no_trunc=no_trunc, running=running, services=names)


stack.add_command(stack_rm, "rm")


# --- service create --------------------------------------------------------------------------------


@service.command("create", context_settings={"allow_interspersed_args": False})
@click.option("--name", required=True, help="Service name")
@click.option("--replicas", type=int, default=None, help="Number of tasks (replicated mode)")
@click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated", show_default=True,
              help="Service mode: replicated, or global (one task on every node that fits)")
@click.option("-p", "--publish", multiple=True,
              help="Publish a port on every node (routing mesh): 8080:80[/udp], or published=8080,target=80[,mode=host]")
@click.option("--network", "networks", multiple=True, help="Network attachments (cluster networks)")
@click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]), default="vip", show_default=True,
              help="Endpoint mode: one virtual IP for the service, or DNS round robin over its tasks")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("--env-file", multiple=True, help="Read in a file of environment variables")
@click.option("-l", "--label", multiple=True, help="Service labels")
@click.option("--container-label", multiple=True, help="Container labels")
@click.option("--constraint", multiple=True, help="Placement constraints: node.labels.zone==a, node.hostname!=h1")
@click.option("--placement-pref", multiple=True, help="Placement preferences: spread=node.labels.zone")
@click.option("--replicas-max-per-node", type=int, default=0, help="Maximum number of tasks per node (0 = no limit)")
@click.option("--limit-cpu", default="", help="Limit CPUs")
@click.option("--limit-memory", default="", help="Limit memory")
@click.option("--limit-pids", type=int, default=0, help="Limit the number of processes (0 = no limit)")
@click.option("--reserve-cpu", default="", help="Reserve CPUs")
@click.option("--reserve-memory", default="", help="Reserve memory")
@click.option("-w", "--workdir", default="", help="Working directory inside the container")
@click.option("-u", "--user", default="", help="Username or UID (format: <name|uid>[:<group|gid>])")
@click.option("--hostname", default="", help="Container hostname")
@click.option("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT of the image")
@click.option("--init", is_flag=True, help="Use an init inside each service container to forward signals and reap processes")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY")
@click.option("--stop-signal", default="", help="Signal to stop the container")
@click.option("--stop-grace-period", default="", help="Time to wait before force killing a container (ns|us|ms|s|m|h)")
@click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"]), default=None,
              help="Restart when condition is met (default any)")
@click.option("--restart-delay", default="", help="Delay between restart attempts (ns|us|ms|s|m|h)")
@click.option("--restart-max-attempts", type=int, default=None, help="Maximum number of restarts before giving up")
@click.option("--restart-window", default="", help="Window used to evaluate the restart policy (ns|us|ms|s|m|h)")
@click.option("--update-parallelism", type=int, default=None, help="Maximum number of tasks updated simultaneously")
@click.option("--update-delay", default="", help="Delay between updates (ns|us|ms|s|m|h)")
@click.option("--update-order", type=click.Choice(["stop-first", "start-first"]), default=None)
@click.option("--update-failure-action", type=click.Choice(["pause", "continue", "rollback"]), default=None)
@click.option("--health-cmd", default=None, help="Command to run to check health")
@click.option("--health-interval", default="", help="Time between running the check (ms|s|m|h)")
@click.option("--health-timeout", default="", help="Maximum time to allow one check to run (ms|s|m|h)")
@click.option("--health-retries", type=int, default=None, help="Consecutive failures needed to report unhealthy")
@click.option("--health-start-period", default="", help="Start period for the container to initialize (ms|s|m|h)")
@click.option("--no-healthcheck", is_flag=True, help="Disable any container-specified HEALTHCHECK")
@click.option("--mount", "mounts", multiple=True,
              help="Attach a filesystem mount to the service: type=volume|bind|tmpfs,src=...,dst=...[,readonly]")
@click.option("--secret", "secrets", multiple=True,
              help="Specify secrets to expose to the service: NAME or source=NAME,target=T,uid=,gid=,mode=")
@click.option("--config", "configs", multiple=True,
              help="Specify configurations to expose to the service: NAME or source=NAME,target=/PATH,uid=,gid=,mode=")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the service to converge")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def service_create(ctx: click.Context, /, image: str, command: tuple[str, ...], **o: Any) -> None:
    """Create a new service."""
    from deploy.service_flags import build_service_spec
    from scheduler.convert import spec_to_pb

    spec = build_service_spec(image, command, o)
    info = sched(ctx).call("CreateService", spec_to_pb(spec))
    click.echo(info.name)
    if not o["detach"]:
        _converge(ctx, info.name, o["quiet"])


def _converge(ctx: click.Context, name: str, quiet: bool, timeout: float = 120.0) -> None:
    """As docker's service create without -d: wait until every task wanted runs; stop at a task that
    fails or is rejected, and say why tasks are pending while it waits."""
    start = time.monotonic()
    last = ""
    while True:
        info = sched(ctx).call("InspectService", pb.ServiceRef(name=name))
        tasks = sched(ctx).call("ListTasks", pb.ListTasksRequest(services=[name], all=False)).tasks
        pending = [t.error for t in tasks if t.state == "pending" and t.error]
        line = f"overall progress: {info.running} out of {info.replicas} tasks" + (f" ({pending[0]})" if pending else "")
        if line != last and not quiet:
            click.echo(line, err=True)
            last = line
        # a global service's count is its tasks: none yet may only mean the leader has not placed them
        settled = info.replicas > 0 or info.mode != "global" or time.monotonic() - start > 3
        if info.running >= info.replicas and settled:
            if not quiet:
                click.echo("verify: Service converged", err=True)
            return
        bad = [t for t in tasks if t.state in ("rejected", "failed") and t.desired_state == "running"]
        if bad:
            fail(f"{bad[0].name}: {bad[0].state}: {bad[0].error} (the service exists: see "
                 f"`dockyard service ps {name}`)")
        if time.monotonic() - start > timeout:
            fail(f"{name} did not converge in {timeout:.0f} s" + (f": {pending[0]}" if pending else "")
                 + f" (the service exists: see `dockyard service ps {name}`)")
        time.sleep(0.3)


def _install() -> None:
    from deploy.cli_cluster import _cli_modules

    for mod in _cli_modules():
        mod.main.add_command(stack)


_install()
