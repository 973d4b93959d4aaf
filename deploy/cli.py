"""`dockyard`: docker's verbs and flags on one host (through the local agent's socket).

The agent is found with -H/--host unix:///path or DOCKYARD_HOST, as docker uses DOCKER_HOST.
Errors from the agent are printed as "Error response from daemon: ..." with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click
import grpc

from common import settings, transport
from deploy import containers, display, options
from deploy.containers import start_error_code
from deploy.entry import DEFAULT_HOST, VERSION
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg

CHUNK = 256 * 1024


class Client:
    def __init__(self, host: str) -> None:
        self.host = host
        self.channel = transport.dial_blocking(host, transport.CLI, transport.Role.AGENT)
        self.stub = pbg.AgentStub(self.channel)  # type: ignore[no-untyped-call]

    def call(self, method: str, request: Any, **kw: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, **kw)
        except grpc.RpcError as e:
            fail_rpc(e, self.host)


def fail_rpc(e: grpc.RpcError, host: str) -> NoReturn:
    code = e.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE:
        fail(f"Cannot connect to the dockyard agent at {host}. Is the agent running? "
             f"({e.details()})")  # type: ignore[attr-defined]
    fail(f"Error response from daemon: {e.details()}")  # type: ignore[attr-defined]


def fail(msg: str, code: int | None = None) -> NoReturn:
    """Print and exit: with `code`, else the command's exit status for its own errors (1; `run`'s
    is 125, as docker's, so that they do not pass for the container's)."""
    if code is None:
        ctx = click.get_current_context(silent=True)
        code = int((ctx.find_root().obj or {}).get("error_exit", 1)) if ctx is not None else 1
    click.echo(msg, err=True)
    sys.exit(code)


class _RunUsageError(click.UsageError):
    exit_code = 125


class RunCommand(click.Command):
    """`run`: its own errors, a bad flag included, exit 125 as docker's do (see fail)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.find_root().obj = {**(ctx.find_root().obj or {}), "error_exit": 125}
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _RunUsageError(e.format_message(), e.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if isinstance(e, _RunUsageError):
                raise
            raise _RunUsageError(e.format_message(), e.ctx) from None


def client(ctx: click.Context) -> Client:
    obj = ctx.find_root().obj
    if "client" not in obj:
        obj["client"] = Client(obj["host"])
    c: Client = obj["client"]
    return c


# Commands other modules add to `main`, imported only when one of them runs (or --help lists
# them all): command -> the modules that define it or add to it (`image ls` is here, `image
# build` in cli_images; exec's route through the scheduler is cli_cluster's). A new command
# module: list its commands here; it adds them to main itself, as cli_images.py does.
_IMAGES, _CLUSTER, _GROUPS = "deploy.cli_images", "deploy.cli_cluster", "deploy.cli_groups"
LAZY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("build", "builder", "history", "save", "load", "pull", "push", "login", "logout"), (_IMAGES,)),
    **dict.fromkeys(("image", "system"), (_IMAGES, _GROUPS)),
    **dict.fromkeys(("scheduler", "node", "deploy", "stack-rm", "rebalance", "migrations", "exec"), (_CLUSTER,)),
    "service": (_CLUSTER, "deploy.cli_stack"),
    "stack": ("deploy.cli_stack",),
    "container": (_GROUPS,),
    "network": (_GROUPS, "deploy.cli_network"),
    "cluster": ("deploy.cli_bootstrap",),
    "volume": ("deploy.cli_volumes",),
    **dict.fromkeys(("secret", "config"), ("deploy.cli_objects",)),
}


