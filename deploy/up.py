"""`dockyard up`: a whole one-host cluster in one command, in the foreground; Ctrl-C stops it all.

It starts a scheduler (which starts and owns its etcd, data under <root>/scheduler) and an agent
joined to it (state under <root>), makes the busybox base image from Debian's busybox-static if
the agent has none, and deploys deploy/examples/stack.yaml (a busybox httpd `web` with 2 replicas
and a `worker`) unless --no-example. On the way out the scheduler (and with it etcd) is stopped,
the agent's task containers are removed (the services stay in etcd and come back with the next
`dockyard up`), and the agent is stopped; each by its PID. Mutual TLS unless --insecure: the
scheduler's join port is 127.0.0.1:port+1 and the agent listens on port+2 (with --insecure: port+1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import grpc

from common import settings, transport
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg
from protos import cluster_pb2 as cpb
from protos import cluster_pb2_grpc as cpbg

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "examples" / "stack.yaml"


def _wait(what: str, check: object, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the {what} exited ({proc.returncode}); its log:\n{log.read_text()[-2000:]}")
        try:
            if check():  # type: ignore[operator]
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the {what} did not answer within {timeout:.0f} s (log {log})")


def _ensure_busybox(stub: pbg.AgentStub) -> None:
    names = {t for i in stub.ListImages(pb.ListImagesRequest()).images for t in i.repo_tags}
    if "busybox:latest" in names:
        return
    click.echo("making the busybox base image from /bin/busybox (deploy/images/busybox.sh)")
    tar = subprocess.run(["sh", str(REPO / "deploy/images/busybox.sh")], capture_output=True, check=True).stdout

    def chunks() -> Iterator[pb.DataChunk]:
        yield pb.DataChunk(import_header=pb.ImportHeader(reference="busybox:latest", changes=['CMD ["sh"]']))
        for i in range(0, len(tar), 256 * 1024):
            yield pb.DataChunk(data=tar[i:i + 256 * 1024])

    stub.ImportImage(chunks())


def _deploy_example(sched: cpbg.SchedulerStub, agent: pbg.AgentStub) -> list[str]:
    from deploy.stack import load_stack
    from scheduler.convert import spec_to_pb

    stack = load_stack(str(EXAMPLE))
    r = sched.Deploy(cpb.DeployRequest(stack=stack.name, services=[spec_to_pb(s) for s in stack.services]),
                     timeout=30)
    for c in r.changes:
        click.echo(f"example: {c.action} service {c.service}")
    want = sum(s.replicas for s in stack.services)
    deadline = time.monotonic() + 30
    while True:
        ts = sched.ListTasks(cpb.ListTasksRequest(services=[s.name for s in stack.services]), timeout=5).tasks
        if sum(1 for t in ts if t.state == "running" and t.desired_state == "running") >= want:
            break
        if time.monotonic() > deadline:
            raise click.ClickException("the example's tasks did not start: "
                                       + "; ".join(f"{t.name} {t.state} {t.error}" for t in ts))
        time.sleep(0.2)
    urls = []
    cs = agent.ListContainers(pb.ListContainersRequest(filters={"label": "dockyard.service=example_web"})).containers
    for c in cs:
        for p in c.ports:
            if p.container_port == 80 and p.host_port:
                urls.append(f"http://127.0.0.1:{p.host_port}/")
    for url in urls:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    click.echo(f"example: {url} answers {resp.read().decode().strip()!r}")
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise click.ClickException(f"the example web server did not answer on {url}") from None
                time.sleep(0.1)
    return urls


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _admin_bundle(client: Path, scheduler: subprocess.Popen[bytes], log: Path) -> transport.Identity:
    """The admin bundle a --tls scheduler writes, once it is there; offered to ~/.dockyard when that
    has none (docker's DOCKER_CERT_PATH convention), else the export line is printed."""
    from common import pki

    _wait("scheduler's client bundle", lambda: (client / pki.KEY_FILE).exists(), scheduler, log)
    bundle = pki.read_bundle(client)
    offer_admin_bundle(client, bundle)
    return transport.CLI.with_tls(bundle)


def offer_admin_bundle(where: Path, bundle: Any) -> None:
    """An admin bundle (in ``where``) copied to ~/.dockyard when that has none and DOCKYARD_CERT_PATH
    is unset (docker's DOCKER_CERT_PATH convention), else the export line is printed."""
    from common import pki

    home = Path.home() / ".dockyard"
    if not any((home / n).exists() for n in (pki.CA_FILE, pki.CERT_FILE, pki.KEY_FILE)) \
            and not os.environ.get("DOCKYARD_CERT_PATH"):
        pki.write_bundle(home, bundle)
        click.echo(f"admin TLS bundle written to {home} (the CLI finds it there)")
    else:
        click.echo(f"admin TLS bundle in {where}: export DOCKYARD_CERT_PATH={where}")


def up(root: str, socket_path: str, example: bool, port: int, exit_after: bool, *, bridge: str = settings.BRIDGE,
       subnet: str = settings.SUBNET, cgroup_parent: str | None = None, tls: bool = False,
       ip_forward: bool = True, ip_masq: bool = True) -> None:
    root_p = Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    sched_addr = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "deploy.cli"]
    sched_log, agent_log = root_p / "scheduler.log", root_p / "agent.log"
    with open(sched_log, "ab") as f:
        scheduler = subprocess.Popen([*cli, "scheduler", "--listen", sched_addr, "--state-dir", str(root_p / "scheduler"),
                                      "--tls" if tls else "--insecure"],
                                     stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env=env)
    agent: subprocess.Popen[bytes] | None = None
    identity = _admin_bundle(root_p / "scheduler" / "client", scheduler, sched_log) if tls else transport.CLI
    sched = cpbg.SchedulerStub(transport.dial_blocking(sched_addr, identity, transport.Role.SCHEDULER))  # type: ignore[no-untyped-call]
    stub = pbg.AgentStub(transport.dial_blocking(f"unix://{socket_path}", transport.CLI, transport.Role.AGENT))  # type: ignore[no-untyped-call]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        _wait("scheduler", lambda: sched.Status(cpb.Empty(), timeout=1).leader, scheduler, sched_log)
        click.echo(f"scheduler: pid {scheduler.pid}, {sched_addr}, etcd under {root_p / 'scheduler'} (log {sched_log})")
        # With --tls the scheduler's join port is port + 1, so the agent listens on port + 2.
        agent_args = [*cli, "agent", "--root", root, "--socket", socket_path, "--bridge", bridge, "--subnet", subnet,
                      "--listen", f"127.0.0.1:{port + (2 if tls else 1)}", "--join", sched_addr,
                      "--docker-socket", str(Path(socket_path).parent / "docker.sock"),
                      f"--ip-forward={str(ip_forward).lower()}", f"--ip-masq={str(ip_masq).lower()}"]
        agent_env = dict(env)
        if tls:  # in the environment, not the argv: `ps` shows every user an argv
            agent_env["DOCKYARD_JOIN_TOKEN"] = sched.JoinToken(cpb.JoinTokenRequest(role="worker"), timeout=5).token
        else:
            agent_args += ["--insecure"]
        if cgroup_parent:
            agent_args += ["--cgroup-parent", cgroup_parent]
        with open(agent_log, "ab") as f:
            agent = subprocess.Popen(agent_args, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True, env=agent_env)
        _wait("agent", lambda: stub.Info(pb.Empty(), timeout=1) is not None, agent, agent_log)
        _wait("agent's registration",
              lambda: any(n.status == "ready" for n in sched.ListNodes(cpb.Empty(), timeout=1).nodes), agent, agent_log)
        click.echo(f"agent: pid {agent.pid}, unix://{socket_path}, state in {root} (log {agent_log})")
        _ensure_busybox(stub)
        if example:
            _deploy_example(sched, stub)
        click.echo(f"try: DOCKYARD_SCHEDULER={sched_addr} dockyard service ps example_web")
        if exit_after:
            return
        click.echo("running; Ctrl-C stops everything")
        while not stopping and agent.poll() is None and scheduler.poll() is None:
            time.sleep(0.2)
    finally:
        _stop(scheduler)  # first, so that nothing places the tasks again while they are removed
        if agent is not None and agent.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                for c in stub.ListContainers(pb.ListContainersRequest(all=True, filters={"label": "dockyard.task"}),
                                             timeout=10).containers:
                    stub.RemoveContainer(pb.RemoveContainerRequest(id=c.id, force=True), timeout=30)
        if agent is not None:
            _stop(agent)
        click.echo("stopped")
