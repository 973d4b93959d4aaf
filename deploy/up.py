"""`dockyard up`: everything on one host in one command, in the foreground; Ctrl-C stops it all.

It starts the agent as a child process (its own state under --root), makes the busybox base
image from Debian's busybox-static if the agent has none, and with --example deploys a small web
server published on the host. Children are stopped by their PIDs on the way out.
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

import click
import grpc

from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_NAME = "dockyard-example-web"


def _wait_for_agent(stub: pbg.AgentStub, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the agent exited ({proc.returncode}); its log:\n{log.read_text()[-2000:]}")
        try:
            stub.Info(pb.Empty(), timeout=1)
            return
        except grpc.RpcError:
            time.sleep(0.1)
    raise click.ClickException("the agent did not answer within 30 s")


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


def _deploy_example(stub: pbg.AgentStub, port: int) -> str:
    with contextlib.suppress(grpc.RpcError):
        stub.RemoveContainer(pb.RemoveContainerRequest(id=EXAMPLE_NAME, force=True))
    script = ("mkdir -p /www && echo '<h1>hello from dockyard</h1>' > /www/index.html && "
              "exec httpd -f -v -p 80 -h /www")
    cfg = pb.ContainerConfig(
        name=EXAMPLE_NAME, image="busybox:latest", cmd=["sh", "-c", script],
        ports=[pb.PortMapping(host_ip="127.0.0.1", host_port=port, container_port=80, protocol="tcp")],
        resources=pb.Resources(memory=64 << 20, nano_cpus=500_000_000, pids_limit=50),
        restart_policy=pb.RestartPolicy(name="unless-stopped"),
    )
    c = stub.CreateContainer(pb.CreateContainerRequest(config=cfg))
    stub.StartContainer(pb.ContainerRef(id=c.id))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read().decode().strip()
                click.echo(f"example: {url} answers {body!r}")
                return url
        except OSError:
            if time.monotonic() > deadline:
                raise click.ClickException(f"the example web server did not answer on {url}") from None
            time.sleep(0.1)


def up(root: str, socket_path: str, example: bool, port: int, exit_after: bool) -> None:
    root_p = Path(root)
    root_p.mkdir(parents=True, exist_ok=True)
    log = root_p / "agent.log"
    with open(log, "ab") as f:
        agent = subprocess.Popen([sys.executable, "-m", "deploy.cli", "agent", "--root", root, "--socket", socket_path],
                                 stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    stub = pbg.AgentStub(grpc.insecure_channel(f"unix://{socket_path}"))  # type: ignore[no-untyped-call]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        _wait_for_agent(stub, agent, log)
        click.echo(f"agent: pid {agent.pid}, unix://{socket_path}, state in {root} (log {log})")
        _ensure_busybox(stub)
        if example:
            _deploy_example(stub, port)
        click.echo(f"try: dockyard -H unix://{socket_path} ps")
        if exit_after:
            return
        click.echo("running; Ctrl-C stops everything")
        while not stopping and agent.poll() is None:
            time.sleep(0.2)
    finally:
        if example:
            with contextlib.suppress(grpc.RpcError):
                stub.RemoveContainer(pb.RemoveContainerRequest(id=EXAMPLE_NAME, force=True), timeout=30)
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
        click.echo("stopped")
