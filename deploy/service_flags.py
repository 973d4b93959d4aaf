"""A ServiceSpec from `dockyard service create`'s flags (docker's), checked by the same code as stack
files (deploy/stack.py's parsers), so a bad value reads as it would in a stack file, with the flag's
name in place of the key. `service update` (deploy/service_update.py) edits a spec with the same
helpers. One function per part of the spec; build_service_spec puts them together.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from scheduler.model import (
        HealthCheck,
        MountSpec,
        NetworkAttachment,
        PlacementSpec,
        PortSpec,
        ResourceSpec,
        RestartPolicy,
        ServiceMode,
        ServiceSpec,
        UpdateConfig,
    )

Options = dict[str, Any]          # click's keyword arguments of `service create`
Duration = Callable[[str, str], "float | None"]


def flag(name: str, value: Any) -> Any:
    """A cursor for the stack parser's checks, so a bad value reads `--limit-memory: invalid size '1X'`."""
    from deploy.stack import _At

    return _At(name, "", 0, value)


def checked(read: Callable[[], Any]) -> Any:
    from deploy.stack import StackError

    try:
        return read()
    except StackError as e:
        raise click.UsageError(str(e)) from None


def publish(spec: str) -> list[Any]:
    """-p 8080:80[/udp], or docker's long form -p published=8080,target=80,protocol=udp,mode=host."""
    from deploy import stack as st
    from deploy.compose.yamlload import LineMap

    if "=" not in spec:
        return list(st._ports(flag("-p, --publish", spec)))
    fields = LineMap()
    fields.line, fields.lines = 0, {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise click.UsageError(f"-p, --publish: {spec!r}: expected KEY=VALUE pairs separated by commas")
        fields[k.strip()] = v.strip()
    return list(st._ports(flag("-p, --publish", fields)))


def pairs(values: tuple[str, ...], name: str, from_env: bool = False) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not k:
            raise click.UsageError(f"{name}: {v!r}: expected KEY=VALUE")
        if not sep:
            if from_env:
                if k not in os.environ:
                    continue  # as docker: a name alone passes the variable only when it is set
                val = os.environ[k]
            else:
                val = ""
        out[k] = val
    return tuple(sorted(out.items()))


def build_service_spec(image: str, command: tuple[str, ...], o: Options) -> ServiceSpec:
    """ServiceSpec from `service create`'s flags."""
    from deploy import stack as st
    from deploy.cli import _env_file
    from deploy.stack_files import parse_flag
    from scheduler.model import MAX_REPLICAS, ServiceMode, ServiceSpec
    from scheduler.objects import ObjectError, check_refs

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

    def duration(name: str, key: str) -> float | None:
        v = o[key]
        return None if not v else checked(lambda: st.parse_duration(flag(name, v)))

    ports = _ports(o)
    env = dict(pairs(tuple(e for f in o["env_file"] for e in _env_file(f)), "--env-file"))
    env.update(pairs(o["env"], "-e, --env", from_env=True))
    workdir = o["workdir"]
    if workdir and not workdir.startswith("/"):
        raise click.BadParameter(f"{workdir!r} is not an absolute path", param_hint="-w, --workdir")
    if o["limit_pids"] < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--limit-pids")
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
    try:
        refs = {kind: tuple(parse_flag(kind, t) for t in o[f"{kind}s"]) for kind in ("secret", "config")}
    except ObjectError as e:
        raise click.UsageError(str(e)) from None
    mounts = _mounts(o.get("mounts") or ())
    spec = ServiceSpec(
        name=name, image=image, command=command or None, entrypoint=entrypoint, env=tuple(sorted(env.items())),
        ports=ports, replicas=replicas, mode=mode, resources=_resources(o), placement=_placement(o, mode),
        update_config=_update_config(o, duration), restart_policy=_restart_policy(o, duration),
        healthcheck=_healthcheck(o, duration),
        labels=pairs(o["label"], "-l, --label"), container_labels=pairs(o["container_label"], "--container-label"),
        hostname=hostname, user=o["user"], workdir=workdir, stop_signal=stop_signal,
        stop_grace_period=duration("--stop-grace-period", "stop_grace_period"), tty=o["tty"], init=o["init"],
        pids_limit=o["limit_pids"], networks=_attachments(o), endpoint_mode=o.get("endpoint_mode", "vip"),
        secrets=refs["secret"], configs=refs["config"], mounts=mounts,
    )
    try:
        check_refs(spec)
    except ObjectError as e:
        raise click.UsageError(str(e)) from None
    return spec


def _mounts(texts: tuple[str, ...]) -> tuple[MountSpec, ...]:
    from agent.model import InvalidArgument
    from deploy.stack_volumes import flag_mounts

    try:
        return flag_mounts(texts)
    except InvalidArgument as e:
        raise click.BadParameter(str(e), param_hint="--mount") from None


def _resources(o: Options) -> ResourceSpec:
    """--limit-cpu/--limit-memory and --reserve-cpu/--reserve-memory; a reservation above its limit is refused."""
    from deploy import stack as st
    from scheduler.model import Resources, ResourceSpec

    def pair(cpu_flag: str, cpu: str, mem_flag: str, mem: str) -> Resources:
        nano = checked(lambda: st.parse_cpus(flag(cpu_flag, cpu))) if cpu else 0
        memory = checked(lambda: st.parse_size(flag(mem_flag, mem))) if mem else 0
        if mem and memory <= 0:
            raise click.BadParameter("must be more than 0", param_hint=mem_flag)
        return Resources(nano, memory)

    limits = pair("--limit-cpu", o["limit_cpu"], "--limit-memory", o["limit_memory"])
    reservations = pair("--reserve-cpu", o["reserve_cpu"], "--reserve-memory", o["reserve_memory"])
    for what, lim, res in (("cpu", limits.nano_cpus, reservations.nano_cpus),
                           ("memory", limits.memory_bytes, reservations.memory_bytes)):
        if lim and res > lim:
            raise click.UsageError(f"--reserve-{what} is more than --limit-{what}")
    return ResourceSpec(limits=limits, reservations=reservations)


def _placement(o: Options, mode: ServiceMode) -> PlacementSpec:
    """--constraint (the scheduler's constraint language), --placement-pref spread=KEY, --replicas-max-per-node."""
    from scheduler import constraints as constraint_lang
    from scheduler.model import PlacementSpec, ServiceMode

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
    return PlacementSpec(constraints=tuple(constraints), spread=tuple(spread),
                         max_replicas_per_node=o["replicas_max_per_node"])


def _ports(o: Options) -> tuple[PortSpec, ...]:
    """-p in both of docker's forms; one host port published twice is refused."""
    ports = tuple(p for spec in o["publish"] for p in checked(functools.partial(publish, spec)))
    seen: set[tuple[int, str]] = set()
    for port in ports:
        if port.published is not None:
            if (port.published, port.protocol) in seen:
                raise click.BadParameter(f"host port {port.published}/{port.protocol} published twice",
                                         param_hint="-p, --publish")
            seen.add((port.published, port.protocol))
    return ports


def _restart_policy(o: Options, duration: Duration) -> RestartPolicy:
    from dataclasses import replace

    from scheduler.model import RestartCondition, RestartPolicy

    d = RestartPolicy()
    restart = replace(d, condition=RestartCondition(o["restart_condition"] or d.condition.value),
                      delay=duration("--restart-delay", "restart_delay") or d.delay,
                      max_attempts=d.max_attempts if o["restart_max_attempts"] is None else o["restart_max_attempts"],
                      window=duration("--restart-window", "restart_window") or d.window)
    if restart.max_attempts < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--restart-max-attempts")
    return restart


def _update_config(o: Options, duration: Duration) -> UpdateConfig:
    from dataclasses import replace

    from scheduler.model import FailureAction, UpdateConfig, UpdateOrder

    d = UpdateConfig()
    update = replace(d, parallelism=d.parallelism if o["update_parallelism"] is None else o["update_parallelism"],
                     delay=duration("--update-delay", "update_delay") or d.delay,
                     order=UpdateOrder(o["update_order"] or d.order.value),
                     failure_action=FailureAction(o["update_failure_action"] or d.failure_action.value))
    if update.parallelism < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--update-parallelism")
    return update


def _healthcheck(o: Options, duration: Duration) -> HealthCheck | None:
    """--health-cmd and its timings, or --no-healthcheck; None: the image's own HEALTHCHECK."""
    from scheduler.model import HealthCheck

    if o["no_healthcheck"]:
        if o["health_cmd"] is not None:
            raise click.UsageError("--no-healthcheck conflicts with --health-* options")
        return HealthCheck(test=("NONE",), disable=True)
    if o["health_cmd"] is not None:
        if not o["health_cmd"].strip():
            raise click.BadParameter("a health command needs a command", param_hint="--health-cmd")
        d = HealthCheck()
        retries = d.retries if o["health_retries"] is None else o["health_retries"]
        if retries < 0:
            raise click.BadParameter("must be 0 or more", param_hint="--health-retries")
        return HealthCheck(test=("CMD-SHELL", o["health_cmd"]),
                           interval=duration("--health-interval", "health_interval") or d.interval,
                           timeout=duration("--health-timeout", "health_timeout") or d.timeout,
                           retries=retries,
                           start_period=duration("--health-start-period", "health_start_period") or d.start_period)
    if any(o[k] for k in ("health_interval", "health_timeout", "health_start_period")) \
            or o["health_retries"] is not None:
        raise click.UsageError("--health-interval, --health-timeout, --health-retries and --health-start-period "
                               "need --health-cmd")
    return None


def _attachments(o: Options) -> tuple[NetworkAttachment, ...]:
    """docker's --network NAME, or its long form name=NAME,alias=A[,alias=B]."""
    from deploy import stack as st
    from scheduler.model import NetworkAttachment

    out = []
    for n in o.get("networks", ()):
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
        out.append(NetworkAttachment(net, tuple(aliases)))
    return tuple(out)
