"""`dockyard stack deploy|config|ls|ps|services|rm` and `dockyard service create`, as docker has them
(added to deploy/cli.py's `main` and cli_cluster's `service` group; through the scheduler).

    dockyard stack deploy -c stack.yaml shop        # = dockyard deploy -f stack.yaml --name shop
    dockyard stack ls | ps shop | services shop | rm shop
    dockyard stack config -c stack.yaml              # the services it would deploy, as JSON, deploying nothing
    dockyard service create --name web --replicas 3 -p 8080:80 -e MODE=prod --limit-memory 256M nginx
    dockyard service create --name agent --mode global --constraint node.labels.zone==a agent:1
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
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

def _flag(flag: str, value: Any) -> Any:
    """A cursor for the stack parser's checks, so a bad value reads `--limit-memory: invalid size '1X'`."""
    from deploy.stack import _At

    return _At(flag, "", 0, value)


def _checked(read: Callable[[], Any]) -> Any:
    from deploy.stack import StackError

    try:
        return read()
    except StackError as e:
        raise click.UsageError(str(e)) from None


def _publish(spec: str) -> list[Any]:
    """-p 8080:80[/udp], or docker's long form -p published=8080,target=80,protocol=udp,mode=host."""
    from deploy import stack as st
    from deploy.compose.yamlload import LineMap

    if "=" not in spec:
        return list(st._ports(_flag("-p, --publish", spec)))
    fields = LineMap()
    fields.line, fields.lines = 0, {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise click.UsageError(f"-p, --publish: {spec!r}: expected KEY=VALUE pairs separated by commas")
        fields[k.strip()] = v.strip()
    return list(st._ports(_flag("-p, --publish", fields)))


def _pairs(values: tuple[str, ...], flag: str, from_env: bool = False) -> tuple[tuple[str, str], ...]:
    import os

    out: dict[str, str] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not k:
            raise click.UsageError(f"{flag}: {v!r}: expected KEY=VALUE")
        if not sep:
            if from_env:
                if k not in os.environ:
                    continue  # as docker: a name alone passes the variable only when it is set
                val = os.environ[k]
            else:
                val = ""
        out[k] = val
    return tuple(sorted(out.items()))


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
    from scheduler.convert import spec_to_pb

    spec = build_service_spec(image, command, o)
    info = sched(ctx).call("CreateService", spec_to_pb(spec))
    click.echo(info.name)
    if not o["detach"]:
        _converge(ctx, info.name, o["quiet"])


def build_service_spec(image: str, command: tuple[str, ...], o: dict[str, Any]) -> Any:
    """ServiceSpec from `service create`'s flags, checked by the same code as stack files."""
    from dataclasses import replace

    from deploy import stack as st
    from deploy.cli import _env_file
    from scheduler import constraints as constraint_lang
    from scheduler.model import (
        MAX_REPLICAS,
        FailureAction,
        HealthCheck,
        PlacementSpec,
        Resources,
        ResourceSpec,
        RestartCondition,
        RestartPolicy,
        ServiceMode,
        ServiceSpec,
        UpdateConfig,
        UpdateOrder,
    )

    name = o["name"]
    if not st._NAME.match(name):
        raise click.BadParameter(f"invalid service name {name!r} (letters, digits, '_', '.', '-')", param_hint="--name")
    mode = ServiceMode(o["mode"])
    if mode is ServiceMode.GLOBAL and o["replicas"] is not None:
        raise click.UsageError("--replicas can only be used with replicated mode")
    replicas = 1 if o["replicas"] is None else o["replicas"]
    if not 0 <= replicas <= MAX_REPLICAS:
        raise click.BadParameter(f"must be between 0 and {MAX_REPLICAS:,}, got {replicas:,}", param_hint="--replicas")
    if not image.strip() or any(c.isspace() for c in image):
        raise click.BadParameter(f"invalid reference format: {image!r}", param_hint="IMAGE")

    def duration(flag: str, key: str) -> float | None:
        v = o[key]
        return None if not v else _checked(lambda: st.parse_duration(_flag(flag, v)))

    def resources(cpu_flag: str, cpu: str, mem_flag: str, mem: str) -> Resources:
        nano = _checked(lambda: st.parse_cpus(_flag(cpu_flag, cpu))) if cpu else 0
        memory = _checked(lambda: st.parse_size(_flag(mem_flag, mem))) if mem else 0
        if mem and memory <= 0:
            raise click.BadParameter("must be more than 0", param_hint=mem_flag)
        return Resources(nano, memory)

    limits = resources("--limit-cpu", o["limit_cpu"], "--limit-memory", o["limit_memory"])
    reservations = resources("--reserve-cpu", o["reserve_cpu"], "--reserve-memory", o["reserve_memory"])
    for what, lim, res in (("cpu", limits.nano_cpus, reservations.nano_cpus),
                           ("memory", limits.memory_bytes, reservations.memory_bytes)):
        if lim and res > lim:
            raise click.UsageError(f"--reserve-{what} is more than --limit-{what}")
    constraints = []
    for c in o["constraint"]:
        try:
            constraints.append(constraint_lang.parse(c).text)
        except constraint_lang.ConstraintError as e:
            raise click.BadParameter(str(e), param_hint="--constraint") from None
    spread = []
    for p in o["placement_pref"]:
        kind, sep, key = p.partition("=")
        if kind != "spread" or not sep:
            raise click.BadParameter(f"{p!r}: expected spread=node.labels.NAME", param_hint="--placement-pref")
        try:
            constraint_lang.check_key(key, "spread key")
        except constraint_lang.ConstraintError as e:
            raise click.BadParameter(str(e), param_hint="--placement-pref") from None
        spread.append(key)
    if mode is ServiceMode.GLOBAL and o["replicas_max_per_node"]:
        raise click.UsageError("--replicas-max-per-node can only be used with replicated mode")
    if o["replicas_max_per_node"] < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--replicas-max-per-node")
    ports = tuple(p for spec in o["publish"] for p in _checked(functools.partial(_publish, spec)))
    seen: set[tuple[int, str]] = set()
    for port in ports:
        if port.published is not None:
            if (port.published, port.protocol) in seen:
                raise click.BadParameter(f"host port {port.published}/{port.protocol} published twice",
                                         param_hint="-p, --publish")
            seen.add((port.published, port.protocol))
    env = dict(_pairs(tuple(e for f in o["env_file"] for e in _env_file(f)), "--env-file"))
    env.update(_pairs(o["env"], "-e, --env", from_env=True))
    workdir = o["workdir"]
    if workdir and not workdir.startswith("/"):
        raise click.BadParameter(f"{workdir!r} is not an absolute path", param_hint="-w, --workdir")
    if o["limit_pids"] < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--limit-pids")
    restart = RestartPolicy()
    restart = replace(restart, condition=RestartCondition(o["restart_condition"] or restart.condition.value),
                      delay=duration("--restart-delay", "restart_delay") or restart.delay,
                      max_attempts=restart.max_attempts if o["restart_max_attempts"] is None
                      else o["restart_max_attempts"],
                      window=duration("--restart-window", "restart_window") or restart.window)
    if restart.max_attempts < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--restart-max-attempts")
    update = UpdateConfig()
    update = replace(update, parallelism=update.parallelism if o["update_parallelism"] is None
                     else o["update_parallelism"],
                     delay=duration("--update-delay", "update_delay") or update.delay,
                     order=UpdateOrder(o["update_order"] or update.order.value),
                     failure_action=FailureAction(o["update_failure_action"] or update.failure_action.value))
    if update.parallelism < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--update-parallelism")
    health = None
    if o["no_healthcheck"]:
        if o["health_cmd"] is not None:
            raise click.UsageError("--no-healthcheck conflicts with --health-* options")
        health = HealthCheck(test=("NONE",), disable=True)
    elif o["health_cmd"] is not None:
        if not o["health_cmd"].strip():
            raise click.BadParameter("a health command needs a command", param_hint="--health-cmd")
        d = HealthCheck()
        retries = d.retries if o["health_retries"] is None else o["health_retries"]
        if retries < 0:
            raise click.BadParameter("must be 0 or more", param_hint="--health-retries")
        health = HealthCheck(test=("CMD-SHELL", o["health_cmd"]),
                             interval=duration("--health-interval", "health_interval") or d.interval,
                             timeout=duration("--health-timeout", "health_timeout") or d.timeout,
                             retries=retries,
                             start_period=duration("--health-start-period", "health_start_period") or d.start_period)
    elif any(o[k] for k in ("health_interval", "health_timeout", "health_start_period")) \
            or o["health_retries"] is not None:
        raise click.UsageError("--health-interval, --health-timeout, --health-retries and --health-start-period "
                               "need --health-cmd")
    stop_signal = o["stop_signal"]
    if stop_signal and not st._SIGNAL.match(stop_signal):
        raise click.BadParameter(f"invalid signal {stop_signal!r}", param_hint="--stop-signal")
    hostname = o["hostname"]
    if hostname and not st._HOSTNAME.match(hostname):
        raise click.BadParameter(f"invalid hostname {hostname!r}", param_hint="--hostname")
    entrypoint = None if o["entrypoint"] is None else ((o["entrypoint"],) if o["entrypoint"] else ())
    meshed = next((p for p in ports if p.meshed), None)
    if o.get("endpoint_mode") == "dnsrr" and meshed is not None:
        raise click.UsageError(f"port {meshed.published}/{meshed.protocol} is published in ingress mode, which needs "
                               "--endpoint-mode vip (publish it with mode=host for dnsrr)")
    from scheduler.model import NetworkAttachment

    attachments = []
    for n in o.get("networks", ()):
        # docker's --network NAME, or its long form name=NAME,alias=A[,alias=B]
        fields = dict.fromkeys(("name",), "") if "=" in n else {"name": n}
        aliases: list[str] = []
        if "=" in n:
            for part in n.split(","):
                k, _, v = part.partition("=")
                if k == "alias":
                    aliases.append(v)
                elif k == "name":
                    fields["name"] = v
                else:
                    raise click.BadParameter(f"{n!r}: unknown field {k!r} (name=NET,alias=A)", param_hint="--network")
        net = fields["name"]
        for x in (net, *aliases):
            if not st._NAME.match(x):
                raise click.BadParameter(f"{n!r}: invalid name {x!r}", param_hint="--network")
        attachments.append(NetworkAttachment(net, tuple(aliases)))
    from deploy.stack_files import parse_flag
    from scheduler.objects import ObjectError, check_refs

    try:
        refs = {kind: tuple(parse_flag(kind, t) for t in o[f"{kind}s"]) for kind in ("secret", "config")}
    except ObjectError as e:
        raise click.UsageError(str(e)) from None
    spec = ServiceSpec(
        name=name, image=image, command=command or None, entrypoint=entrypoint, env=tuple(sorted(env.items())),
        ports=ports, replicas=replicas, mode=mode,
        resources=ResourceSpec(limits=limits, reservations=reservations),
        placement=PlacementSpec(constraints=tuple(constraints), spread=tuple(spread),
                                max_replicas_per_node=o["replicas_max_per_node"]),
        update_config=update, restart_policy=restart, healthcheck=health,
        labels=_pairs(o["label"], "-l, --label"), container_labels=_pairs(o["container_label"], "--container-label"),
        hostname=hostname, user=o["user"], workdir=workdir, stop_signal=stop_signal,
        stop_grace_period=duration("--stop-grace-period", "stop_grace_period"), tty=o["tty"], init=o["init"],
        pids_limit=o["limit_pids"], networks=tuple(attachments), endpoint_mode=o.get("endpoint_mode", "vip"),
        secrets=refs["secret"], configs=refs["config"],
    )
    try:
        check_refs(spec)
    except ObjectError as e:
        raise click.UsageError(str(e)) from None
    return spec


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
