"""`dockyard cluster up|down|status -i hosts.yaml`: a cluster bootstrapped over SSH.

    inventory (hosts.yaml) --load_inventory--> Inventory (validated; errors name file:line: field)
    repository --make_bundle--> tar.gz of `git ls-files` + its sha256
    up:     connect to every host (side by side)                       any failure: stop here, touch nothing
            copy   (SFTP to /tmp, sha256sum checked there, untar into project_dir, skipped when the
                    host already has this bundle), then install (deploy/install.sh) or, with
                    --no-install, check that the host's python imports dockyard
                                                                       any failure: start nothing
            start the scheduler(s), then an agent on every host joined to them; each start waits
            until the scheduler answers / the node is ready          any failure: stop what this run
                                                                       started; running ones stay
    down:   stop the agents, then the schedulers, by the PIDs in their pid files
    status: each host's processes (pid, alive, uptime, log)

On the host, processes are run by this same module, copied there: `python -m deploy.bootstrap
'<json request>'` (start|stop|status|check, and up-local for provisioning without SSH; see
`remote_main`). It starts a process detached (its own session, stdin from /dev/null, output
appended to <state_dir>/log/<name>.log) and records <state_dir>/run/<name>.pid as {pid, start_time, argv}: the start time (field 22 of /proc/PID/stat)
tells our process from a later one that reused the PID, so a stale pid file never kills a stranger.
A process already running is left alone, which is what makes `up` idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import yaml

from common import settings

REPO = Path(__file__).resolve().parent.parent
MANIFEST = ".dockyard-files"     # the bundle's file list: lets a bootstrapped copy bootstrap again
MARKER = ".dockyard-bundle"      # in project_dir: the sha256 of the bundle it was made from
ROLES = ("scheduler", "agent")

# ================================================================================================
# The inventory
# ================================================================================================


class InventoryError(Exception):
    """A bad inventory: `FILE:LINE: FIELD: what is wrong` (one per problem, all of them at once)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class HostSpec:
    name: str
    address: str
    role: str = "agent"
    port: int = 22
    user: str = "root"
    key: str | None = None            # local private key file; None: ssh-agent and ~/.ssh defaults
    known_hosts: str | None = None    # local file; None: ~/.ssh/known_hosts
    verify_host_key: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    advertise: str = ""               # the address other hosts reach this one at (default: address)
    sudo: bool = False
    project_dir: str = "/opt/dockyard"
    state_dir: str = settings.ROOT
    python: str = ""                  # default: <project_dir>/.venv/bin/python (made by install.sh)
    socket: str = settings.AGENT_SOCKET
    scheduler_port: int = settings.SCHEDULER_PORT
    agent_port: int = 7070
    agent_args: list[str] = field(default_factory=list)
    scheduler_args: list[str] = field(default_factory=list)

    @property
    def is_scheduler(self) -> bool:
        return self.role == "scheduler"

    @property
    def scheduler_addr(self) -> str:
        return f"{self.advertise}:{self.scheduler_port}"

    @property
    def agent_addr(self) -> str:
        return f"{self.advertise}:{self.agent_port}"


ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
ETCD_MEMBERS = 3  # raft: 3 members survive the loss of any one


@dataclass
class Inventory:
    path: Path
    hosts: list[HostSpec]
    etcd: str = ""
    tls: bool = False        # `cluster up` (unless --insecure): schedulers --tls, agents join by the worker token
    join_token: str = ""     # that token, read from the first scheduler once it runs

    @property
    def schedulers(self) -> list[HostSpec]:
        return [h for h in self.hosts if h.is_scheduler]

    @property
    def etcd_members(self) -> list[HostSpec]:
        """The hosts `cluster up` runs an etcd member on: with no `etcd:` of the user's and three
        hosts or more, the scheduler hosts first, then the others in order, three of them."""
        if self.etcd or len(self.hosts) < ETCD_MEMBERS:
            return []
        return (self.schedulers + [h for h in self.hosts if not h.is_scheduler])[:ETCD_MEMBERS]

    @property
    def etcd_scheme(self) -> str:
        """Our etcd members serve https with client-certificate auth (and peer TLS) unless --insecure."""
        return "https" if self.tls else "http"

    @property
    def etcd_urls(self) -> str:
        """What the schedulers are given as --etcd: the user's, or our members' client URLs."""
        return self.etcd or ",".join(f"{self.etcd_scheme}://{h.advertise}:{ETCD_CLIENT_PORT}"
                                     for h in self.etcd_members)

    @property
    def join(self) -> str:
        return ",".join(h.scheduler_addr for h in self.schedulers)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_TOP_FIELDS = ("hosts", "defaults", "etcd")
# Every field a host may have; all but name and address may also be given once under `defaults:`.
_HOST_FIELDS = ("name", "address", "role", "port", "user", "key", "known_hosts", "labels", "advertise",
                "sudo", "project_dir", "state_dir", "python", "socket", "scheduler_port", "agent_port",
                "agent_args", "scheduler_args")
_PER_HOST_ONLY = ("name", "address")

Path_ = tuple[str | int, ...]


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(document)"


