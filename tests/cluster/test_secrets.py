"""Secrets and configs end to end on one host: a real etcd, a scheduler process, an agent joined to
it, the CLI as a user types it. A secret is readable in its task at /run/secrets/NAME (with its uid,
gid and mode), a config at its target; neither is in etcd in the clear (the secret), in the agent's
state on disk, or in the container's export; `rm` is refused while a service uses one; removing
the service unmounts the tmpfs. Every process is stopped by its PID and every container removed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import CLI, REPO, _env
from tests.cluster_harness import JoinedAgent, SchedulerProcess, cli, one_node_cluster, running, wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

SECRET = b"s3cr3t-" + os.urandom(12).hex().encode()  # unique, so a search for it finds only it
CONFIG = b"listen 8080;\n"


class Env:
    def __init__(self, etcd: object, sched: SchedulerProcess, agent: JoinedAgent, tmp: Path) -> None:
        self.etcd, self.sched, self.agent, self.tmp = etcd, sched, agent, tmp

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is None:
            return cli(self.sched.address, *args, host=self.agent.host)
        env = _env()
        env["DOCKYARD_SCHEDULER"] = self.sched.address
        r = subprocess.run([*CLI, "-H", self.agent.host, *args], input=stdin, capture_output=True, timeout=60,
                           env=env, cwd=REPO)
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())

    def ok(self, *args: str, stdin: bytes | None = None) -> str:
        r = self.cli(*args, stdin=stdin)
        assert r.returncode == 0, f"dockyard {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def containers(self, service: str) -> list[apb.ContainerSummary]:
        return [c for c in self.agent.task_containers() if c.labels.get("dockyard.service") == service]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    base = tmp_path_factory.mktemp("secrets")
    with one_node_cluster(base, busybox_tar_path) as (etcd, sched, agent):
        yield Env(etcd, sched, agent, base)


def _etcd_values(endpoint: str, prefix: bytes) -> dict[bytes, bytes]:
    from scheduler.store import Store

    host, _, port = endpoint.removeprefix("http://").rpartition(":")

    async def read() -> dict[bytes, bytes]:
        store = await Store.connect(host, int(port))
        try:
            _, kvs = await store.range(prefix)
            return {bytes(kv.key): bytes(kv.value) for kv in kvs}
        finally:
            await store.close()

    return asyncio.run(read())


def _files_under(root: Path, needle: bytes) -> list[str]:
    """Files on disk under root holding needle (mount points of other file systems are not entered)."""
    dev = os.stat(root).st_dev
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                if os.path.isfile(p) and not os.path.islink(p) and needle in Path(p).read_bytes():
                    hits.append(p)
            except OSError:
                pass
    return hits


def test_secret_and_config_commands(env: Env) -> None:
    assert env.ok("secret", "create", "db_pw", "-", stdin=SECRET).strip() == "db_pw"
    (env.tmp / "app.conf").write_bytes(CONFIG)
    env.ok("config", "create", "--label", "team=shop", "app_conf", str(env.tmp / "app.conf"))
    ls = env.ok("secret", "ls")
    assert "db_pw" in ls and str(len(SECRET)) in ls
    inspect = env.ok("secret", "inspect", "db_pw")
    assert SECRET.decode() not in inspect and '"name": "db_pw"' in inspect
    import base64
    import json

    conf = json.loads(env.ok("config", "inspect", "app_conf"))[0]
    assert base64.b64decode(conf["data"]) == CONFIG and conf["labels"] == {"team": "shop"}
    # sealed in etcd: the value there has no trace of the secret, and names the key it was sealed with
    values = _etcd_values(env.etcd.endpoint, b"/dockyard/secrets/")  # type: ignore[attr-defined]
    raw = values[b"/dockyard/secrets/db_pw"]
    assert SECRET not in raw and base64.b64encode(SECRET) not in raw and b"key_id" in raw
    key = env.sched.base / "state" / "secrets.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    # bad input: a taken name, an empty file, a bad name, an unknown one
    r = env.cli("secret", "create", "db_pw", "-", stdin=b"other")
    assert r.returncode != 0 and "secret db_pw already exists" in r.stderr, r.stderr
    r = env.cli("secret", "create", "empty", "-", stdin=b"")
    assert r.returncode != 0 and "stdin is empty" in r.stderr, r.stderr
    r = env.cli("secret", "create", "bad/name", "-", stdin=b"x")
    assert r.returncode != 0 and "invalid secret name 'bad/name'" in r.stderr, r.stderr
    r = env.cli("secret", "inspect", "nope")
    assert r.returncode != 0 and "secret not found: nope" in r.stderr, r.stderr
    r = env.cli("secret", "create", "big", "-", stdin=b"x" * (500 * 1024 + 1))
    assert r.returncode != 0 and "over the limit of 500 KiB" in r.stderr, r.stderr


STACK = """\
secrets:
  db_pw: {external: true}
  token: {file: ./token.txt}
