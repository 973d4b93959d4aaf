"""Cluster commands of `dockyard` (added to deploy/cli.py's `main`): scheduler, node, deploy,
service, and exec into a task anywhere through the scheduler.

The scheduler is found with `--scheduler ADDR[,ADDR...]` (an option of `dockyard` itself) or
DOCKYARD_SCHEDULER: any replica will do, and a call moves on to the next address when one does
not answer. Names follow Swarm: `deploy --name bar` makes services bar_web, bar_worker; their
tasks are bar_web.1, bar_web.2, ... (containers on the nodes: bar_web.1.<task id>).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc

from common import settings, transport
from deploy import display
from protos import agent_pb2 as apb
from protos import cluster_pb2 as pb
from protos import cluster_pb2_grpc as pbg

DEFAULT_SCHEDULER = settings.SCHEDULER_LISTEN
TIMEOUT = 15.0


def fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(msg, err=True)
    sys.exit(code)


def cert_path() -> Path:
    """Where the CLI's client bundle is: DOCKYARD_CERT_PATH, else ~/.dockyard (docker's DOCKER_CERT_PATH)."""
    return Path(os.environ.get("DOCKYARD_CERT_PATH") or Path.home() / ".dockyard")


def cli_identity() -> transport.Identity:
    """The admin bundle if there is one (mutual TLS to the scheduler), else plaintext. A
    DOCKYARD_CERT_PATH without a whole bundle, or a key others may read, is an error naming it."""
    from common import pki  # cryptography: only when there is TLS to do

    d = cert_path()
    present = [n for n in (pki.CA_FILE, pki.CERT_FILE, pki.KEY_FILE) if (d / n).exists()]
    if not present and not os.environ.get("DOCKYARD_CERT_PATH"):
        return transport.CLI
    try:
        return transport.CLI.with_tls(pki.read_bundle(d))
    except pki.PKIError as e:
        fail(f"dockyard: no usable TLS client bundle: {e} (DOCKYARD_CERT_PATH, else ~/.dockyard; "
             f"`dockyard scheduler` writes one to <state-dir>/client)")


class SchedulerClient:
    """Calls any scheduler replica of a list; moves on when one is down."""

    def __init__(self, addresses: str) -> None:
        self.addresses = [a.strip().removeprefix("tcp://") for a in addresses.split(",") if a.strip()]
        if not self.addresses:
            fail("no scheduler address: give --scheduler HOST:PORT or set DOCKYARD_SCHEDULER")
        self.current = 0
        self._channels: dict[str, grpc.Channel] = {}
        self.identity = cli_identity()
        self._renewed = False

    def stub(self, addr: str) -> pbg.SchedulerStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = transport.dial_blocking(addr, self.identity, transport.Role.SCHEDULER)
        return pbg.SchedulerStub(ch)  # type: ignore[no-untyped-call]

    def call(self, method: str, request: Any, timeout: float = TIMEOUT, fatal: bool = True) -> Any:
        """The first replica's answer; an error from it ends the CLI with its message (or, with
        fatal=False, is raised for the caller to handle)."""
        errors = []
        n = len(self.addresses)
        for i in range(n):
            addr = self.addresses[(self.current + i) % n]
            try:
                out = getattr(self.stub(addr), method)(request, timeout=timeout, wait_for_ready=False)
                self.current = (self.current + i) % n
                self._renew_if_due(addr)
                return out
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNAVAILABLE and "etcd" not in (e.details() or ""):  # type: ignore[attr-defined]
                    errors.append(f"{addr}: {e.details()}")  # type: ignore[attr-defined]
                    continue
                if not fatal:
                    raise
                fail(f"Error response from scheduler: {e.details()}")  # type: ignore[attr-defined]
        hint = "" if self.identity.tls is not None else (
            f" It runs with TLS unless started --insecure, and then the CLI needs ca.pem, cert.pem and key.pem: none in {cert_path()}"
            " (looked in DOCKYARD_CERT_PATH, else ~/.dockyard; the scheduler writes them to <state-dir>/client).")
        fail("Cannot connect to the dockyard scheduler at " + ", ".join(self.addresses)
             + ". Is it running? (" + "; ".join(errors) + ")" + hint)

    RENEW_AT = 2 / 3  # of the admin certificate's life: the CLI renews it on a call after that

    def _renew_if_due(self, addr: str) -> None:
        """The admin bundle past RENEW_AT of its life: a new key and certificate from the scheduler
        (same CN and role: it takes them from the certificate it sees), written in place (0600).
        Once per process; a failure is said and the old one goes on working until it expires."""
        import datetime as dt

        from common import pki

        bundle = self.identity.tls
        if bundle is None or self._renewed or dt.datetime.now(dt.UTC) < pki.renew_at(bundle.cert_pem,
                                                                                                self.RENEW_AT):
            return
        self._renewed = True
        d = cert_path()
        try:
            key_pem, csr_pem = pki.make_key_and_csr()
            r = self.stub(addr).RenewCertificate(pb.RenewRequest(csr=csr_pem), timeout=TIMEOUT)
            subject = pki.verify_issued(r.ca, r.certificate, key_pem)
            if subject.role != "admin":
                raise pki.PKIError(f"the scheduler renewed it as a {subject.role} certificate")
            pki.write_bundle(d, pki.Bundle(r.ca, r.certificate, key_pem))
        except (grpc.RpcError, pki.PKIError, OSError) as e:
            why = e.details() if isinstance(e, grpc.RpcError) else str(e)  # type: ignore[attr-defined]
            click.echo(f"dockyard: the admin certificate in {d} is near its end and was not renewed: {why}", err=True)
            return
        until = pki.renew_at(r.certificate, 1.0)
        click.echo(f"dockyard: renewed the admin certificate in {d} (valid until {until:%Y-%m-%d %H:%M:%S} UTC)",
                   err=True)

    def live_stub(self) -> pbg.SchedulerStub:
        """The stub of the first replica that answers Status (for streams)."""
        self.call("Status", pb.Empty(), timeout=5)
        return self.stub(self.addresses[self.current])


def scheduler_addr(ctx: click.Context) -> str:
    obj = ctx.find_root().obj or {}
    addr: str = obj.get("scheduler") or ""
    return addr


def sched(ctx: click.Context) -> SchedulerClient:
    obj = ctx.find_root().obj
    if "scheduler_client" not in obj:
        obj["scheduler_client"] = SchedulerClient(scheduler_addr(ctx) or DEFAULT_SCHEDULER)
    c: SchedulerClient = obj["scheduler_client"]
    return c


def _json_or_table(fmt: str, items: list[dict[str, Any]], headers: list[str], row: Callable[[dict[str, Any]], list[Any]]
                   ) -> None:
    if fmt == "json":
        display.emit_json(items)
    elif fmt:
        for it in items:
            click.echo(fmt.replace("{{", "{").replace("}}", "}").replace("{.", "{").format(**it))
    else:
        display.table(headers, [row(it) for it in items])


def _msg_dict(msg: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    d: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return d


# --- the scheduler itself ----------------------------------------------------------------------

@click.command("scheduler", context_settings=settings.context("scheduler"))
@settings.config_option("scheduler")
@click.option("--etcd", default="", help="etcd client URLs (http://h:2379,... or https://); default: start our own "
              "(https, client certificates of a CA of its own; plain http with --insecure)")
@click.option("--etcd-cacert", default="", help="An external etcd over TLS: the CA its certificate is from")
@click.option("--etcd-cert", default="", help="An external etcd over TLS: this scheduler's client certificate")
@click.option("--etcd-key", default="", help="An external etcd over TLS: that certificate's key (mode 0600)")
@click.option("--etcd-server-name", default="", help="An external etcd over TLS: the name its certificate must "
              "carry (default: the address dialled; `cluster up`'s members carry etcd.dockyard)")
@click.option("--listen", default=settings.SCHEDULER_LISTEN, show_default=True, help="gRPC HOST:PORT for agents and the CLI")
@click.option("--advertise", default="", help="HOST:PORT others reach this replica at (default: --listen)")
@click.option("--metrics-addr", default=settings.SCHEDULER_METRICS, show_default=True,
              help='HOST:PORT for /metrics and /sd over HTTP; "" disables it')
@click.option("--state-dir", default=settings.SCHEDULER_STATE, show_default=True,
              help="State directory (the embedded etcd's data lives here)")
@click.option("--ttl", default=3, show_default=True, help="Node and leader lease TTL, seconds")
@click.option("--heartbeat", default=1.0, show_default=True,
              help="Seconds between an agent's heartbeats (each one's deadline too); at most a third of --ttl")
@click.option("--tls", is_flag=True, help="Mutual TLS (the default): a cluster CA in etcd, join tokens, a join port at "
              "--listen's port + 1, an admin client bundle in <state-dir>/client")
@click.option("--insecure", is_flag=True, help="Plaintext gRPC and etcd, no authentication: anyone who reaches the "
              "port owns the cluster (refused once the cluster has a CA)")
@click.option("--metrics-tls", is_flag=True,
              help="Serve /metrics and /sd over HTTPS with this replica's certificate (not with --insecure)")
@click.option("--cert-lifetime", default="90d", show_default=True,
              help="How long node certificates issued here live (renewed at 50-80 %): 90d, 12h, 30m, 60s")
@click.option("--secrets-key", default="", help="The key that seals secrets in etcd (32 bytes, mode 0600; "
              "made if missing; every replica needs the same file) [default: <state-dir>/secrets.key]")
def scheduler_cmd(etcd: str, etcd_cacert: str, etcd_cert: str, etcd_key: str, etcd_server_name: str, listen: str,
                  advertise: str,
                  metrics_addr: str, state_dir: str, ttl: int, heartbeat: float = 1.0, tls: bool = False,
                  insecure: bool = False,
                  metrics_tls: bool = False, cert_lifetime: str = "90d", secrets_key: str = "") -> None:
    """Run a scheduler replica (with its own etcd unless --etcd is given)."""
    from scheduler.main import SchedulerError, SchedulerOptions, run

    tls = secure_by_default(tls, insecure, f"the scheduler serves {listen} without TLS or authentication: "
                                           "anyone who can reach it owns the cluster")
    if ttl < 2:
        raise click.BadParameter("at least 2 seconds (etcd's minimum lease)", param_hint="--ttl")
    # Three heartbeats per lease: one lost or late heartbeat must not cost a node its lease.
    if not 0.2 <= heartbeat <= ttl / 3:
        raise click.BadParameter(f"{heartbeat:g}: from 0.2 s to a third of --ttl ({ttl / 3:g} s)",
                                 param_hint="--heartbeat")
    lifetime = _lifetime(cert_lifetime)
    try:
        run(SchedulerOptions(etcd=etcd, listen=listen, advertise=advertise, metrics_addr=metrics_addr,
                             state_dir=state_dir, ttl=ttl, heartbeat=heartbeat, tls=tls, etcd_cacert=etcd_cacert,
                             etcd_cert=etcd_cert, etcd_key=etcd_key, etcd_server_name=etcd_server_name,
                             cert_lifetime=lifetime, metrics_tls=metrics_tls, secrets_key=secrets_key))
    except SchedulerError as e:
        fail(f"dockyard scheduler: {e}")


def secure_by_default(tls: bool, insecure: bool, what: str) -> bool:
    """TLS unless --insecure (docker's wording: a warning says what that opens); both is an error."""
    if tls and insecure:
        raise click.UsageError("--tls and --insecure: give one of them (TLS is the default)")
    if insecure:
        click.echo(f"WARNING: --insecure: {what}.", err=True)
    return not insecure


def _lifetime(text: str) -> float:
    """"90d" / "12h" / "30m" / "60s" / "60" -> seconds; at least 10 s (renewal needs time to act)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    t = text.strip().lower()
    num, unit = (t[:-1], units[t[-1]]) if t and t[-1] in units else (t, 1)
    try:
        secs = float(num) * unit
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a duration such as 90d, 12h, 30m or 60s",
                                 param_hint="--cert-lifetime") from None
    if not 10 <= secs <= 3650 * 86400:
        raise click.BadParameter(f"{text!r}: between 10s and 3650d", param_hint="--cert-lifetime")
    return secs


# --- nodes -------------------------------------------------------------------------------------

@click.group("node")
def node() -> None:
    """Manage the cluster's nodes."""


def _node_row(n: dict[str, Any]) -> list[Any]:
    status = n["status"].capitalize() + (" (disk almost full)" if n.get("pressure") else "")  # inspect says more
    return [n["name"], n["address"], status, n["availability"].capitalize(), n["tasks"],
            display.human_bytes_binary(int(n["memory_bytes"])), f"{int(n['nano_cpus']) / 1e9:g}",
            ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))]