class _Commands(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in LAZY.get(cmd_name, ()):
            importlib.import_module(module)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted({m for ms in LAZY.values() for m in ms}):
            importlib.import_module(module)
        return super().list_commands(ctx)


@click.group(cls=_Commands, context_settings={"help_option_names": ["--help"]})
@click.option("-H", "--host", envvar="DOCKYARD_HOST", default=DEFAULT_HOST, show_default=True,
              help="The agent to talk to: unix:///path/to/agent.sock or tcp://host:port")
@click.option("--scheduler", envvar="DOCKYARD_SCHEDULER", default="",
              help="Scheduler replica(s) for cluster commands: HOST:PORT[,HOST:PORT...]")
@click.version_option(VERSION, prog_name="dockyard")
@click.pass_context
def main(ctx: click.Context, host: str, scheduler: str) -> None:
    """dockyard: containers on one host, and a cluster of hosts."""
    ctx.obj = {"host": host, "scheduler": scheduler}


# --- the agent --------------------------------------------------------------------------------

@main.command("agent", context_settings=settings.context("agent"))
@settings.config_option("agent")
@click.option("--config-file", default=None,
              help=f"docker's daemon.json: registry-mirrors, insecure-registries, data-root, default-ulimits, "
                   f"log-driver, log-opts, dns, dns-search, dns-opts, bip (default: {settings.DAEMON_JSON}, if it exists)")
@click.option("--root", "--data-root", "root", default=settings.ROOT, show_default=True, help="State directory")
@click.option("--socket", "sock", default=settings.AGENT_SOCKET, show_default=True)
@click.option("--listen", default="", help="Also serve on TCP host:port")
@click.option("--name", default="", help="Node name (default: the hostname)")
@click.option("--bridge", default=settings.BRIDGE, show_default=True)
@click.option("--subnet", default=settings.SUBNET, show_default=True)
@click.option("--cgroup-parent", default=None)
@click.option("--label", "labels", multiple=True, help="Node label k=v")
@click.option("--metrics-addr", default=settings.AGENT_METRICS, show_default=True,
              help='HOST:PORT for Prometheus /metrics over HTTP; "" disables it')
@click.option("--join", default="", help="Join the cluster of these scheduler(s): HOST:PORT[,HOST:PORT...]")
@click.option("--advertise", default="", help="HOST:PORT the scheduler reaches this agent at (default: --listen)")
@click.option("--token", default="", envvar="DOCKYARD_JOIN_TOKEN",
              help="Join token (`dockyard cluster join-token worker`): mutual TLS with the scheduler")
@click.option("--insecure", is_flag=True, help="Join an --insecure scheduler, and serve --listen, in plaintext with "
              "no authentication: anyone who reaches the port is root on this host")
@click.option("--cgroup-favor-dynmods", is_flag=True,
              help="Make cgroup joins cheap (kernel favordynmods; forks and exits host-wide pay a little)")
@click.option("--docker-socket", default=settings.DOCKER_SOCKET, show_default=True,
              help='Serve Docker\'s Engine API (docker, docker-py, compose) on this unix socket; "" serves none')
@click.option("--docker-tcp", default="", help="Also serve Docker's API on loopback TCP HOST:PORT (no TLS yet)")
@click.option("--max-layer-size", default="",
              help="Refuse a layer that expands to more than this on import, load, pull or restore (e.g. 10g; "
                   "default: no bound, as docker)")
@click.option("--max-image-size", default="", help="The same for all the layers of one image")
@click.option("--min-free-disk", type=click.FloatRange(0, 99), default=settings.MIN_FREE_DISK, show_default=True,
              help="Percent of the state directory's disk kept free: below it the agent creates and restores no "
                   "container and the scheduler places nothing here (0: no check)")
@click.option("--ip-forward", type=bool, default=True, show_default=True,
              help="Turn on net.ipv4.ip_forward (published ports from other hosts, the routing mesh); as docker's")
@click.option("--ip-masq", type=bool, default=True, show_default=True,
              help="Masquerade the containers' subnet so they reach beyond the host; as docker's")
@click.option("--metrics-tls", is_flag=True,
              help="Serve /metrics over HTTPS with this node's certificate, scrapers showing a cluster one")
@click.option("--registry-mirror", "registry_mirrors", multiple=True,
              help="A registry mirror for docker.io images, tried before Docker Hub (http(s)://host[:port])")
@click.option("--insecure-registry", "insecure_registries", multiple=True,
              help="A registry (host[:port] or CIDR) reached without verifying TLS, or over plain HTTP")
@click.option("--log-driver", default=settings.LOG_DRIVER, show_default=True,
              help="The containers' default log driver: json-file, local, none")
@click.option("--log-opt", "log_opts", multiple=True, help="Default log driver options: max-size=10m, max-file=3, ...")
@click.option("--default-ulimit", "default_ulimits", multiple=True,
              help="Default ulimits for containers: NAME=SOFT[:HARD]")
@click.option("--dns", multiple=True, help="DNS servers for containers that name none")
@click.option("--dns-search", multiple=True, help="DNS search domains for containers that name none")
@click.option("--dns-opt", "dns_options", multiple=True, help="resolv.conf options for containers that name none")
@click.option("--bip", default="", help="The bridge's address and prefix (172.29.0.1/16), as --subnet")
def agent_cmd(root: str, sock: str, listen: str, name: str, bridge: str, subnet: str,
              cgroup_parent: str | None, labels: tuple[str, ...], metrics_addr: str, join: str = "",
              advertise: str = "", token: str = "", insecure: bool = False, cgroup_favor_dynmods: bool = False,
              docker_socket: str = "",
              docker_tcp: str = "", max_layer_size: str = "", max_image_size: str = "", ip_forward: bool = True,
              ip_masq: bool = True, metrics_tls: bool = False, config_file: str | None = None,
              min_free_disk: float = settings.MIN_FREE_DISK, **engine_values: Any) -> None:
    """Run the per-host agent."""
    import socket as _socket

    from agent import engine
    from agent.daemon import AgentOptions, run
    from common.http import parse_addr

    # docker's daemon.json: its keys stand for flags; one given both ways is refused, as dockerd does
    ctx = click.get_current_context()
    values: dict[str, Any] = {"root": root, "subnet": subnet, **engine_values}
    from_file: dict[str, Any] = {}
    path = config_file if config_file is not None else (settings.DAEMON_JSON if os.path.exists(settings.DAEMON_JSON)
                                                         else "")
    if path:
        try:
            from_file = settings.load_daemon_json(path)
        except settings.SettingsError as e:
            raise click.BadParameter(str(e), param_hint="--config-file") from None
        def show(v: Any) -> str:
            return ", ".join(v) if isinstance(v, tuple) else str(v)

        both = [f"{settings.daemon_option_name(p)}: (from flag: {show(values[p])}, from file: {show(v)})"
                for p, v in from_file.items() if ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT]
        if both:
            raise click.UsageError(f"unable to configure the agent with file {path}: the following directives are "
                                   f"specified both as a flag and in the configuration file: {', '.join(both)}")
        values.update(from_file)

    def origin(param: str) -> str:
        if param in from_file:
            return f"{path}: {settings.daemon_option_name(param)}"
        return "--" + {"registry_mirrors": "registry-mirror", "insecure_registries": "insecure-registry",
                       "log_opts": "log-opt", "default_ulimits": "default-ulimit", "dns_options": "dns-opt"}.get(param, param.replace("_", "-"))

    root = values["root"]
    try:
        eng = engine.settings(values, origin)
        if values.get("bip"):
            if ctx.get_parameter_source("subnet") != click.core.ParameterSource.DEFAULT:
                raise engine.EngineSettingError(f"{origin('bip')} and --subnet: give one of them")
            try:
                subnet = engine.bridge_subnet(values["bip"])
            except engine.EngineSettingError as e:
                raise engine.EngineSettingError(f"{origin('bip')}: {e}") from None
    except engine.EngineSettingError as e:
        raise click.UsageError(str(e)) from None

    if metrics_addr:
        try:
            parse_addr(metrics_addr)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--metrics-addr") from None
    if docker_tcp:
        from agent.dockerapi import parse_tcp

        try:
            parse_tcp(docker_tcp)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--docker-tcp") from None

    if join and not listen:
        listen = settings.AGENT_JOIN_LISTEN  # --join implies --listen: the scheduler calls the agent over TCP
    if insecure and token:
        raise click.UsageError("--token and --insecure: a join token joins over mutual TLS; give one of them")
    if insecure and listen:
        click.echo(f"WARNING: --insecure: the agent serves {listen} without TLS or authentication: "
                   "anyone who can reach it is root on this host.", err=True)
    run(AgentOptions(root=root, socket=sock, listen=listen, name=name or _socket.gethostname(),
                     bridge=bridge, subnet=subnet, cgroup_parent=cgroup_parent,
                     labels=dict(label.partition("=")[::2] for label in labels), metrics_addr=metrics_addr,
                     join=join, advertise=advertise, token=token, insecure=insecure,
                     cgroup_favor_dynmods=cgroup_favor_dynmods,
                     docker_socket=docker_socket, docker_tcp=docker_tcp, ip_forward=ip_forward, ip_masq=ip_masq,
                     metrics_tls=metrics_tls, engine=eng, config_file=path, min_free_disk=min_free_disk,
                     max_layer_size=display.parse_size(max_layer_size, "--max-layer-size") if max_layer_size else None,
                     max_image_size=display.parse_size(max_image_size, "--max-image-size") if max_image_size else None))


@main.command("up")
@click.option("--root", default=settings.ROOT, show_default=True, help="State directory")
@click.option("--socket", "sock", default=settings.AGENT_SOCKET, show_default=True)
@click.option("--example/--no-example", default=True, show_default=True,
              help="Deploy the example stack (deploy/examples/stack.yaml)")
@click.option("--port", default=settings.SCHEDULER_PORT, show_default=True, help="The scheduler's port on 127.0.0.1")
@click.option("--bridge", default=settings.BRIDGE, show_default=True, help="The agent's container bridge")
@click.option("--subnet", default=settings.SUBNET, show_default=True, help="The agent's container subnet")
@click.option("--cgroup-parent", default=None, help="The agent's cgroup parent")
@click.option("--exit", "exit_after", is_flag=True, help="Check that everything answers, then stop it all")
@click.option("--tls", is_flag=True, help="Mutual TLS, the default: the agent joins by token (passed in its "
              "environment), the admin bundle goes to ~/.dockyard when that has none; the agent listens on --port + 2")
@click.option("--insecure", is_flag=True, help="Plaintext and no authentication (scheduler and agent --insecure); "
              "the agent listens on --port + 1")
@click.option("--ip-forward", type=bool, default=True, show_default=True, help="The agent's --ip-forward")
@click.option("--ip-masq", type=bool, default=True, show_default=True, help="The agent's --ip-masq")
def up_cmd(root: str, sock: str, example: bool, port: int, bridge: str, subnet: str, cgroup_parent: str | None,
           exit_after: bool, tls: bool = False, insecure: bool = False, ip_forward: bool = True,
           ip_masq: bool = True) -> None:
    """Run etcd, a scheduler and an agent on this host in the foreground (Ctrl-C stops them all)."""
    from deploy.cli_cluster import secure_by_default
    from deploy.up import up

    tls = secure_by_default(tls, insecure, f"the scheduler (127.0.0.1:{port}) and the agent serve without TLS "
                                           "or authentication: anyone on this host who reaches them is root")

    up(root, sock, example, port, exit_after, bridge=bridge, subnet=subnet, cgroup_parent=cgroup_parent, tls=tls,
       ip_forward=ip_forward, ip_masq=ip_masq)


# --- run and create ---------------------------------------------------------------------------

def _env_file(path: str) -> list[str]:
    """--env-file's lines (deploy/containers.py), an unreadable file reported as click's commands do."""
    try:
        return containers.env_file(path)
    except containers.BadOption as e:
        fail(str(e))


def build_config(image: str, command: tuple[str, ...], o: dict[str, Any]) -> pb.ContainerConfig:
    """deploy/containers.py's config as the message, its BadOption as click's errors."""
    from google.protobuf.json_format import ParseDict

    try:
        cfg = containers.build_config(image, command, o)
    except containers.BadOption as e:
        if e.usage:
            raise click.BadParameter(str(e), param_hint=e.hint or None) from None
        fail(str(e))
    return ParseDict(cfg, pb.ContainerConfig())


@main.command(cls=RunCommand, context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@options.click_options(options.RUN)
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, /, image: str, command: tuple[str, ...], detach: bool, **o: Any) -> None:
    """Create and run a new container from an image."""
    cfg = build_config(image, command, o)
    cl = client(ctx)
    cidfile = o.get("cidfile") or ""
    if cidfile and os.path.exists(cidfile):
        fail(f"Container ID file found, make sure the other container isn't running or delete {cidfile}", 125)
    if detach or cidfile:
        created = cl.call("CreateContainer", pb.CreateContainerRequest(config=cfg))
        if cidfile:
            _write_cidfile(cidfile, created.id)
        if not detach:
            sys.exit(_attach_session(cl, created.id, start=True, tty=cfg.tty, stdin=cfg.open_stdin))
        cl.call("StartContainer", pb.ContainerRef(id=created.id))
        click.echo(created.id)
        return
    # One call creates, starts and streams it, and ends with its exit status (after its removal
    # with --rm, as docker's run waits for).
    sys.exit(_attach_session(cl, "", start=True, tty=cfg.tty, stdin=cfg.open_stdin, create=cfg))


def _write_cidfile(path: str, cid: str) -> None:
    try:
        with open(path, "x") as f:
            f.write(cid)
    except OSError as e:
        fail(f"failed to write the container ID to {path}: {e.strerror}", 125)


def _attach_session(cl: Client, cid: str, start: bool, tty: bool, stdin: bool,
                    create: pb.ContainerConfig | None = None) -> int:
    from deploy.streams import Session

    sess = Session(pb.OpenStream(container=cid, tty=tty, stdin=stdin, start=start, create=create),
                   interactive=stdin, tty=tty)
    try:
        code = sess.run(cl.stub.Attach)
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    if code is None:
        click.echo("\r\nread escape sequence", err=True)
        return 0
    if create is not None and sess.error:  # it never ran: run's own error
        return start_error_code(sess.error)
    return code


@main.command(context_settings={"allow_interspersed_args": False})
@options.click_options(options.CONTAINER)
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create(ctx: click.Context, /, image: str, command: tuple[str, ...], **o: Any) -> None:
    """Create a new container."""
    cidfile = o.get("cidfile") or ""
    if cidfile and os.path.exists(cidfile):
        fail(f"Container ID file found, make sure the other container isn't running or delete {cidfile}", 125)
    created = client(ctx).call("CreateContainer", pb.CreateContainerRequest(config=build_config(image, command, o)))
    if cidfile:
        _write_cidfile(cidfile, created.id)
    click.echo(created.id)


@main.command()
@options.click_options(options.START)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start(ctx: click.Context, containers: tuple[str, ...], attach: bool, interactive: bool) -> None:
    """Start one or more stopped containers."""
    cl = client(ctx)
    if attach or interactive:
        c = cl.call("InspectContainer", pb.ContainerRef(id=containers[0]))
        cfg = json.loads(c.json)["Config"]
        sys.exit(_attach_session(cl, containers[0], start=True, tty=cfg["Tty"], stdin=interactive))
    _each(cl, containers, lambda ref: cl.call("StartContainer", pb.ContainerRef(id=ref)))


def _each(cl: Client, refs: tuple[str, ...], fn: Callable[[str], Any], echo: bool = True) -> None:
    """docker's multi-container verbs: go on after an error, print each, exit 1 if any failed."""
    failed = False
    for ref in refs:
        try:
            fn(ref)
            if echo:
                click.echo(ref)
        except SystemExit:
            failed = True
    if failed:
        sys.exit(1)


# --- inspection --------------------------------------------------------------------------------

@main.command()
@options.click_options(options.PS)
@click.pass_context
def ps(ctx: click.Context, all_: bool, quiet: bool, no_trunc: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List containers."""
    from google.protobuf.json_format import MessageToDict

    from deploy.cli_local import print_containers

    f = dict(x.partition("=")[::2] for x in filters)
    resp = client(ctx).call("ListContainers", pb.ListContainersRequest(all=all_, filters=f))
    print_containers([MessageToDict(c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                      for c in resp.containers], quiet, no_trunc, fmt)


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("-n", "--tail", default="all", help="Number of lines to show from the end of the logs")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--since", default="", help="Show logs since timestamp (unix seconds) or relative (e.g. 42s, 5m)")
@click.option("--until", default="", help="Show logs before a timestamp or relative")
@click.option("--details", is_flag=True, help="Show extra details provided to logs (the log opts' tag, labels, env)")
@click.argument("container")
@click.pass_context
def logs(ctx: click.Context, container: str, follow: bool, tail: str, timestamps: bool, since: str, until: str,
         details: bool) -> None:
    """Fetch the logs of a container."""
    n = -1 if tail == "all" else int(tail) if tail.lstrip("-").isdigit() else None
    if n is None:
        fail(f'invalid value for "--tail": {tail}')
    req = pb.LogsRequest(id=container, follow=follow, tail=n, since=_time_arg(since), until=_time_arg(until),
                         stdout=True, stderr=True, details=details)
    cl = client(ctx)
    try:
        for entry in cl.stub.ContainerLogs(req):
            data = entry.data
            if timestamps:
                ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry.time)) + f".{int(entry.time % 1 * 1e9):09d}Z "
                data = ts.encode() + data
            out = sys.stdout if entry.stream == "stdout" else sys.stderr
            out.buffer.write(data)
            out.flush()
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    except KeyboardInterrupt:
        pass


def _time_arg(v: str) -> float:
    if not v:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600}
    if v[-1] in units and v[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(v[:-1]) * units[v[-1]]
    try:
        return float(v)
    except ValueError:
        import datetime

        try:
            return datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            fail(f"invalid time value {v!r}: use unix seconds, RFC 3339 or a duration like 10m")


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--type", "kind", type=click.Choice(["container", "image", ""]), default="")
@click.pass_context
def inspect(ctx: click.Context, targets: tuple[str, ...], kind: str) -> None:
    """Return low-level information on containers or images."""
    cl = client(ctx)
    docs: list[Any] = []
    for t in targets:
        doc = None
        if kind in ("", "container"):
            try:
                doc = json.loads(cl.stub.InspectContainer(pb.ContainerRef(id=t)).json)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND or kind == "container":  # type: ignore[attr-defined]
                    fail_rpc(e, cl.host)
        if doc is None and kind in ("", "image"):
            try:
                doc = json.loads(cl.stub.InspectImage(pb.ImageRef(ref=t)).json)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    fail_rpc(e, cl.host)
        if doc is None:
            display.emit_json(docs)
            fail(f"Error: No such object: {t}")
        docs.append(doc)
    display.emit_json(docs)


@main.command()
@click.argument("container")
@click.argument("args", nargs=-1)
@click.pass_context
def top(ctx: click.Context, container: str, args: tuple[str, ...]) -> None:
    """Display the running processes of a container."""
    r = client(ctx).call("Top", pb.TopRequest(id=container, ps_args=list(args)))
    display.table(r.titles, [list(p.fields) for p in r.processes])


@main.command()
@click.argument("container")
@click.argument("private_port", required=False)
@click.pass_context
def port(ctx: click.Context, container: str, private_port: str | None) -> None:
    """List port mappings or a specific mapping for the container."""
    cl = client(ctx)
    doc = json.loads(cl.call("InspectContainer", pb.ContainerRef(id=container)).json)
    ports: dict[str, list[dict[str, str]]] = doc["NetworkSettings"]["Ports"] or {}
    want = None
    if private_port:
        want = private_port if "/" in private_port else f"{private_port}/tcp"
        if want not in ports:
            fail(f"Error: No public port '{want}' published for {container}")
    for key, binds in sorted(ports.items()):
        if want and key != want:
            continue
        for b in binds:
            line = f"{b['HostIp']}:{b['HostPort']}"
            click.echo(line if want else f"{key} -> {line}")


@main.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running)")
@click.option("--no-stream", is_flag=True, help="Disable streaming stats and only pull the first result")
@click.option("--format", "fmt", default="")
@click.argument("containers", nargs=-1)
@click.pass_context
def stats(ctx: click.Context, all_: bool, no_stream: bool, fmt: str, containers: tuple[str, ...]) -> None:
    """Display a live stream of container(s) resource usage statistics."""
    cl = client(ctx)
    try:
        for resp in cl.stub.Stats(pb.StatsRequest(ids=list(containers), stream=not no_stream)):
            if fmt == "json":
                from google.protobuf.json_format import MessageToDict

                display.emit_json([MessageToDict(s, preserving_proto_field_name=True) for s in resp.stats])
            else:
                if not no_stream:
                    click.echo("\033[2J\033[H", nl=False)
                rows = []
                for s in resp.stats:
                    lim = s.memory_limit if 0 < s.memory_limit < (1 << 62) else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                    pct = 100.0 * s.memory_usage / lim if lim else 0.0
                    rows.append([s.id[:12], s.name, f"{s.cpu_percent:.2f}%",
                                 f"{display.human_bytes_binary(s.memory_usage)} / {display.human_bytes_binary(lim)}",
                                 f"{pct:.2f}%",
                                 f"{display.human_size(s.net_rx_bytes)} / {display.human_size(s.net_tx_bytes)}",
                                 f"{display.human_size(s.block_read_bytes)} / {display.human_size(s.block_write_bytes)}",
                                 str(s.pids)])
                display.table(["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
                               "BLOCK I/O", "PIDS"], rows)
            if no_stream:
                return
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    except KeyboardInterrupt:
        pass


# --- lifecycle ---------------------------------------------------------------------------------

@main.command()
@options.click_options(options.STOP)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop(ctx: click.Context, timeout: int, containers: tuple[str, ...]) -> None:
    """Stop one or more running containers."""
    cl = client(ctx)
    _each(cl, containers, lambda ref: cl.call("StopContainer", pb.StopContainerRequest(id=ref, timeout=timeout)))


@main.command()
@click.option("-t", "--time", "timeout", type=int, default=-1)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def restart(ctx: click.Context, timeout: int, containers: tuple[str, ...]) -> None:
    """Restart one or more containers."""
    cl = client(ctx)
    _each(cl, containers, lambda ref: cl.call("RestartContainer", pb.StopContainerRequest(id=ref, timeout=timeout)))


@main.command()
@options.click_options(options.KILL)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx: click.Context, sig: str, containers: tuple[str, ...]) -> None:
    """Kill one or more running containers."""
    cl = client(ctx)
    _each(cl, containers, lambda ref: cl.call("KillContainer", pb.KillContainerRequest(id=ref, signal=sig)))


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def pause(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Pause all processes within one or more containers."""
    cl = client(ctx)
    _each(cl, containers, lambda ref: cl.call("PauseContainer", pb.ContainerRef(id=ref)))


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def unpause(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Unpause all processes within one or more containers."""
    cl = client(ctx)
    _each(cl, containers, lambda ref: cl.call("UnpauseContainer", pb.ContainerRef(id=ref)))


@main.command()
@options.click_options(options.RM)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, volumes: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers."""
    cl = client(ctx)
    _each(cl, containers, lambda ref: cl.call("RemoveContainer",
                                              pb.RemoveContainerRequest(id=ref, force=force, volumes=volumes)))


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Block until one or more containers stop, then print their exit codes."""
    cl = client(ctx)
    for ref in containers:
        click.echo(cl.call("WaitContainer", pb.ContainerRef(id=ref)).exit_code)


@main.command()
@click.argument("container")
@click.argument("new_name")
@click.pass_context
def rename(ctx: click.Context, container: str, new_name: str) -> None:
    """Rename a container."""
    client(ctx).call("RenameContainer", pb.RenameContainerRequest(id=container, new_name=new_name))


@main.command()
@options.click_options(options.UPDATE)
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def update(ctx: click.Context, /, refs: tuple[str, ...], **o: Any) -> None:
    """Update configuration of one or more containers (limits apply to a running one at once)."""
    from google.protobuf.json_format import ParseDict

    try:
        fields = containers.update_request(o)
    except containers.BadOption as e:
        if e.hint:
            raise click.BadParameter(str(e), param_hint=e.hint) from None
        raise click.UsageError(str(e)) from None
    cl = client(ctx)
    _each(cl, refs, lambda ref: cl.call(
        "UpdateContainer", ParseDict({**fields, "id": ref}, pb.UpdateContainerRequest())))


# Other command modules may route `exec` elsewhere (deploy/cli_cluster.py: a task through the
# scheduler): a route gets (ctx, container) and returns the Exec call to use, or None for the agent's.
EXEC_ROUTES: list[Callable[[click.Context, str], Any]] = []


@main.command(context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Detached mode: run command in the background")
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open even if not attached")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("-w", "--workdir", default="", help="Working directory inside the container")
@click.option("-u", "--user", default="", help="Username or UID (format: <name|uid>[:<group|gid>])")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec(ctx: click.Context, container: str, command: tuple[str, ...], detach: bool, interactive: bool, tty: bool,
         env: tuple[str, ...], workdir: str, user: str) -> None:
    """Execute a command in a running container."""
    from deploy.streams import Session

    cl = client(ctx)
    spec = pb.ExecSpec(cmd=list(command), env=list(env), workdir=workdir, user=user)
    sess = Session(pb.OpenStream(container=container, tty=tty, stdin=interactive, exec=spec),
                   interactive=interactive and not detach, tty=tty)
    call = next((c for route in EXEC_ROUTES if (c := route(ctx, container)) is not None), cl.stub.Exec)
    try:
        code = sess.run(call)
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)
    sys.exit(code or 0)


@main.command()
@click.option("--no-stdin", is_flag=True, help="Do not attach STDIN")
@click.argument("container")
@click.pass_context
def attach(ctx: click.Context, container: str, no_stdin: bool) -> None:
    """Attach local standard input, output, and error streams to a running container."""
    cl = client(ctx)
    cfg = json.loads(cl.call("InspectContainer", pb.ContainerRef(id=container)).json)["Config"]
    sys.exit(_attach_session(cl, container, start=False, tty=cfg["Tty"], stdin=cfg["OpenStdin"] and not no_stdin))


# --- checkpoint and restore --------------------------------------------------------------------

@main.command()
@click.option("-o", "--output", default="", help="Write a checkpoint archive (tar.zst, Podman's layout) to a file")
@click.option("--leave-running", is_flag=True, help="Leave the container running after the checkpoint")
@click.argument("container")
@click.pass_context
def checkpoint(ctx: click.Context, container: str, output: str, leave_running: bool) -> None:
    """Checkpoint a running container with CRIU (restore it with `dockyard restore`)."""
    cl = client(ctx)
    req = pb.CheckpointRequest(id=container, leave_running=leave_running, export=bool(output))
    tmp = output + ".partial"
    try:
        out = open(tmp, "wb") if output else None  # noqa: SIM115 - closed below on every path
        try:
            for chunk in cl.stub.CheckpointContainer(req):
                if chunk.HasField("stats_json"):
                    stats = json.loads(chunk.stats_json)
                    click.echo(f"checkpointed {container} (dump {stats['dump_seconds']:.3f} s)", err=True)
                elif out is not None:
                    out.write(chunk.data)
        finally:
            if out is not None:
                out.close()
    except grpc.RpcError as e:
        if output:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        fail_rpc(e, cl.host)
    if output:
        os.replace(tmp, output)
        click.echo(output)


@main.command()
@click.option("-i", "--input", "input_", default="", help="Restore a new container from a checkpoint archive")
@click.option("--name", default="", help="Name for the restored container (with -i)")
@click.argument("container", required=False, default="")
@click.pass_context
def restore(ctx: click.Context, input_: str, name: str, container: str) -> None:
    """Restore a container from its last checkpoint, or a new one from an archive (-i)."""
    cl = client(ctx)
    if bool(input_) == bool(container):
        fail("restore: give a CONTAINER to restore here, or -i ARCHIVE (not both)")

    def chunks() -> Iterator[pb.RestoreChunk]:
        yield pb.RestoreChunk(header=pb.RestoreHeader(id=container, name=name))
        if input_:
            with open(input_, "rb") as f:
                while data := f.read(CHUNK):
                    yield pb.RestoreChunk(data=data)

    if input_ and not os.path.exists(input_):
        fail(f"open {input_}: no such file")
    c = cl.call("RestoreContainer", chunks())
    click.echo(c.id)


@main.command()
@click.option("--to", "target", required=True,
              help="A node's name (a task, through the scheduler), or an agent's host:port (a container)")
@click.option("--live/--cold", default=None,
              help="CRIU live migration, or stop-copy-start (default: live where both ends can, else cold)")
@click.argument("container")
@click.pass_context
def migrate(ctx: click.Context, container: str, target: str, live: bool | None) -> None:
    """Move a task to another node (through the scheduler), or a container to another host's agent;
    prints downtime and total time."""
    if ":" not in target:
        from deploy.cli_cluster import migrate_task

        migrate_task(ctx, container, target, "" if live is None else ("live" if live else "cold"))
        return
    live = True if live is None else live
    cl = client(ctx)
    try:
        for p in cl.stub.MigrateContainer(pb.MigrateRequest(id=container, target=target, live=live)):
            if p.phase == "transfer":
                pct = 100 * p.bytes // p.total if p.total else 100
                click.echo(f"\rtransfer: {display.human_size(p.bytes)} / {display.human_size(p.total)} ({pct}%)",
                           nl=p.bytes >= p.total, err=True)
            elif p.phase == "done":
                click.echo(f"migrated {container} to {target} as {p.new_id[:12]}: "
                           f"downtime {p.downtime_seconds * 1000:.0f} ms, total {p.total_seconds:.2f} s")
            else:
                click.echo(f"{p.phase}: {p.message}", err=True)
    except grpc.RpcError as e:
        fail_rpc(e, cl.host)


# --- images ------------------------------------------------------------------------------------

def _upload(cl: Client, fileobj: Any, header: pb.ImportHeader) -> pb.ImageSummary:
    def chunks() -> Iterator[pb.DataChunk]:
        yield pb.DataChunk(import_header=header)
        while True:
            data = fileobj.read(CHUNK)
            if not data:
                return
            yield pb.DataChunk(data=data)

    summary: pb.ImageSummary = cl.call("ImportImage", chunks())
    return summary


@main.command("import")
@options.click_options(options.IMPORT)
@click.argument("source")
@click.argument("reference", required=False, default="")
@click.pass_context
def import_(ctx: click.Context, source: str, reference: str, change: tuple[str, ...], message: str) -> None:
    """Import the contents from a tarball to create a filesystem image ('-' reads stdin)."""
    cl = client(ctx)
    header = pb.ImportHeader(reference=reference, changes=list(change), message=message)
    if source == "-":
        img = _upload(cl, sys.stdin.buffer, header)
    else:
        try:
            with open(source, "rb") as f:
                img = _upload(cl, f, header)
        except OSError as e:
            fail(f"open {source}: {e.strerror}")
    click.echo(img.id)


@main.command()
@click.option("-o", "--output", default="", help="Write to a file, instead of STDOUT")
@click.argument("container")
@click.pass_context
def export(ctx: click.Context, container: str, output: str) -> None:
    """Export a container's filesystem as a tar archive."""
    cl = client(ctx)
    if not output and sys.stdout.isatty():
        fail("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    if not output:
        try:
            for chunk in cl.stub.ExportContainer(pb.ContainerRef(id=container)):
                sys.stdout.buffer.write(chunk.data)
        except grpc.RpcError as e:
            fail_rpc(e, cl.host)
        return
    tmp = output + ".partial"  # a failed export leaves no half file under the asked name
    with open(tmp, "wb") as out:
        try:
            for chunk in cl.stub.ExportContainer(pb.ContainerRef(id=container)):
                out.write(chunk.data)
        except grpc.RpcError as e:
            out.close()
            os.unlink(tmp)
            fail_rpc(e, cl.host)
    os.replace(tmp, output)


def _images_table(ctx: click.Context, quiet: bool, fmt: str, all_: bool = False) -> None:
    resp = client(ctx).call("ListImages", pb.ListImagesRequest(all=all_))
    if quiet:
        for i in resp.images:
            click.echo(i.id.removeprefix("sha256:")[:12])
        return
    if fmt == "json":
        from google.protobuf.json_format import MessageToDict

        display.emit_json([MessageToDict(i, preserving_proto_field_name=True) for i in resp.images])
        return
    rows = []
    for i in resp.images:
        tags = list(i.repo_tags) or ["<none>:<none>"]
        for t in tags:
            repo, _, tag = t.rpartition(":")
            rows.append([repo, tag, i.id.removeprefix("sha256:")[:12], display.ago(i.created),
                         display.human_size(i.size)])
    display.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)


@main.command()
@click.option("-q", "--quiet", is_flag=True)
@click.option("-a", "--all", "all_", is_flag=True)
@click.option("--format", "fmt", default="")
@click.pass_context
def images(ctx: click.Context, quiet: bool, all_: bool, fmt: str) -> None:
    """List images."""
    _images_table(ctx, quiet, fmt, all_)


def _rmi(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    cl = client(ctx)
    failed = False
    for ref in refs:
        try:
            r = cl.stub.RemoveImage(pb.RemoveImageRequest(ref=ref, force=force))
        except grpc.RpcError as e:
            click.echo(f"Error response from daemon: {e.details()}", err=True)  # type: ignore[attr-defined]
            failed = True
            continue
        for t in r.untagged:
            click.echo(f"Untagged: {t}")
        for d in r.deleted:
            click.echo(f"Deleted: {d}")
    if failed:
        sys.exit(1)


@main.command()
@click.option("-f", "--force", is_flag=True)
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def rmi(ctx: click.Context, images: tuple[str, ...], force: bool) -> None:
    """Remove one or more images."""
    _rmi(ctx, images, force)


@main.command()
@click.argument("source")
@click.argument("target")
@click.pass_context
def tag(ctx: click.Context, source: str, target: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    client(ctx).call("TagImage", pb.TagImageRequest(source=source, target=target))


@main.group()
def image() -> None:
    """Manage images."""


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True)
@click.option("--format", "fmt", default="")
@click.pass_context
def image_ls(ctx: click.Context, quiet: bool, fmt: str) -> None:
    """List images."""
    _images_table(ctx, quiet, fmt)


@image.command("rm")
@click.option("-f", "--force", is_flag=True)
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def image_rm(ctx: click.Context, images: tuple[str, ...], force: bool) -> None:
    """Remove one or more images."""
    _rmi(ctx, images, force)


@image.command("inspect")
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def image_inspect(ctx: click.Context, images: tuple[str, ...]) -> None:
    """Display detailed information on one or more images."""
    cl = client(ctx)
    display.emit_json([json.loads(cl.call("InspectImage", pb.ImageRef(ref=i)).json) for i in images])


image.add_command(tag, "tag")
image.add_command(import_, "import")


@main.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Display system-wide information."""
    i = client(ctx).call("Info", pb.Empty())
    for k, v in [("Name", i.name), ("Server Version", i.version), ("Kernel Version", i.kernel),
                 ("Cgroup Version", i.cgroup_version), ("CPUs", i.cpus),
                 ("Total Memory", display.human_bytes_binary(i.memory_bytes)), ("Containers", i.containers),
                 (" Running", i.containers_running), (" Paused", i.containers_paused),
                 (" Stopped", i.containers_stopped), ("Images", i.images), ("Docker Root Dir", i.root),
                 ("CRIU", "yes" if i.criu else "no"),
                 ("Post-copy migration", "yes" if i.lazy_pages else "no"), ("Architecture", i.arch),
                 ("CPU features", " ".join(i.cpu_features)),
                 ("Config File", i.config_file or "none"),
                 ("Logging Driver", i.log_driver + "".join(f" {k}={v}" for k, v in sorted(i.log_opts.items()))),
                 ("Default Ulimits", " ".join(i.default_ulimits) or "none"),
                 ("DNS", " ".join(i.dns) or "the host's"),
                 ("DNS Search", " ".join(i.dns_search) or "the host's"),
                 ("DNS Options", " ".join(i.dns_options) or "the host's"),
                 ("Insecure Registries", " ".join(i.insecure_registries) or "none (loopback only)"),
                 ("Registry Mirrors", " ".join(i.registry_mirrors) or "none")]:
        click.echo(f"{k}: {v}")


def shell_join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


if __name__ == "__main__":  # `python -m deploy.cli`, as the tests run it: the same way as `dockyard`
    from deploy.entry import main as _entry

    sys.exit(_entry(click_main=main))