class _Checker:
    """Collects problems, each with the file and the line of the YAML node it is about."""

    def __init__(self, file: Path, lines: dict[Path_, int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[str] = []

    def line(self, path: Path_) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def bad(self, path: Path_, msg: str) -> None:
        self.problems.append(f"{self.file}:{self.line(path)}: {_dotted(path)}: {msg}")


def _compose(text: str, file: Path) -> tuple[Any, dict[Path_, int]]:
    """The document as plain data, and the line of every node in it (1-based)."""
    from deploy.compose.yamlload import Loader, YAMLLimitError

    # the stack files' bounded loader: depth and alias expansion limited while composing, so the
    # walk below (which expands aliases) stays small; YAML 1.2 numbers, as Compose reads them
    loader: Any = Loader(text)  # type: ignore[call-arg]
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> Any:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # `<<: *anchor` merges
            out: dict[Any, Any] = {}
            for k, v in node.value:
                key = loader.construct_object(k, deep=True)
                if not isinstance(key, str):
                    lines[(*path, str(key))] = k.start_mark.line + 1
                    raise InventoryError([f"{file}:{k.start_mark.line + 1}: {_dotted(path)}: "
                                          f"keys must be text, got {key!r}"])
                if key in out:
                    raise InventoryError([f"{file}:{k.start_mark.line + 1}: {_dotted((*path, key))}: "
                                          "given twice"])
                out[key] = walk(v, (*path, key))
                lines[(*path, key)] = k.start_mark.line + 1  # a field's problems point at its key
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(v, (*path, i)) for i, v in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        node = loader.get_single_node()
        return (walk(node, ()) if node is not None else None), lines
    except YAMLLimitError as e:
        raise InventoryError([f"{file}:{e.line}: {e.problem}"]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1"
        raise InventoryError([f"{file}:{where}: not valid YAML: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise InventoryError([f"{file}: not valid YAML: {e}"]) from None
    finally:
        loader.dispose()


def _field(c: _Checker, path: Path_, name: str, v: Any, base: Path | None) -> Any:
    """One field's value checked and normalised; None (after a problem is recorded) when bad."""
    def port() -> int | None:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            c.bad(path, f"must be a port number 1..65535, got {v!r}")
            return None
        return v

    def text() -> str | None:
        if not isinstance(v, str) or not v.strip():
            c.bad(path, f"must be non-empty text, got {v!r}")
            return None
        return v.strip()

    def remote_path() -> str | None:
        s = text()
        if s is not None and not PurePosixPath(s).is_absolute():
            c.bad(path, f"must be an absolute path on the host, got {s!r}")
            return None
        return s

    def local_file() -> str | None:
        s = text()
        if s is None:
            return None
        p = Path(s).expanduser()
        if base is None:  # on a host itself: the SSH side's files are not there, and not needed
            return str(p)
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            c.bad(path, f"no such file: {p}")
            return None
        return str(p)

    if name in ("port", "scheduler_port", "agent_port"):
        return port()
    if name in ("name",):
        s = text()
        if s is not None and not _NAME.match(s):
            c.bad(path, f"{s!r}: letters, digits, '.', '_' and '-' only (at most 63)")
            return None
        return s
    if name in ("address", "user", "advertise"):
        s = text()
        if s is not None and any(ch.isspace() for ch in s):
            c.bad(path, f"{s!r} has spaces in it")
            return None
        return s
    if name == "role":
        if v not in ROLES:
            c.bad(path, f"must be one of {', '.join(ROLES)}, got {v!r}")
            return None
        return v
    if name == "sudo":
        if not isinstance(v, bool):
            c.bad(path, f"must be true or false, got {v!r}")
            return None
        return v
    if name == "key":
        return local_file()
    if name == "known_hosts":
        if v is False:  # explicitly: do not verify the hosts' keys
            return False
        return local_file()
    if name in ("project_dir", "state_dir", "python", "socket"):
        return remote_path()
    if name == "labels":
        if not isinstance(v, dict):
            c.bad(path, f"must be a mapping of KEY: VALUE, got {v!r}")
            return None
        out = {}
        for k, val in v.items():
            if not _LABEL_KEY.match(k):
                c.bad((*path, k), f"label key {k!r}: letters, digits, '.', '_', '/' and '-' only")
            elif isinstance(val, dict | list) or val is None:
                c.bad((*path, k), f"label value must be text or a number, got {val!r}")
            else:
                out[k] = str(val).lower() if isinstance(val, bool) else str(val)
        return out
    if name in ("agent_args", "scheduler_args"):
        if not isinstance(v, list) or not all(isinstance(a, str | int) and not isinstance(a, bool) for a in v):
            c.bad(path, f"must be a list of command-line arguments (text), got {v!r}")
            return None
        return [str(a) for a in v]
    raise AssertionError(name)  # pragma: no cover - _HOST_FIELDS and this function go together


def _fields(c: _Checker, path: Path_, d: Any, base: Path | None, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(d, dict):
        c.bad(path, f"must be a mapping of field: value, got {d!r}")
        return {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k not in allowed:
            hint = " (only per host)" if k in _PER_HOST_ONLY else ""
            c.bad((*path, k), f"unknown field{hint}; known: {', '.join(allowed)}")
            continue
        val = _field(c, (*path, k), k, v, base)
        if val is not None:
            out[k] = val
    return out


def parse_inventory(text: str, file: Path, check_files: bool = True) -> Inventory:
    """check_files=False: key and known_hosts files are not looked for (on a host, see up_local)."""
    data, lines = _compose(text, file)
    c = _Checker(file, lines)
    base = file.resolve().parent if check_files else None
    if not isinstance(data, dict):
        c.bad((), "must be a mapping with `hosts:` (and optionally `defaults:` and `etcd:`)")
        raise InventoryError(c.problems)
    for k in data:
        if k not in _TOP_FIELDS:
            c.bad((k,), f"unknown field; known: {', '.join(_TOP_FIELDS)}")
    defaults = _fields(c, ("defaults",), data.get("defaults") or {}, base,
                       tuple(f for f in _HOST_FIELDS if f not in _PER_HOST_ONLY))
    etcd = data.get("etcd") or ""
    if not isinstance(etcd, str) or not all(u.strip().startswith(("http://", "https://"))
                                            for u in etcd.split(",") if etcd):
        c.bad(("etcd",), f"must be etcd client URLs http://HOST:PORT[,...], got {etcd!r}")
        etcd = ""
    hosts_v = data.get("hosts")
    if not isinstance(hosts_v, list) or not hosts_v:
        c.bad(("hosts",), "must be a non-empty list of hosts (each with at least `address:`)")
        raise InventoryError(c.problems)
    hosts: list[HostSpec] = []
    names: dict[str, int] = {}
    addrs: dict[tuple[str, int], int] = {}
    for i, h in enumerate(hosts_v):
        path: Path_ = ("hosts", i)
        got = _fields(c, path, h, base, _HOST_FIELDS)
        if isinstance(h, dict) and "address" not in h:
            c.bad(path, "missing field `address` (the host's name or IP address to SSH to)")
            continue
        if "address" not in got:
            continue
        merged = {**defaults, **got}
        known = merged.pop("known_hosts", None)
        spec = HostSpec(name=merged.pop("name", got["address"]), verify_host_key=known is not False,
                        known_hosts=known or None, **merged)
        spec.advertise = spec.advertise or spec.address
        if "sudo" not in merged:
            spec.sudo = spec.user != "root"
        spec.python = spec.python or str(PurePosixPath(spec.project_dir) / ".venv/bin/python")
        if spec.name in names:
            c.bad((*path, "name") if "name" in got else (*path, "address"),
                  f"{spec.name!r} is also the name of hosts[{names[spec.name]}]")
        names.setdefault(spec.name, i)
        if (spec.address, spec.port) in addrs:
            c.bad((*path, "address"), f"{spec.address}:{spec.port} is also hosts[{addrs[spec.address, spec.port]}]'s")
        addrs.setdefault((spec.address, spec.port), i)
        hosts.append(spec)
    n_sched = sum(1 for h in hosts if h.is_scheduler)
    if not c.problems:
        if n_sched == 0:
            c.bad(("hosts",), "no host has `role: scheduler`: one host must run the scheduler")
        elif n_sched > 1 and not etcd and len(hosts) < ETCD_MEMBERS:
            second = [i for i, h in enumerate(hosts_v) if isinstance(h, dict) and h.get("role") == "scheduler"][1:2]
            c.bad(("hosts", *second, "role"), f"{n_sched} hosts have `role: scheduler`: replicas share one etcd, so give "
                              "`etcd: http://HOST:PORT,...` (with no etcd, each scheduler starts its own "
                              "and only one scheduler is possible)")
    if c.problems:
        raise InventoryError(c.problems)
    return Inventory(path=file, hosts=hosts, etcd=etcd)


def load_inventory(path: str | Path, check_files: bool = True) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InventoryError([f"{p}: cannot read the inventory: {e.strerror or e}"]) from None
    return parse_inventory(text, p, check_files)


# ================================================================================================
# The bundle: the project's tracked files
# ================================================================================================


@dataclass
class Bundle:
    data: bytes
    sha256: str
    files: int


def project_files(repo: Path = REPO) -> list[str]:
    """The files to copy: `git ls-files` in a checkout, else the manifest a bundle brought along."""
    if (repo / ".git").exists():
        r = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, timeout=60)
        if r.returncode != 0:
            raise OSError(f"git ls-files in {repo}: {r.stderr.decode(errors='replace').strip()}")
        names = [n for n in r.stdout.decode().split("\0") if n]
    elif (repo / MANIFEST).is_file():
        names = (repo / MANIFEST).read_text().splitlines()
    else:
        raise OSError(f"{repo} is neither a git checkout nor a copy made by `dockyard cluster up`")
    # A tracked file deleted in the working tree is not sent.
    return sorted(n for n in names if os.path.lexists(repo / n))


def make_bundle(repo: Path = REPO) -> Bundle:
    """A tar.gz of the project's files. Reproducible (sorted, owner root, gzip without a time), so
    the same tree gives the same sha256 and a host that has it already is not sent it again."""
    names = project_files(repo)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for n in names:
            info = tar.gettarinfo(str(repo / n), arcname=n)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                with open(repo / n, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        manifest = ("\n".join(names) + "\n").encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(manifest))
    data = raw.getvalue()
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), files=len(names))


# ================================================================================================
# On the host: start, stop and report processes (`python -m deploy.bootstrap '<json>'`)
# ================================================================================================


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (None when gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _boot_time() -> float:
    for ln in Path("/proc/stat").read_text().splitlines():
        if ln.startswith("btime "):
            return float(ln.split()[1])
    return 0.0


def _read_record(pidfile: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(pidfile.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None


def _alive(rec: dict[str, Any]) -> bool:
    return _start_time(int(rec["pid"])) == rec.get("start_time")


def _log_tail(log: Path, n: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _dirs(state_dir: str) -> tuple[Path, Path]:
    run, logs = Path(state_dir) / "run", Path(state_dir) / "log"
    run.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    return run, logs


def _ready(req: dict[str, Any]) -> bool:
    """The started process answers: an etcd member (healthy: its cluster has a quorum), a
    scheduler (Status) or a node that is ready (ListNodes)."""
    if "etcd" in req:
        import ssl
        import urllib.request

        ctx = None
        if req.get("etcd_tls"):  # the member's own certificate is a client one too (peer TLS)
            d = Path(req["etcd_tls"])
            ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
            ctx.check_hostname = False  # the CA is etcd's own: any certificate of it is a member's
            ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
        try:
            with urllib.request.urlopen(f"{req['etcd']}/health", timeout=2, context=ctx) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False
    import grpc

    from common import transport
    from protos import agent_pb2 as apb
    from protos import agent_pb2_grpc as apbg
    from protos import cluster_pb2 as cpb
    from protos import cluster_pb2_grpc as cpbg

    if "agent_socket" in req:
        # Under TLS this host holds no admin certificate: the agent answers on its own socket, and
        # the operator's side waits for the node to be ready with the admin bundle (wait_nodes_ready).
        with transport.dial_blocking(f"unix://{req['agent_socket']}", transport.CLI, transport.Role.AGENT) as ch:
            try:
                apbg.AgentStub(ch).Info(apb.Empty(), timeout=2)  # type: ignore[no-untyped-call]
                return True
            except grpc.RpcError:
                return False
    identity = transport.CLI
    if req.get("cert_path"):  # a --tls scheduler on this host: its admin bundle
        from common import pki

        try:
            identity = transport.CLI.with_tls(pki.read_bundle(Path(req["cert_path"])))
        except pki.PKIError:
            return False  # not written yet
    if "agent" in req:
        # The agent itself first: the scheduler may still list the node as ready from before (its
        # lease has not run out yet) while this new process has already failed.
        with transport.dial_blocking(str(req["agent"]), transport.CLI, transport.Role.AGENT) as ch:
            try:
                apbg.AgentStub(ch).Info(apb.Empty(), timeout=2)  # type: ignore[no-untyped-call]
            except grpc.RpcError:
                return False
    for addr in str(req["scheduler"]).split(","):
        with transport.dial_blocking(addr, identity, transport.Role.SCHEDULER) as ch:
            stub = cpbg.SchedulerStub(ch)  # type: ignore[no-untyped-call]
            try:
                if "node" not in req:
                    stub.Status(cpb.Empty(), timeout=2)
                    return True
                nodes = stub.ListNodes(cpb.Empty(), timeout=2).nodes
                return any(n.name == req["node"] and n.status == "ready" for n in nodes)
            except grpc.RpcError:
                continue
    return False


def _terminate(rec: dict[str, Any], timeout: float) -> str:
    """SIGTERM, then after `timeout` SIGKILL to its whole process group (it leads the group we made
    for it: its helpers, such as the scheduler's etcd, go with it)."""
    pid = int(rec["pid"])
    if not _alive(rec):
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(rec):
            return "stopped"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(rec) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "killed" if not _alive(rec) else "survived SIGKILL"


def remote_start(req: dict[str, Any]) -> dict[str, Any]:
    name, argv = str(req["name"]), [str(a) for a in req["argv"]]
    run, logs = _dirs(req["state_dir"])
    pidfile, log = run / f"{name}.pid", logs / f"{name}.log"
    rec = _read_record(pidfile)
    if rec is not None and _alive(rec):
        return {"name": name, "pid": rec["pid"], "state": "running", "already": True, "log": str(log)}
    env = {**os.environ, "PYTHONPATH": str(req["cwd"]), **req.get("env", {})}
    with open(log, "ab") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} dockyard cluster up: {shlex.join(argv)}\n".encode())
        f.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                cwd=req["cwd"], env=env, start_new_session=True)
    rec = {"pid": proc.pid, "start_time": _start_time(proc.pid), "argv": argv, "started_at": time.time()}
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, pidfile)
    deadline = time.monotonic() + float(req.get("timeout", 60))
    why = ""
    while True:
        code = proc.poll()
        if code is not None:
            why = f"exited with code {code}"
            break
        if "ready" not in req or _ready(req["ready"]):
            # Ready, and still ours: the answer must not come from an older instance of it.
            time.sleep(0.5)
            code = proc.poll()
            if code is None:
                return {"name": name, "pid": proc.pid, "state": "running", "already": False, "log": str(log)}
            why = f"exited with code {code}"
            break
        if time.monotonic() > deadline:
            rd = req["ready"]
            what = (f"etcd healthy at {rd['etcd']} (its members' quorum)" if "etcd" in rd else
                    f"node {rd['node']} ready at {rd['scheduler']}" if "node" in rd else
                    f"the scheduler answering at {rd['scheduler']}")
            why = f"not ready after {req.get('timeout', 60)} s (waited for {what})"
            break
        time.sleep(0.2)
    # Not half-started: what did not come up is stopped again.
    _terminate(rec, 10)
    pidfile.unlink(missing_ok=True)
    return {"name": name, "error": f"{why}; its log {log} ends with:\n{_log_tail(log)}"}


def remote_stop(req: dict[str, Any]) -> dict[str, Any]:
    run, _ = _dirs(req["state_dir"])
    out = {}
    for name in req["names"]:
        pidfile = run / f"{name}.pid"
        rec = _read_record(pidfile)
        if rec is None:
            out[name] = {"state": "not running"}
            continue
        state = _terminate(rec, float(req.get("timeout", 20)))
        if state != "survived SIGKILL":
            pidfile.unlink(missing_ok=True)
        out[name] = {"state": state, "pid": rec["pid"]}
    return out


def remote_status(req: dict[str, Any]) -> dict[str, Any]:
    run, logs = _dirs(req["state_dir"])
    boot, now = _boot_time(), time.time()
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for pidfile in sorted(run.glob("*.pid")):
        rec = _read_record(pidfile)
        if rec is None:
            continue
        alive = _alive(rec)
        up = now - (boot + rec["start_time"] / hz) if alive and rec.get("start_time") is not None else None
        out[pidfile.stem] = {"pid": rec["pid"], "running": alive, "uptime": up,
                             "log": str(logs / f"{pidfile.stem}.log"), "argv": rec.get("argv", [])}
    return out


def remote_check(req: dict[str, Any]) -> dict[str, Any]:
    import deploy.cli  # the whole command imports: its dependencies are installed

    return {"python": sys.executable, "version": sys.version.split()[0], "module": deploy.cli.__file__}


def etcd_tls_dir(h: HostSpec) -> PurePosixPath:
    """On a host: etcd's certificates from `cluster up` (member/: a member's, client/: a scheduler's)."""
    return PurePosixPath(h.state_dir) / "etcd-tls"


def remote_write_bundle(req: dict[str, Any]) -> dict[str, Any]:
    """A CA, certificate and key written on this host (key 0600, directory 0700), sent on stdin."""
    from common import pki

    pki.write_bundle(Path(req["dir"]), pki.Bundle(req["ca"].encode(), req["cert"].encode(), req["key"].encode()))
    return {"dir": req["dir"]}


def admin_path(h: HostSpec) -> str:
    """Where a --tls scheduler on ``h`` writes the admin bundle (its state dir's client/)."""
    return str(PurePosixPath(h.state_dir) / "scheduler" / "client")


def readiness(inv: Inventory, h: HostSpec, what: str) -> dict[str, str]:
    """What `start` waits for: the etcd member healthy, the scheduler answering, or the agent
    answering and its node ready (under TLS: answering on its socket; wait_nodes_ready does the rest)."""
    if what == "etcd":
        return {"etcd": f"{inv.etcd_scheme}://{h.advertise}:{ETCD_CLIENT_PORT}",
                **({"etcd_tls": str(etcd_tls_dir(h) / "member")} if inv.tls else {})}
    if what == "scheduler":
        return {"scheduler": h.scheduler_addr, **({"cert_path": admin_path(h)} if inv.tls else {})}
    if inv.tls:
        return {"agent_socket": h.socket}
    return {"scheduler": inv.join, "node": h.name, "agent": h.agent_addr}


def remote_admin(req: dict[str, Any]) -> dict[str, Any]:
    """On a --tls scheduler's host: its admin bundle and the worker join token (read with it), for
    `cluster up` to start the agents with and to hand the operator (over SSH, which encrypts it)."""
    from common import pki, transport
    from protos import cluster_pb2 as cpb
    from protos import cluster_pb2_grpc as cpbg

    bundle = pki.read_bundle(Path(req["cert_path"]))
    with transport.dial_blocking(req["scheduler"], transport.CLI.with_tls(bundle), transport.Role.SCHEDULER) as ch:
        token = cpbg.SchedulerStub(ch).JoinToken(cpb.JoinTokenRequest(role="worker"), timeout=10).token  # type: ignore[no-untyped-call]
    return {"token": token, "ca": bundle.ca_pem.decode(), "cert": bundle.cert_pem.decode(), "key": bundle.key_pem.decode()}


def up_local(req: dict[str, Any]) -> dict[str, Any]:
    """On a host, without SSH: what `cluster up` starts there (its scheduler if it has the role, then
    its agent), from an inventory file on the host (vagrant/provision.sh runs this in each guest)."""
    inv = load_inventory(req["inventory"], check_files=False)
    h = next((x for x in inv.hosts if x.name == req["host"]), None)
    if h is None:
        return {"error": f"{req['inventory']}: no host named {req['host']!r}"}
    out: dict[str, Any] = {}
    for what in (["etcd"] if h in inv.etcd_members else []) + (["scheduler"] if h.is_scheduler else []) + ["agent"]:
        argv = _argv(inv, h, what)
        ready = readiness(inv, h, what)
        out[what] = remote_start({"name": what, "argv": argv, "cwd": h.project_dir, "state_dir": h.state_dir,
                                  "ready": ready, "timeout": req.get("timeout", 60)})
        if "error" in out[what]:
            return {"error": f"{h.name}: start {what}: {out[what]['error']}", **out}
    return out


REMOTE_OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "start": remote_start, "stop": remote_stop, "status": remote_status, "check": remote_check,
    "up-local": up_local, "admin": remote_admin, "write-bundle": remote_write_bundle}


def remote_main(argv: list[str]) -> int:
    """One request (JSON in argv[0], or on stdin when that is "-"), one JSON answer on stdout; exit 1
    when it carries an error."""
    try:
        req = json.loads(sys.stdin.read() if argv[0] == "-" else argv[0])
        out = REMOTE_OPS[req["op"]](req)
    except Exception as e:  # the answer must still be JSON, for the side that parses it
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")
    return 1 if "error" in out else 0


# ================================================================================================
# Over SSH: up, down, status
# ================================================================================================


class StepFailed(Exception):
    """One host's step failed: the host and the step are named in the message."""

    def __init__(self, host: str, step: str, message: str, output: str = "") -> None:
        super().__init__(f"{host}: {step}: {message}")
        self.host, self.step, self.message = host, step, message
        self.output = output  # a failed command's whole output (the message shows its end only)


class Reporter(Protocol):
    def begin(self, host: str, step: str) -> None: ...
    def ok(self, host: str, step: str, detail: str = "") -> None: ...
    def failed(self, host: str, step: str, message: str) -> None: ...


class QuietReporter:
    def begin(self, host: str, step: str) -> None:
        pass

    def ok(self, host: str, step: str, detail: str = "") -> None:
        pass

    def failed(self, host: str, step: str, message: str) -> None:
        pass


@dataclass
class Options:
    install: bool = True
    connect_timeout: float = 15.0
    ready_timeout: float = 60.0
    install_timeout: float = 1800.0
    stop_timeout: float = 20.0
    admin_dir: Path | None = None  # --tls: where the operator's admin bundle is written (ca, cert, key)
    etcd_ca_dir: Path | None = None  # --tls with our etcd members: etcd's own CA, kept by the operator


class Session:
    """One host over one SSH connection; every remote command is an argv, quoted by shlex."""

    def __init__(self, spec: HostSpec, conn: Any, reporter: Reporter) -> None:
        self.spec, self.conn, self.reporter = spec, conn, reporter

    def _prefix(self) -> list[str]:
        return ["sudo", "-n", "--"] if self.spec.sudo else []

    async def run(self, step: str, argv: list[str], timeout: float, stdin: str | None = None) -> str:
        import asyncssh

        try:
            r = await asyncio.wait_for(self.conn.run(shlex.join([*self._prefix(), *argv]), input=stdin, check=False),
                                       timeout)
        except TimeoutError:
            raise StepFailed(self.spec.name, step, f"no answer after {timeout:.0f} s") from None
        except (OSError, asyncssh.Error) as e:
            raise StepFailed(self.spec.name, step, f"SSH: {e}") from None
        if r.exit_status != 0:
            out = (str(r.stdout or "") + str(r.stderr or "")).strip()
            raise StepFailed(self.spec.name, step, f"`{shlex.join(argv)[:120]}` exited with {r.exit_status}"
                             + (f":\n{out[-3000:]}" if out else ""), output=out)
        return str(r.stdout or "")

    async def installed(self, step: str) -> bool:
        """Whether the host has a copy of the project and its python (a host never set up has not)."""
        s = self.spec
        try:
            await self.run(step, ["sh", "-c", 'test -f "$1/deploy/bootstrap.py" && test -x "$2"', "sh",
                                  s.project_dir, s.python], 60)
        except StepFailed as e:
            if "exited with 1" in e.message:
                return False
            raise
        return True

    async def helper(self, step: str, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """This module's remote_main on the host, from its copy of the project."""
        s = self.spec
        # The request on stdin, not in the argv: it may carry the join token, and `ps` shows argvs to all.
        argv = ["env", "-C", s.project_dir, f"PYTHONPATH={s.project_dir}", s.python, "-m", "deploy.bootstrap", "-"]
        try:
            text = await self.run(step, argv, timeout, stdin=json.dumps(req))
        except StepFailed as e:
            # A helper that ran reports its error as JSON on its last line, which may be longer than
            # the message keeps (a log tail); anything else (no python...) is shown as is.
            last = e.output.rstrip().splitlines()[-1] if e.output.strip() else ""
            with contextlib.suppress(ValueError):
                err = json.loads(last).get("error")
                if err:
                    raise StepFailed(s.name, step, str(err)) from None
            raise
        try:
            out: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(s.name, step, f"unexpected answer from the host: {text[-500:]!r}") from None
        return out

    async def close(self) -> None:
        self.conn.close()
        with contextlib.suppress(Exception):
            await self.conn.wait_closed()


async def connect(spec: HostSpec, reporter: Reporter, timeout: float) -> Session:
    import asyncssh

    reporter.begin(spec.name, "connect")
    kw: dict[str, Any] = {"port": spec.port, "username": spec.user, "connect_timeout": timeout,
                          "login_timeout": timeout}
    if spec.key:
        kw["client_keys"] = [spec.key]
        kw["agent_path"] = None
    if not spec.verify_host_key:
        kw["known_hosts"] = None
    elif spec.known_hosts:
        kw["known_hosts"] = spec.known_hosts
    where = f"{spec.user}@{spec.address}:{spec.port}"
    try:
        conn = await asyncio.wait_for(asyncssh.connect(spec.address, **kw), timeout + 5)
    except asyncssh.PermissionDenied:
        msg = f"{where}: bad credentials (the key {spec.key or '(ssh-agent and ~/.ssh)'} was refused)"
        raise StepFailed(spec.name, "connect", msg) from None
    except asyncssh.HostKeyNotVerifiable as e:
        msg = (f"{where}: host key not verified ({e.reason}); add it to "
               f"{spec.known_hosts or '~/.ssh/known_hosts'}, or set `known_hosts: false` to skip the check")
        raise StepFailed(spec.name, "connect", msg) from None
    except TimeoutError:
        raise StepFailed(spec.name, "connect", f"{where}: no answer within {timeout:.0f} s") from None
    except (OSError, asyncssh.Error) as e:
        raise StepFailed(spec.name, "connect", f"{where}: {getattr(e, 'strerror', None) or e}") from None
    reporter.ok(spec.name, "connect", where)
    return Session(spec, conn, reporter)


async def _each(items: Iterable[Any], fn: Callable[[Any], Awaitable[Any]], reporter: Reporter,
                step_of: Callable[[Any], tuple[str, str]]) -> tuple[dict[str, Any], list[StepFailed]]:
    """fn on every item side by side; results by host name, and the failures (already reported)."""
    items = list(items)
    results = await asyncio.gather(*(fn(i) for i in items), return_exceptions=True)
    done: dict[str, Any] = {}
    failed: list[StepFailed] = []
    for item, r in zip(items, results, strict=True):
        host, step = step_of(item)
        if isinstance(r, StepFailed):
            failed.append(r)
        elif isinstance(r, BaseException):
            if not isinstance(r, Exception):
                raise r
            failed.append(StepFailed(host, step, f"{type(r).__name__}: {r}"))
        else:
            done[host] = r
            continue
        reporter.failed(failed[-1].host, failed[-1].step, failed[-1].message)
    return done, failed


async def _connect_all(inv: Inventory, reporter: Reporter, o: Options) -> tuple[dict[str, Session], list[StepFailed]]:
    return await _each(inv.hosts, lambda h: connect(h, reporter, o.connect_timeout), reporter,
                       lambda h: (h.name, "connect"))


async def _close_all(sessions: dict[str, Session]) -> None:
    await asyncio.gather(*(s.close() for s in sessions.values()))


async def _prepare(s: Session, bundle: Bundle, o: Options) -> None:
    """Copy the project (unless the host has this very bundle), then install it or check it."""
    h, r = s.spec, s.reporter
    r.begin(h.name, "copy")
    marker = str(PurePosixPath(h.project_dir) / MARKER)
    have = await s.run("copy", ["sh", "-c", 'mkdir -p "$1" "$2" && cat "$3" 2>/dev/null || true', "sh",
                                h.project_dir, h.state_dir, marker], 60)
    if have.strip() == bundle.sha256:
        r.ok(h.name, "copy", f"up to date ({bundle.sha256[:12]})")
    else:
        import asyncssh

        tmp = f"/tmp/dockyard-bundle-{bundle.sha256[:16]}-{secrets.token_hex(4)}.tar.gz"
        try:
            async with s.conn.start_sftp_client() as sftp, sftp.open(tmp, "wb") as f:
                await f.write(bundle.data)
        except (OSError, asyncssh.Error) as e:
            raise StepFailed(h.name, "copy", f"SFTP to {tmp}: {e}") from None
        got = (await s.run("copy", ["sha256sum", tmp], 60)).split()
        if not got or got[0] != bundle.sha256:
            await s.run("copy", ["rm", "-f", tmp], 60)
            raise StepFailed(h.name, "copy", f"checksum mismatch: sent {bundle.sha256}, the host has "
                                             f"{got[0] if got else 'nothing'}")
        await s.run("copy", ["sh", "-c", 'tar -xzf "$1" -C "$2" --no-same-owner; rc=$?; rm -f "$1"; '
                                   '[ $rc -eq 0 ] && printf "%s\\n" "$3" > "$4"; exit $rc', "sh",
                             tmp, h.project_dir, bundle.sha256, marker], 300)
        r.ok(h.name, "copy", f"{bundle.files} files, {len(bundle.data) // 1024} KiB, sha256 {bundle.sha256[:12]} verified")
    if o.install:
        r.begin(h.name, "install")
        logs = str(PurePosixPath(h.state_dir) / "log")
        await s.run("install", ["sh", "-c", 'mkdir -p "$2" && bash "$1/deploy/install.sh" >"$2/install.log" 2>&1; '
                                            'rc=$?; [ $rc -ne 0 ] && tail -n 30 "$2/install.log"; exit $rc',
                                "sh", h.project_dir, logs], o.install_timeout)
        r.ok(h.name, "install", f"log {logs}/install.log")
    r.begin(h.name, "check")
    try:
        found = await s.helper("check", {"op": "check"}, 120)
    except StepFailed as e:
        hint = " (it is not installed: run without --no-install)" if not o.install else ""
        raise StepFailed(h.name, "check", e.message + hint) from None
    r.ok(h.name, "check", f"python {found.get('version')} at {h.python}")


def scheduler_argv(inv: Inventory, h: HostSpec) -> list[str]:
    argv = [h.python, "-m", "deploy.cli", "scheduler", "--listen", h.scheduler_addr,
            "--state-dir", str(PurePosixPath(h.state_dir) / "scheduler")]
    if inv.etcd_urls:
        argv += ["--etcd", inv.etcd_urls]
    if inv.tls and inv.etcd_members:
        from scheduler.etcd_tls import ETCD_NAME

        c = etcd_tls_dir(h) / "client"
        argv += ["--etcd-cacert", str(c / "ca.pem"), "--etcd-cert", str(c / "cert.pem"), "--etcd-key",
                 str(c / "key.pem"), "--etcd-server-name", ETCD_NAME]
    argv += ["--tls" if inv.tls else "--insecure"]
    return [*argv, *h.scheduler_args]


def etcd_argv(inv: Inventory, h: HostSpec) -> list[str]:
    """One member of the cluster's etcd (Debian's etcd-server, installed by deploy/install.sh),
    on the host's advertised address; its data under the host's state dir. The initial-cluster
    flags only count the first time: a member with data rejoins its cluster as it was."""
    s = inv.etcd_scheme
    peers = ",".join(f"{m.name}={s}://{m.advertise}:{ETCD_PEER_PORT}" for m in inv.etcd_members)
    token = "dockyard-" + hashlib.sha256(peers.encode()).hexdigest()[:16]
    client, peer = f"{s}://{h.advertise}:{ETCD_CLIENT_PORT}", f"{s}://{h.advertise}:{ETCD_PEER_PORT}"
    argv = [settings.ETCD, "--logger=zap", "--log-level=warn", "--name", h.name,
            "--data-dir", str(PurePosixPath(h.state_dir) / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", peers, "--initial-cluster-token", token, "--initial-cluster-state", "new"]
    if inv.tls:  # https and client certificates of etcd's own CA on both ports (scheduler/etcd_tls.py)
        from scheduler.etcd_tls import EtcdPKI

        argv += EtcdPKI(Path(etcd_tls_dir(h)), server_dir="member").server_args()
    return argv


def agent_argv(inv: Inventory, h: HostSpec) -> list[str]:
    argv = [h.python, "-m", "deploy.cli", "agent", "--root", str(PurePosixPath(h.state_dir) / "agent"),
            "--socket", h.socket, "--listen", h.agent_addr, "--advertise", h.agent_addr, "--name", h.name,
            "--join", inv.join, "--docker-socket", str(PurePosixPath(h.socket).parent / "docker.sock")]
    if not inv.tls:
        argv += ["--insecure"]
    for k, v in sorted(h.labels.items()):
        argv += ["--label", f"{k}={v}"]
    return [*argv, *h.agent_args]


def agent_env(inv: Inventory) -> dict[str, str]:
    """The join token in the agent's environment, never its argv (`ps` shows argvs to every user).
    It counts at the first start only: a restarted agent keeps its certificate in <root>/tls."""
    return {"DOCKYARD_JOIN_TOKEN": inv.join_token} if inv.join_token else {}


async def _start(s: Session, inv: Inventory, what: str, o: Options) -> dict[str, Any]:
    h, step = s.spec, f"start {what}"
    s.reporter.begin(h.name, step)
    argv = _argv(inv, h, what)
    ready = readiness(inv, h, what)
    req = {"op": "start", "name": what, "argv": argv, "cwd": h.project_dir, "state_dir": h.state_dir,
           "ready": ready, "timeout": o.ready_timeout, "env": agent_env(inv) if what == "agent" else {}}
    out = await s.helper(step, req, o.ready_timeout + 30)
    if "error" in out:
        raise StepFailed(h.name, step, str(out["error"]))
    detail = f"pid {out['pid']}" + (", already running" if out.get("already") else "") + \
             (f", {h.scheduler_addr}" if what == "scheduler" else
              f", member of {len(inv.etcd_members)}" if what == "etcd" else
              ", answering (its node's readiness: below)" if inv.tls else f", node {h.name} ready")
    s.reporter.ok(h.name, step, detail)
    return out


def _argv(inv: Inventory, h: HostSpec, what: str) -> list[str]:
    return etcd_argv(inv, h) if what == "etcd" else scheduler_argv(inv, h) if what == "scheduler" \
        else agent_argv(inv, h)


async def _stop(s: Session, what: str, o: Options) -> dict[str, Any]:
    h, step = s.spec, f"stop {what}"
    s.reporter.begin(h.name, step)
    if not await s.installed(step):
        s.reporter.ok(h.name, step, f"not running (dockyard is not in {h.project_dir})")
        return {"state": "not running"}
    out = await s.helper(step, {"op": "stop", "names": [what], "state_dir": h.state_dir,
                                "timeout": o.stop_timeout}, o.stop_timeout + 30)
    res: dict[str, Any] = out.get(what, {})
    if res.get("state") == "survived SIGKILL":
        raise StepFailed(h.name, step, f"pid {res.get('pid')} survived SIGKILL")
    s.reporter.ok(h.name, step, f"{res.get('state')}" + (f" (pid {res['pid']})" if "pid" in res else ""))
    return res


def _start_one(inv: Inventory, what: str, o: Options) -> tuple[str, Callable[[Session], Awaitable[Any]]]:
    async def fn(s: Session) -> dict[str, Any]:
        return await _start(s, inv, what, o)
    return f"start {what}", fn


def _stop_one(what: str, o: Options) -> tuple[str, Callable[[Session], Awaitable[Any]]]:
    async def fn(s: Session) -> dict[str, Any]:
        return await _stop(s, what, o)
    return f"stop {what}", fn


async def _on_each(sessions: list[Session], step: tuple[str, Callable[[Session], Awaitable[Any]]],
                   reporter: Reporter) -> tuple[dict[str, Any], list[StepFailed]]:
    return await _each(sessions, step[1], reporter, lambda s: (s.spec.name, step[0]))


async def up(inv: Inventory, reporter: Reporter, o: Options, bundle: Bundle | None = None) -> list[StepFailed]:
    """Everything running on every host, or (on failure) what this run started stopped again."""
    bundle = bundle or make_bundle()
    sessions, failed = await _connect_all(inv, reporter, o)
    try:
        if failed:
            return failed
        _, failed = await _each(sessions.values(), lambda s: _prepare(s, bundle, o), reporter,
                                lambda s: (s.spec.name, "copy"))
        if failed:
            return failed
        started: list[tuple[Session, str]] = []
        # etcd's members all at once (each is healthy only once a quorum of them runs)
        for what, hosts in (("etcd", inv.etcd_members), ("scheduler", inv.schedulers), ("agent", inv.hosts)):
            if not hosts:
                continue
            if what == "etcd" and inv.tls:
                names = dict.fromkeys(x.name for x in inv.etcd_members + inv.schedulers)
                _, failed = await _each([sessions[n] for n in names],
                                        functools.partial(_send_etcd_certs, inv=inv, o=o), reporter,
                                        lambda s: (s.spec.name, "etcd certificates"))
                if failed:
                    return failed
            if what == "agent" and inv.tls:
                try:
                    inv = await _admin(sessions[inv.schedulers[0].name], inv, o)
                except StepFailed as e:
                    reporter.failed(e.host, e.step, e.message)
                    failed = [e]
            if not failed:
                done, failed = await _on_each([sessions[h.name] for h in hosts], _start_one(inv, what, o), reporter)
                started += [(sessions[name], what) for name, out in done.items() if not out.get("already")]
            if not failed and what == "agent" and inv.tls:
                failed = await _wait_nodes_ready(inv, o, reporter)
            if failed:
                # Roll back: agents first, then schedulers, then etcd; what was running before
                # this run stays.
                for kind in ("agent", "scheduler", "etcd"):
                    await _on_each([s for s, w in started if w == kind], _stop_one(kind, o), reporter)
                return failed
        return []
    finally:
        await _close_all(sessions)


async def _send_etcd_certs(s: Session, inv: Inventory, o: Options) -> None:
    """etcd's certificates from the operator's etcd CA (o.etcd_ca_dir, made on first use) to a host:
    a member's (named by its address) to each etcd host, the client one to each scheduler host."""
    from scheduler import etcd_tls

    h = s.spec
    s.reporter.begin(h.name, "etcd certificates")
    if o.etcd_ca_dir is None:
        raise StepFailed(h.name, "etcd certificates", "no directory for etcd's CA (Options.etcd_ca_dir)")
    ca = etcd_tls.ca_in(o.etcd_ca_dir)
    sent = []
    for sub, bundle in (("member", etcd_tls.member_bundle(ca, h.name, [h.advertise]) if h in inv.etcd_members else None),
                        ("client", etcd_tls.client_bundle(ca) if h.is_scheduler else None)):
        if bundle is None:
            continue
        await s.helper("etcd certificates", {"op": "write-bundle", "dir": str(etcd_tls_dir(h) / sub),
                                             "ca": bundle.ca_pem.decode(), "cert": bundle.cert_pem.decode(),
                                             "key": bundle.key_pem.decode()}, 60)
        sent.append(sub)
    s.reporter.ok(h.name, "etcd certificates", f"{' and '.join(sent)} in {etcd_tls_dir(h)}")


async def _admin(s: Session, inv: Inventory, o: Options) -> Inventory:
    """The worker token and the admin bundle from the first scheduler's host; the bundle written to
    o.admin_dir (0600 key in a 0700 directory) for the operator's CLI."""
    from dataclasses import replace

    from common import pki

    h = s.spec
    s.reporter.begin(h.name, "admin bundle")
    out = await s.helper("admin bundle", {"op": "admin", "cert_path": admin_path(h), "scheduler": h.scheduler_addr}, 60)
    if "error" in out:
        raise StepFailed(h.name, "admin bundle", str(out["error"]))
    if o.admin_dir is not None:
        pki.write_bundle(o.admin_dir, pki.Bundle(out["ca"].encode(), out["cert"].encode(), out["key"].encode()))
    s.reporter.ok(h.name, "admin bundle", f"worker token read; admin bundle in {o.admin_dir}" if o.admin_dir else
                  "worker token read")
    return replace(inv, join_token=str(out["token"]))


async def _wait_nodes_ready(inv: Inventory, o: Options, reporter: Reporter) -> list[StepFailed]:
    """Under TLS, from here with the admin bundle: every host's node ready in the scheduler."""
    import grpc

    from common import pki, transport
    from protos import cluster_pb2 as cpb
    from protos import cluster_pb2_grpc as cpbg

    if o.admin_dir is None:
        return []
    ident = transport.CLI.with_tls(pki.read_bundle(o.admin_dir))
    want = {h.name for h in inv.hosts}
    deadline = time.monotonic() + o.ready_timeout
    ready: set[str] = set()
    while time.monotonic() < deadline:
        for addr in inv.join.split(","):
            with transport.dial_blocking(addr, ident, transport.Role.SCHEDULER) as ch:
                try:
                    nodes = await asyncio.to_thread(cpbg.SchedulerStub(ch).ListNodes, cpb.Empty(), timeout=5)  # type: ignore[no-untyped-call]
                except grpc.RpcError:
                    continue
                ready = {n.name for n in nodes.nodes if n.status == "ready"}
                break
        if want <= ready:
            for name in sorted(want):
                reporter.ok(name, "node ready", "over mutual TLS")
            return []
        await asyncio.sleep(0.5)
    return [StepFailed(name, "node ready", f"not ready in the scheduler within {o.ready_timeout:.0f} s")
            for name in sorted(want - ready)]


async def down(inv: Inventory, reporter: Reporter, o: Options) -> list[StepFailed]:
    """Agents stopped on every host that answers, then the schedulers, then etcd's members (their
    data stays in the state dir: the next `up` finds the cluster's state as it was)."""
    sessions, failed = await _connect_all(inv, reporter, o)
    try:
        members = {h.name for h in inv.etcd_members}
        for what in ("agent", "scheduler", "etcd"):
            hosts = [s for s in sessions.values() if what == "agent" or (s.spec.is_scheduler if what == "scheduler"
                                                                          else s.spec.name in members)]
            if not hosts:
                continue
            _, f = await _on_each(hosts, _stop_one(what, o), reporter)
            failed += f
        return failed
    finally:
        await _close_all(sessions)


async def status(inv: Inventory, reporter: Reporter, o: Options) -> tuple[dict[str, dict[str, Any]], list[StepFailed]]:
    """Each host's processes, by host name: {name: {pid, running, uptime, log, argv}}."""
    sessions, failed = await _connect_all(inv, reporter, o)
    try:
        async def one(s: Session) -> dict[str, Any]:
            s.reporter.begin(s.spec.name, "status")
            if not await s.installed("status"):
                return {}
            return await s.helper("status", {"op": "status", "state_dir": s.spec.state_dir}, 60)

        done, f = await _each(sessions.values(), one, reporter, lambda s: (s.spec.name, "status"))
        return done, failed + f
    finally:
        await _close_all(sessions)


if __name__ == "__main__":
    sys.exit(remote_main(sys.argv[1:]))