configs:
  app: {file: ./app.conf}
services:
  web:
    image: busybox:latest
    command: ["sleep", "3600"]
    secrets:
      - db_pw
      - source: token
        target: api_token
        uid: "1000"
        gid: "1001"
        mode: 0400
    configs:
      - source: app
        target: /etc/app/app.conf
        mode: 0440
"""


def _exec(env: Env, cid: str, *cmd: str) -> str:
    return env.ok("exec", cid, *cmd)


def test_a_stack_gets_its_secrets_as_files_only_in_memory(env: Env) -> None:
    d = env.tmp / "shop"
    d.mkdir()
    (d / "stack.yaml").write_text(STACK)
    token = b"tok-" + os.urandom(8).hex().encode()
    (d / "token.txt").write_bytes(token)
    (d / "app.conf").write_bytes(CONFIG)
    out = env.ok("stack", "deploy", "-c", str(d / "stack.yaml"), "shop")
    assert "Creating secret shop_token" in out and "Creating config shop_app" in out, out
    try:
        wait_for(lambda: running(env.sched, "shop_web"), 30, "shop_web running")
        (c,) = env.containers("shop_web")
        assert _exec(env, c.id, "cat", "/run/secrets/db_pw").encode() == SECRET
        assert _exec(env, c.id, "cat", "/run/secrets/api_token").encode() == token
        assert _exec(env, c.id, "cat", "/etc/app/app.conf").encode() == CONFIG
        assert _exec(env, c.id, "stat", "-c", "%u %g %a", "/run/secrets/api_token").split() == ["1000", "1001", "400"]
        assert _exec(env, c.id, "stat", "-c", "%u %g %a", "/run/secrets/db_pw").split() == ["0", "0", "444"]
        assert _exec(env, c.id, "stat", "-c", "%a", "/etc/app/app.conf").strip() == "440"
        # read only in the container
        r = env.cli("exec", c.id, "sh", "-c", "echo x > /run/secrets/db_pw")
        assert r.returncode != 0
        # on a tmpfs of the node, not on its disk: not in the agent's state, nor in the export
        tmpfs = env.agent.root / "taskfiles" / c.id
        mounts = Path("/proc/mounts").read_text()
        assert f" {tmpfs} tmpfs " in mounts, mounts
        assert _files_under(env.agent.root, SECRET) == [] and _files_under(env.agent.root, token) == []
        export = env.tmp / "web.tar"
        env.ok("export", "-o", str(export), c.id)
        data = export.read_bytes()
        assert SECRET not in data and token not in data
        # in use: neither can be removed
        r = env.cli("secret", "rm", "db_pw")
        assert r.returncode != 0 and "secret db_pw is in use by the following service: shop_web" in r.stderr, r.stderr
        r = env.cli("config", "rm", "shop_app")
        assert r.returncode != 0 and "in use" in r.stderr, r.stderr
        # deploying again is idempotent; a changed file is refused, nothing changed
        assert "Creating secret" not in env.ok("stack", "deploy", "-c", str(d / "stack.yaml"), "shop")
        (d / "token.txt").write_bytes(b"changed")
        r = env.cli("stack", "deploy", "-c", str(d / "stack.yaml"), "shop")
        assert r.returncode != 0 and "secret shop_token exists with other data" in r.stderr, r.stderr
    finally:
        out = env.ok("stack", "rm", "shop")
    # as docker stack rm: the stack's own secrets and configs go with it, an external one stays
    assert "Removing secret shop_token" in out and "Removing config shop_app" in out, out
    assert "db_pw" not in out
    wait_for(lambda: not env.containers("shop_web"), 30, "shop_web removed")
    wait_for(lambda: f"{env.agent.root / 'taskfiles'}/" not in Path("/proc/mounts").read_text(), 10,
             "the tmpfs unmounted")
    assert not list((env.agent.root / "taskfiles").iterdir())
    assert "shop_app" not in env.ok("config", "ls")
    env.ok("secret", "rm", "db_pw")
    assert "db_pw" not in env.ok("secret", "ls") and "shop_token" not in env.ok("secret", "ls")


def test_service_create_with_secret_flags(env: Env) -> None:
    env.ok("secret", "create", "flagged", "-", stdin=SECRET)
    try:
        r = env.cli("service", "create", "--name", "svc_nosuch", "--secret", "missing", "-d", "busybox:latest",
                    "sleep", "60")
        assert r.returncode != 0 and "secret not found: missing" in r.stderr, r.stderr
        r = env.cli("service", "create", "--name", "svc_bad", "--secret", "source=flagged,target=../x", "-d",
                    "busybox:latest", "sleep", "60")
        assert r.returncode != 0 and "invalid target" in r.stderr, r.stderr
        env.ok("service", "create", "--name", "svc_s", "--secret", "source=flagged,target=/etc/pw,mode=0400",
               "-q", "busybox:latest", "sleep", "3600")
        (c,) = env.containers("svc_s")
        assert _exec(env, c.id, "cat", "/etc/pw").encode() == SECRET
        # service update: a secret added, the first one's target moved; the task is replaced
        env.ok("secret", "create", "second", "-", stdin=b"two")
        env.ok("service", "update", "--secret-add", "second", "--secret-rm", "flagged", "--secret-add",
               "source=flagged,target=/etc/pw2", "-q", "svc_s")
        (c2,) = env.containers("svc_s")
        assert c2.id != c.id
        assert _exec(env, c2.id, "cat", "/run/secrets/second") == "two"
        assert _exec(env, c2.id, "cat", "/etc/pw2").encode() == SECRET
        assert env.cli("exec", c2.id, "cat", "/etc/pw").returncode != 0
    finally:
        env.cli("service", "rm", "svc_s")
        wait_for(lambda: not env.containers("svc_s"), 30, "svc_s removed")
        wait_for(lambda: env.cli("secret", "rm", "flagged", "second").returncode == 0, 30, "both removed")


def test_an_agent_gets_only_the_files_of_its_own_tasks(env: Env) -> None:
    env.ok("secret", "create", "own", "-", stdin=SECRET)
    try:
        env.ok("service", "create", "--name", "svc_own", "--secret", "own", "-q", "busybox:latest", "sleep", "3600")
        (t,) = [t for t in env.sched.stub.ListTasks(cpb.ListTasksRequest(services=["svc_own"]), timeout=5).tasks
                if t.desired_state == "running"]
        got = env.sched.stub.TaskFiles(cpb.TaskFilesRequest(node=t.node, task_id=t.id), timeout=10)
        assert [(f.kind, f.name, f.data) for f in got.files] == [("secret", "own", SECRET)]
        # another node asking for this task's files: refused (over TLS the node is the certificate's:
        # tests/cluster/test_tls_cluster.py)
        with pytest.raises(grpc.RpcError) as e:
            env.sched.stub.TaskFiles(cpb.TaskFilesRequest(node="elsewhere", task_id=t.id), timeout=10)
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "is not placed on node elsewhere" in e.value.details()  # type: ignore[attr-defined]
    finally:
        env.cli("service", "rm", "svc_own")
        wait_for(lambda: not env.containers("svc_own"), 30, "svc_own removed")
        env.cli("secret", "rm", "own")


def test_restarts_keep_the_files_and_the_key(env: Env) -> None:
    env.ok("secret", "create", "kept", "-", stdin=SECRET)
    try:
        env.ok("service", "create", "--name", "svc_kept", "--secret", "kept", "-q", "busybox:latest", "sleep", "3600")
        (c,) = env.containers("svc_kept")
        # the agent killed and started again: the container is adopted, its tmpfs is still there
        env.agent.kill9()
        env.agent.start()
        wait_for(lambda: [x for x in env.containers("svc_kept") if x.id == c.id], 30, "the container adopted")
        assert _exec(env, c.id, "cat", "/run/secrets/kept").encode() == SECRET
        # the scheduler restarted: the same key file opens what it sealed, for a new task too
        env.sched.stop()
        env.sched.start()
        env.ok("service", "scale", "svc_kept=2")
        wait_for(lambda: len(env.containers("svc_kept")) == 2, 60, "a second task")
        for x in env.containers("svc_kept"):
            assert _exec(env, x.id, "cat", "/run/secrets/kept").encode() == SECRET
    finally:
        env.cli("service", "rm", "svc_kept")
        wait_for(lambda: not env.containers("svc_kept"), 30, "svc_kept removed")
        wait_for(lambda: env.cli("secret", "rm", "kept").returncode == 0, 20, "kept removed")


def test_a_bad_stack_secret_is_refused_with_its_line(env: Env) -> None:
    f = env.tmp / "bad.yaml"
    f.write_text(textwrap.dedent("""\
        services:
          web:
            image: busybox:latest
            secrets: [nope]
        """))
    r = env.cli("stack", "deploy", "-c", str(f), "bad")
    assert r.returncode != 0 and f"{f}:4: services.web.secrets[0]: secret 'nope' is not declared" in r.stderr, r.stderr
    assert not env.sched.stub.ListServices(cpb.ListServicesRequest(stack="bad"), timeout=5).services