@node.command("ls")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.pass_context
def node_ls(ctx: click.Context, fmt: str) -> None:
    """List nodes."""
    r = sched(ctx).call("ListNodes", pb.Empty())
    _json_or_table(fmt, [_msg_dict(n) for n in r.nodes],
                   ["NAME", "ADDRESS", "STATUS", "AVAILABILITY", "TASKS", "MEMORY", "CPUS", "LABELS"], _node_row)


@node.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def node_inspect(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Display detailed information on nodes."""
    display.emit_json([_msg_dict(sched(ctx).call("InspectNode", pb.NodeRef(name=n))) for n in names])


def _set_availability(ctx: click.Context, names: tuple[str, ...], availability: str) -> None:
    for n in names:
        sched(ctx).call("UpdateNode", pb.UpdateNodeRequest(name=n, availability=availability))
        click.echo(n)


@node.command("drain")
@click.option("--live/--cold", default=None, help="How to move tasks (default: live where both ends can, else cold)")
@click.option("--no-move", is_flag=True, help="Only stop placing tasks there (Swarm's drain: tasks restart elsewhere)")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def node_drain(ctx: click.Context, names: tuple[str, ...], live: bool | None, no_move: bool) -> None:
    """Move every task off the nodes (migrated, live where both ends can), and place none there."""
    if no_move:
        _set_availability(ctx, names, "drain")
        return
    mode = "" if live is None else ("live" if live else "cold")
    failed = 0
    for n in names:
        failed += _follow(ctx, "DrainNode", pb.DrainRequest(node=n, mode=mode))
        click.echo(f"{n} drained" + (f" ({failed} task(s) not moved)" if failed else ""))
    if failed:
        sys.exit(1)


def _progress_line(p: pb.MigrationProgress) -> str:
    head = f"{p.task} {p.from_node}->{p.to_node}" if p.to_node else p.task
    if p.phase == "transfer" and p.total:
        return f"{head}: transfer {display.human_size(p.bytes)} / {display.human_size(p.total)} ({100 * p.bytes // p.total}%)"
    return f"{head}: {p.phase}" + (f": {p.message}" if p.message else "")


def _follow(ctx: click.Context, method: str, request: Any) -> int:
    """Print a migration stream's progress; the number of moves that did not happen."""
    stub = sched(ctx).live_stub()
    failed = 0
    current = ""
    try:
        for p in getattr(stub, method)(request):
            current = p.migration_id or current
            if p.phase == "done":
                click.echo(f"migrated {p.task} from {p.from_node} to {p.to_node} ({p.mode}): "
                           f"downtime {p.downtime_seconds * 1000:.0f} ms, total {p.total_seconds:.2f} s")
            elif p.phase in ("skipped", "rolled_back", "dropped", "lost"):
                failed += 1
                click.echo(_progress_line(p), err=True)
            elif p.phase == "transfer":
                if p.bytes >= p.total:
                    click.echo(_progress_line(p), err=True)
            else:
                click.echo(_progress_line(p), err=True)
    except grpc.RpcError as e:
        if current and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # type: ignore[attr-defined]
            fail(f"lost the scheduler during migration {current} ({e.details()}): it is recorded, and the "  # type: ignore[attr-defined]
                 "next leader finishes it or rolls it back; see `dockyard migrations` and `dockyard service ps`")
        fail(f"Error response from scheduler: {e.details()}")  # type: ignore[attr-defined]
    return failed


def migrate_task(ctx: click.Context, task: str, node_name: str, mode: str) -> None:
    """`dockyard migrate TASK --to NODE`: through the scheduler."""
    if _follow(ctx, "MigrateTask", pb.MigrateTaskRequest(task=task, to=node_name, mode=mode)):
        sys.exit(1)


@click.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Say what would move; move nothing")
@click.pass_context
def rebalance(ctx: click.Context, dry_run: bool) -> None:
    """Move tasks onto new or under-used nodes (live where both ends can)."""
    _follow(ctx, "Rebalance", pb.RebalanceRequest(dry_run=dry_run))


@click.command("migrations")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.pass_context
def migrations_ls(ctx: click.Context, fmt: str) -> None:
    """List migrations in progress (recorded in etcd)."""
    r = sched(ctx).call("ListMigrations", pb.Empty())
    _json_or_table(fmt, [_msg_dict(m) for m in r.migrations], ["ID", "TASK ID", "SERVICE", "FROM", "TO", "MODE", "PHASE"],
                   lambda m: [m["id"], m["task_id"], m["service"], m["from_node"], m["to_node"], m["mode"], m["phase"]])


@node.command("activate")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def node_activate(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Let tasks be placed on the nodes again."""
    _set_availability(ctx, names, "active")


@node.command("label")
@click.option("--add", "adds", multiple=True, help="KEY=VALUE")
@click.option("--rm", "rms", multiple=True, help="KEY")
@click.argument("name")
@click.pass_context
def node_label(ctx: click.Context, adds: tuple[str, ...], rms: tuple[str, ...], name: str) -> None:
    """Add or remove node labels (used by constraints: node.labels.KEY == VALUE)."""
    add = {}
    for a in adds:
        k, sep, v = a.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{a!r}: expected KEY=VALUE", param_hint="--add")
        add[k] = v
    sched(ctx).call("UpdateNode", pb.UpdateNodeRequest(name=name, label_add=add, label_rm=list(rms)))
    click.echo(name)


@node.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove the node even while it is up")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def node_rm(ctx: click.Context, force: bool, names: tuple[str, ...]) -> None:
    """Remove nodes from the cluster."""
    for n in names:
        sched(ctx).call("RemoveNode", pb.RemoveNodeRequest(name=n, force=force))
        click.echo(n)


# --- deploy --------------------------------------------------------------------------------------

@click.command("deploy")
@click.option("-f", "--compose-file", "--file", "files", multiple=True, required=True, help="Stack file (Compose)")
@click.option("--name", default=None, help="Stack name (default: `name:` in the file)")
@click.option("--prune", is_flag=True, help="Remove services of the stack that the file no longer has")
@click.pass_context
def deploy(ctx: click.Context, files: tuple[str, ...], name: str | None, prune: bool) -> None:
    """Deploy a stack (idempotent: shows what changed)."""
    deploy_stack(ctx, files, name, prune)


def load_stacks(files: tuple[str, ...], name: str | None) -> tuple[str, dict[str, Any]]:
    """The stack's name and its services (ServiceSpecs by name) from its files, warnings printed;
    a bad file ends the command with `dockyard deploy: file:line: field: problem`."""
    stack_name, specs, _ = load_stack_files(files, name)
    return stack_name, specs


def load_stack_files(files: tuple[str, ...], name: str | None) -> tuple[str, dict[str, Any], list[Any]]:
    """load_stacks, with the merged Stack itself (its networks: too)."""
    import os

    from deploy.compose.dotenv import DotEnvError, project_environment
    from deploy.stack import StackError, load_stacks

    env_warnings: list[str] = []
    try:
        # As Compose: the .env beside the first file, the shell's variables over it
        environ = project_environment(files[0], os.environ, env_warnings.append)
    except DotEnvError as e:
        fail(f"dockyard deploy: {e}")
    for w in env_warnings:
        click.echo(f"warning: {w}", err=True)
    try:
        stack = load_stacks(files, name, environ=environ)  # later files override earlier ones
    except StackError as e:
        fail(f"dockyard deploy: {e}")
    for w in stack.warnings:
        click.echo(f"warning: {w}", err=True)
    stack_name = stack.name
    specs = {s.name: s for s in stack.services}
    return stack_name, specs, [stack]


def deploy_stack(ctx: click.Context, files: tuple[str, ...], name: str | None, prune: bool) -> None:
    from deploy.cli_network import ensure_stack_networks, with_default_network
    from scheduler.convert import spec_to_pb

    stack_name, specs, stacks = load_stack_files(files, name)
    stacks = [with_default_network(ctx, st) for st in stacks]
    specs = {s.name: s for st in stacks for s in st.services}
    for stack in stacks:
        ensure_stack_networks(ctx, stack)
    # the stack's own secrets and configs go with the deploy (made in its transaction); external ones
    # are checked there to exist
    objects = [pb.FileObject(kind=o.kind, name=o.name, data=o.data,
                             labels={**dict(o.labels), "com.docker.stack.namespace": stack_name})
               for stack in stacks for o in stack.objects if not o.external]
    r = sched(ctx).call("Deploy", pb.DeployRequest(stack=stack_name, services=[spec_to_pb(s) for s in specs.values()],
                                                   prune=prune, objects=objects), timeout=30)
    for c in r.objects:
        if c.action == "created":
            click.echo(f"Creating {c.service}")
    verbs = {"created": "Creating service", "updated": "Updating service", "unchanged": "Unchanged service",
             "removed": "Removing service"}
    for c in r.changes:
        extra = f" ({', '.join(c.fields)})" if c.fields else ""
        click.echo(f"{verbs.get(c.action, c.action)} {c.service}{extra}")


# --- services ------------------------------------------------------------------------------------

@click.group("service")
def service() -> None:
    """Manage services."""


@service.command("ls")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.option("--stack", default="", help="Only the services of this stack")
@click.pass_context
def service_ls(ctx: click.Context, fmt: str, stack: str) -> None:
    """List services."""
    r = sched(ctx).call("ListServices", pb.ListServicesRequest(stack=stack))
    items = []
    for s in r.services:
        d = _msg_dict(s)
        d.pop("spec", None)
        d.pop("previous_spec", None)
        items.append(d)
    _json_or_table(fmt, items, ["NAME", "MODE", "REPLICAS", "IMAGE", "PORTS", "UPDATE"],
                   lambda s: [s["name"], s["mode"] or "replicated", f"{s['running']}/{s['replicas']}", s["image"],
                              s["ports"], s["update_state"]])


def _state_text(t: Any) -> str:
    state = t.state.capitalize()
    when = display.ago(t.state_at)
    return f"{state} {when}".strip()


@service.command("ps")
@click.option("--format", "fmt", default="", help="json, or a template")
@click.option("--no-trunc", is_flag=True)
@click.option("--running", is_flag=True, help="Only tasks wanted running (hide the history)")
@click.argument("services", nargs=-1, required=True)
@click.pass_context
def service_ps(ctx: click.Context, fmt: str, no_trunc: bool, running: bool, services: tuple[str, ...]) -> None:
    """List the tasks of services (or tasks by name), with their node, state and error."""
    r = sched(ctx).call("ListTasks", pb.ListTasksRequest(services=list(services), all=not running))
    if fmt == "json":
        display.emit_json([_msg_dict(t) for t in r.tasks])
        return
    rows = []
    last = ""
    for t in r.tasks:
        name = t.name if t.name != last else f" \\_ {t.name}"
        last = t.name
        err = t.error if no_trunc or len(t.error) <= 60 else t.error[:59] + "…"
        if t.healthy and t.state == "running":
            err = f"({t.healthy}) {err}".strip()
        rows.append([t.id if no_trunc else t.id[:12], name, t.image, t.node or "", t.desired_state.capitalize(),
                     _state_text(t), err])
    display.table(["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"], rows)


@service.command("inspect")
@click.option("--pretty", is_flag=True)
@click.argument("services", nargs=-1, required=True)
@click.pass_context
def service_inspect(ctx: click.Context, pretty: bool, services: tuple[str, ...]) -> None:
    """Display detailed information on services."""
    from scheduler import convert

    out = []
    for name in services:
        s = sched(ctx).call("InspectService", pb.ServiceRef(name=name))
        d = _msg_dict(s)
        # the spec as the scheduler's JSON (snake_case keys, numbers as numbers), not protobuf's mapping
        d["spec"] = convert.spec_dict(convert.spec_from_pb(s.spec))
        d["previous_spec"] = convert.spec_dict(convert.spec_from_pb(s.previous_spec)) \
            if s.HasField("previous_spec") else None
        out.append(d)
    if pretty:
        for d in out:
            click.echo(f"Name:\t\t{d['name']}\nImage:\t\t{d['image']}\nReplicas:\t{d['running']}/{d['replicas']}\n"
                       f"Ports:\t\t{d['ports']}\nUpdateStatus:\t{d['update_state'] or '-'} {d['update_message']}")
        return
    display.emit_json(out)


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True)
@click.pass_context
def service_scale(ctx: click.Context, pairs: tuple[str, ...]) -> None:
    """Scale services: dockyard service scale web=5 worker=2."""
    for p in pairs:
        name, sep, n = p.partition("=")
        if not sep or not n.isdigit():
            fail(f"invalid scale specifier {p!r}: expected SERVICE=REPLICAS")
        sched(ctx).call("ScaleService", pb.ScaleRequest(name=name, replicas=int(n)))
        click.echo(f"{name} scaled to {n}")


def _policy_options(prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--update-* / --rollback-*: docker's rolling-update policy flags."""
    what = "updates" if prefix == "update" else "rollbacks"

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed([
            click.option(f"--{prefix}-parallelism", type=int, default=None,
                         help=f"Maximum number of tasks in {what} at once (0 to update all at once)"),
            click.option(f"--{prefix}-delay", default="", help=f"Delay between {what} (ns|us|ms|s|m|h)"),
            click.option(f"--{prefix}-monitor", default="",
                         help="Duration after each task update to monitor for failure (ns|us|ms|s|m|h)"),
            click.option(f"--{prefix}-order", type=click.Choice(["start-first", "stop-first"]), default=None,
                         help=f"{prefix.capitalize()} order"),
            click.option(f"--{prefix}-failure-action", default=None,
                         type=click.Choice(["pause", "continue", "rollback"] if prefix == "update"
                                           else ["pause", "continue"]),
                         help=f"Action on {prefix} failure"),
            click.option(f"--{prefix}-max-failure-ratio", type=float, default=None,
                         help=f"Failure rate to tolerate during an {prefix}"),
        ]):
            f = opt(f)
        return f

    return add


@service.command("update")
@click.option("--image", default="", help="Service image tag")
@click.option("--replicas", type=int, default=None, help="Number of tasks")
@click.option("--env-add", multiple=True, help="Add or update an environment variable KEY=VALUE")
@click.option("--env-rm", multiple=True, help="Remove an environment variable")
@click.option("--label-add", multiple=True, help="Add or update a service label KEY=VALUE")
@click.option("--label-rm", multiple=True, help="Remove a label by its key")
@click.option("--container-label-add", multiple=True, help="Add or update a container label KEY=VALUE")
@click.option("--container-label-rm", multiple=True, help="Remove a container label by its key")
@click.option("--publish-add", multiple=True, help="Add or update a published port: 8080:80[/udp]")
@click.option("--publish-rm", multiple=True, help="Remove a published port by its target: 80[/udp] or 8080:80")
@click.option("--secret-add", multiple=True, help="Add or update a secret: NAME or source=NAME,target=...")
@click.option("--secret-rm", multiple=True, help="Remove a secret (by name or target)")
@click.option("--config-add", multiple=True, help="Add or update a config: NAME or source=NAME,target=/PATH")
@click.option("--config-rm", multiple=True, help="Remove a config (by name or target)")
@_policy_options("update")
@_policy_options("rollback")
@click.option("--rollback", "rollback_now", is_flag=True, help="Roll back to the previous specification")
@click.option("--force", is_flag=True, help="Force update even if no changes require it")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the update to finish")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.argument("name")
@click.pass_context
def service_update(ctx: click.Context, /, name: str, rollback_now: bool, force: bool, detach: bool, quiet: bool,
                   **o: Any) -> None:
    """Update a service: a rolling update, `--update-parallelism` tasks at a time."""
    from deploy.service_update import EditError, edit
    from scheduler import convert
    from scheduler.objects import ObjectError

    if rollback_now:
        if any(v for v in o.values()) or force:
            fail("dockyard service update: --rollback goes back to the previous spec; give no other change with it")
        service_rollback_now(ctx, name, detach, quiet)
        return
    from deploy import stack as st
    from deploy.service_flags import checked, flag, publish
    from deploy.stack_files import parse_flag

    info = sched(ctx).call("InspectService", pb.ServiceRef(name=name))
    spec = convert.spec_from_pb(info.spec)
    try:
        new = edit(spec, o, publish=lambda text: checked(lambda: publish(text)),
                   duration=lambda name, v: checked(lambda: st.parse_duration(flag(name, v))), file_ref=parse_flag)
    except (EditError, ObjectError) as e:
        fail(f"dockyard service update: {e}")
    if new == spec and not force:
        click.echo(name)
        if not quiet:
            click.echo("verify: nothing to change", err=True)
        return
    after = sched(ctx).call("UpdateService", pb.UpdateServiceRequest(name=name, spec=convert.spec_to_pb(new),
                                                                     expect_version=info.version, force=force))
    click.echo(name)
    if not detach:
        _wait_update(ctx, name, quiet, want=convert.spec_from_pb(after.spec).digest)


def service_rollback_now(ctx: click.Context, name: str, detach: bool, quiet: bool) -> None:
    sched(ctx).call("RollbackService", pb.ServiceRef(name=name))
    click.echo(name)
    if not detach:
        _wait_update(ctx, name, quiet)


def _wait_update(ctx: click.Context, name: str, quiet: bool, timeout: float = 300.0, want: str = "") -> None:
    """As docker's service update without -d: progress until every task runs the new spec; a paused
    update, or one rolled back from `want` (the digest it went to), is an error that says why."""
    from scheduler import convert

    start = time.monotonic()
    last = ""
    while True:
        info = sched(ctx).call("InspectService", pb.ServiceRef(name=name))
        digest = convert.spec_from_pb(info.spec).digest
        tasks = sched(ctx).call("ListTasks", pb.ListTasksRequest(services=[name])).tasks
        live = [t for t in tasks if t.desired_state == "running"
                and t.state not in ("complete", "failed", "rejected", "shutdown")]
        done = [t for t in live if t.spec_version == digest and t.state == "running" and t.healthy != "unhealthy"]
        pending = [t.error for t in live if t.state == "pending" and t.error]
        line = f"overall progress: {len(done)} out of {info.replicas} tasks" + (
            f" ({info.update_state.replace('_', ' ')})" if info.update_state else "") + (
            f": {pending[0]}" if pending else "")
        if line != last and not quiet:
            click.echo(line, err=True)
            last = line
        if info.update_state in ("paused", "rollback_paused"):
            fail(f"{name}: {info.update_message} (see `dockyard service ps {name}`)")
        if want and digest != want and info.update_state == "rollback_completed":
            fail(f"{name}: the update was rolled back: {info.update_message}")
        if info.update_state not in ("updating", "rollback_started") and len(done) >= info.replicas \
                and len(live) == len(done):
            if not quiet:
                click.echo("verify: Service converged", err=True)
            return
        if time.monotonic() - start > timeout:
            fail(f"{name}: the update did not finish in {timeout:.0f} s (it goes on: see `dockyard service ps {name}`)")
        time.sleep(0.3)


@service.command("rollback")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the rollback to finish")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.argument("name")
@click.pass_context
def service_rollback(ctx: click.Context, name: str, detach: bool, quiet: bool) -> None:
    """Go back to a service's previous spec (rolled out as its rollback_config says)."""
    service_rollback_now(ctx, name, detach, quiet)


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def service_rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove services (their tasks are stopped)."""
    r = sched(ctx).call("RemoveServices", pb.RemoveServicesRequest(names=list(names)))
    for n in r.removed:
        click.echo(n)


@service.command("logs")
@click.option("-f", "--follow", is_flag=True)
@click.option("-n", "--tail", default="all", help="Lines from the end of each task's log")
@click.option("--raw", is_flag=True, help="No task prefix")
@click.argument("target")
@click.pass_context
def service_logs(ctx: click.Context, follow: bool, tail: str, raw: bool, target: str) -> None:
    """Logs of a service's tasks, or of one task (web.1), wherever they run."""
    stub = sched(ctx).live_stub()
    n = -1 if tail == "all" else int(tail)
    out = sys.stdout.buffer
    try:
        for line in stub.Logs(pb.LogsRequest(target=target, follow=follow, tail=n)):
            prefix = b"" if raw else f"{line.task}.{line.task_id}@{line.node}    | ".encode()
            data = line.entry.data
            target_stream = sys.stderr.buffer if line.entry.stream == "stderr" else out
            for piece in data.splitlines(keepends=True):
                target_stream.write(prefix + piece)
            target_stream.flush()
    except KeyboardInterrupt:
        pass
    except grpc.RpcError as e:
        fail(f"Error response from scheduler: {e.details()}")  # type: ignore[attr-defined]


@click.command("stack-rm")
@click.argument("stacks", nargs=-1, required=True)
@click.pass_context
def stack_rm(ctx: click.Context, stacks: tuple[str, ...]) -> None:
    """Remove every service of stacks."""
    from deploy.cli_network import remove_stack_networks

    r = sched(ctx).call("RemoveServices", pb.RemoveServicesRequest(names=list(stacks), stack=True))
    for n in r.removed:
        click.echo(f"Removing service {n}")
    for n in r.removed_objects:
        click.echo(f"Removing {n}")
    remove_stack_networks(ctx, stacks)


# --- exec into a task through the scheduler -----------------------------------------------------

def exec_route(ctx: click.Context, container: str) -> Callable[[Iterator[apb.StreamInput]], Any] | None:
    """`dockyard exec` goes through the scheduler when one is configured and the target is not a
    container of the local agent (a task name like bar_web.1 is not: its container is
    bar_web.1.<id>)."""
    if not scheduler_addr(ctx):
        return None
    from deploy.cli import client

    try:
        client(ctx).stub.InspectContainer(apb.ContainerRef(id=container), timeout=3)
        return None  # a local container: the agent's own exec
    except grpc.RpcError:
        pass
    stub = sched(ctx).live_stub()
    call: Callable[[Iterator[apb.StreamInput]], Any] = stub.Exec
    return call


def _cli_modules() -> list[Any]:
    """deploy.cli, and also __main__ when `python -m deploy.cli` runs it (a second module object)."""
    import deploy.cli as cli

    mods: list[Any] = [cli]
    entry = sys.modules.get("__main__")
    if entry is not None and entry is not cli and getattr(entry, "__file__", "") == cli.__file__:
        mods.append(entry)
    return mods


def _install() -> None:
    for mod in _cli_modules():
        main = mod.main
        for cmd in (scheduler_cmd, node, deploy, service, stack_rm, rebalance, migrations_ls):
            main.add_command(cmd)
        if exec_route not in mod.EXEC_ROUTES:
            mod.EXEC_ROUTES.append(exec_route)


_install()
