"""Compose / Swarm stack files -> ServiceSpecs, checked at the boundary.

    stack = load_stack("stack.yaml", name="bar")     # services bar_web, bar_worker; tasks bar_web.1 ...

Accepts the file a Swarm user already has (compose spec, `docker stack deploy` subset). Every
error names the file, the line and the field: `stack.yaml:12: services.web.deploy.resources.limits.memory:
invalid size '12X' (use a number with b, k, m or g, like 512M)`. Unknown fields are errors; fields
Swarm also ignores (build, depends_on, container_name, ...) are returned as warnings, as
`docker stack deploy` prints "Ignoring unsupported options".

The YAML is read by deploy/compose/yamlload.py (bounded against hostile files; line numbers on
every key and item; Compose's YAML 1.2 numbers and merge keys). ${VAR}, ${VAR:-default},
${VAR:?message}, $$ ... are interpolated as Compose does (deploy/compose/interpolate.py) from the
`environ` given: pure, so the CLI passes the shell's environment over the `.env` file beside the
stack file (deploy/compose/dotenv.py). An unset variable becomes "" with a warning, as in Compose.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from deploy.compose.interpolate import InterpolationError, interpolate
from deploy.compose.yamlload import LineMap as _Map
from deploy.compose.yamlload import LineSeq as _Seq
from deploy.compose.yamlload import YAMLError
from deploy.compose.yamlload import load as load_yaml
from scheduler import constraints as constraint_lang
from scheduler.model import (
    MAX_REPLICAS,
    NANO,
    FailureAction,
    HealthCheck,
    NetworkAttachment,
    PlacementSpec,
    PortSpec,
    Resources,
    ResourceSpec,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    UpdateConfig,
    UpdateOrder,
)
from scheduler.objects import ObjectError, check_refs

# Bounds of values (a clear error instead of an overflow further down, or a hang placing them).
INT32_MAX = (1 << 31) - 1  # counts travel as int32 in the protos
MAX_CPUS = 8192  # Linux's largest NR_CPUS on x86-64
MAX_BYTES = 1 << 52  # 4 PiB: x86-64's physical address space
MAX_PIDS = 1 << 22  # the kernel's largest pid_max
MAX_SECONDS = float((1 << 63) // NANO)  # Go's time.Duration, as Compose reads durations


class StackError(ValueError):
    """A stack file that cannot be deployed; str() is `file:line: field: problem`."""

    def __init__(self, file: str, line: int, field: str, problem: str) -> None:
        self.file, self.line, self.field, self.problem = file, line, field, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class StackNetwork:
    """A top-level `networks:` entry. `name` is the cluster network's full name: <stack>_<key>, or
    the key (or its `name:`) when `external: true` (it must exist already; deploy does not make it)."""
    key: str
    name: str
    external: bool = False
    driver: str = "overlay"
    subnet: str = ""
    attachable: bool = False
    internal: bool = False
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Stack:
    name: str
    services: tuple[ServiceSpec, ...]
    warnings: tuple[str, ...] = ()
    networks: tuple[StackNetwork, ...] = ()
    objects: tuple[Any, ...] = ()  # its secrets and configs (deploy/stack_files.py StackObject)

    def service(self, short: str) -> ServiceSpec:
        full = f"{self.name}_{short}"
        for s in self.services:
            if s.name == full:
                return s
        raise KeyError(full)


# -- a cursor over the document: every error it raises knows file, line and field ---------------

class _At:
    def __init__(self, file: str, field: str, line: int, value: Any) -> None:
        self.file, self.field, self.line, self.value = file, field, line, value

    def fail(self, problem: str) -> NoReturn:
        raise StackError(self.file, self.line, self.field, problem)

    def child(self, key: str) -> _At | None:
        """The value under `key`, or None when the key is absent (null counts as absent)."""
        m = self.value
        if key not in m or m[key] is None:
            return None
        return _At(_file_of(m, key, self.file), f"{self.field}.{key}" if self.field else key,
                   m.lines.get(key, m.line), m[key])

    def items(self) -> list[tuple[str, _At]]:
        m = self.mapping()
        return [(k, _At(_file_of(m, k, self.file), f"{self.field}.{k}" if self.field else k,
                        m.lines.get(k, m.line), v)) for k, v in m.items()]

    def elements(self) -> list[_At]:
        s = self.seq()
        return [_At(_file_of(s, i, self.file), f"{self.field}[{i}]", s.lines[i] if i < len(s.lines) else s.line, v)
                for i, v in enumerate(s)]

    def mapping(self, allowed: frozenset[str] | None = None, unsupported: Mapping[str, str] | None = None) -> _Map:
        """The value as a mapping whose keys are all `allowed` (or x- extensions). A key of
        `unsupported` (Compose has it, dockyard does not do it) is refused as `not supported` with
        its hint; any other key is an `unknown field`."""
        if not isinstance(self.value, _Map):
            self.fail(f"expected a mapping, got {_kind(self.value)}")
        if allowed is not None:
            for k in self.value:
                if k in allowed or k.startswith("x-"):
                    continue
                line = self.value.lines.get(k, self.value.line)
                field = f"{self.field}.{k}" if self.field else k
                if unsupported is not None and k in unsupported:
                    hint = unsupported[k]
                    raise StackError(self.file, line, field, "not supported" + (f" ({hint})" if hint else ""))
                close = _close(k, allowed | frozenset(unsupported or ()))
                raise StackError(self.file, line, field,
                                 "unknown field" + (f" (did you mean {close!r}?)" if close else ""))
        return self.value

    def seq(self) -> _Seq:
        if not isinstance(self.value, _Seq):
            self.fail(f"expected a list, got {_kind(self.value)}")
        return self.value

    def string(self) -> str:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            self.fail(f"expected a string, got {_kind(v)}")
        return str(v)

    def integer(self, minimum: int = 0, maximum: int = INT32_MAX) -> int:
        v = self.value
        if isinstance(v, str) and v.strip().isdigit() and len(v.strip()) <= 20:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(f"expected a whole number, got {_kind(v)} {self.value!r}")
        if v < minimum:
            self.fail(f"must be at least {minimum}, got {v}")
        if v > maximum:
            self.fail(f"must be at most {maximum:,}, got {v:,}")
        return v

    def number(self) -> float:
        v = self.value
        try:
            if isinstance(v, bool):
                raise ValueError
            f = float(v)
        except (TypeError, ValueError):
            self.fail(f"expected a number, got {_kind(v)} {v!r}")
        if not math.isfinite(f):
            self.fail(f"expected a finite number, got {v!r}")
        return f

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"expected true or false, got {self.value!r}")
        return self.value

    def choice(self, options: tuple[str, ...]) -> str:
        v = self.string()
        if v not in options:
            self.fail(f"{v!r} is not one of {', '.join(options)}")
        return v

    def words(self) -> tuple[str, ...]:
        """A command: a list of strings, or one string split as a shell would."""
        if isinstance(self.value, str):
            try:
                return tuple(shlex.split(self.value))
            except ValueError as e:
                self.fail(f"cannot split {self.value!r}: {e}")
        return tuple(e.string() for e in self.elements())


def _file_of(node: _Map | _Seq, key: Any, default: str) -> str:
    """The file a value came from: a merged stack (several -c files) records it per key or item."""
    files = getattr(node, "files", None)
    if not files:
        return default
    if isinstance(node, _Seq):
        return str(files[key]) if key < len(files) and files[key] else default
    return str(files.get(key, default))


def _kind(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return "a boolean"
    return {dict: "a mapping", _Map: "a mapping", list: "a list", _Seq: "a list", str: "a string",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _close(word: str, options: frozenset[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.75)
    return found[0] if found else None


# -- values --------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$")
_SIGNAL = re.compile(r"^(SIG)?[A-Z][A-Z0-9+-]*$|^[0-9]{1,2}$")


def parse_size(at: _At) -> int:
    v = at.value
    if isinstance(v, int) and not isinstance(v, bool):
        size = v
    else:
        m = _SIZE.match(v) if isinstance(v, str) and len(v) <= 64 else None
        if m is None:
            at.fail(f"invalid size {v!r} (use a number with b, k, m or g, like 512M)")
        size = int(float(m.group(1)) * _UNIT[m.group(2).lower()])
    if size > MAX_BYTES:
        at.fail(f"size {v!r} is more than the {MAX_BYTES >> 50} PiB a host can address")
    return size


def parse_duration(at: _At) -> float:
    v = at.value
    if isinstance(v, int | float) and not isinstance(v, bool) and v == 0:
        return 0.0
    if not isinstance(v, str) or not v.strip():
        at.fail(f"invalid duration {v!r} (use units, like 10s, 1m30s or 500ms)")
    text = v.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        at.fail(f"invalid duration {v!r} (use units, like 10s, 1m30s or 500ms)")
    if total > MAX_SECONDS:
        at.fail(f"duration {v!r} is longer than the {MAX_SECONDS // (365 * 86400):.0f} years a duration can hold")
    return total


def parse_cpus(at: _At) -> int:
    v = at.value
    try:
        if isinstance(v, bool) or (isinstance(v, str) and len(v) > 64):
            raise ValueError
        cpus = float(v)
    except (TypeError, ValueError, OverflowError):
        at.fail(f"invalid cpus {v!r} (a number of CPUs as a string, like '0.5')")
    if not math.isfinite(cpus):
        at.fail(f"invalid cpus {v!r}: a finite number of CPUs, like '0.5'")
    if cpus <= 0:
        at.fail(f"cpus must be more than 0, got {v!r}")
    if cpus > MAX_CPUS:
        at.fail(f"cpus {v!r} is more than the {MAX_CPUS} CPUs Linux supports on one host")
    nano = round(cpus * NANO)
    if nano == 0:
        at.fail(f"cpus {v!r} is less than one billionth of a CPU")
    return nano


def _interpolate_tree(root: _Map, file: str, environ: Mapping[str, str], warnings: list[str]) -> None:
    """Interpolate every string value in place (not keys, as in Compose). A mapping or list that
    aliases share is visited once, so `$$` is not unescaped twice."""
    warned: set[str] = set()
    seen: set[int] = set()
    stack: list[tuple[_Map | _Seq, str]] = [(root, "")]
    while stack:
        node, field = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        entries: list[tuple[Any, str, int]]
        if isinstance(node, _Map):
            entries = [(k, f"{field}.{k}" if field else k, node.lines.get(k, node.line)) for k in node]
        else:
            entries = [(i, f"{field}[{i}]", node.lines[i] if i < len(node.lines) else node.line)
                       for i in range(len(node))]
        for key, f, line in entries:
            v = node[key]
            if isinstance(v, _Map | _Seq):
                stack.append((v, f))
            elif isinstance(v, str) and "$" in v:
                def unset(name: str, f: str = f, line: int = line) -> None:
                    if name not in warned:
                        warned.add(name)
                        warnings.append(f'{file}:{line}: {f}: the "{name}" variable is not set. '
                                        "Defaulting to a blank string.")
                try:
                    node[key] = interpolate(v, environ, unset)
                except InterpolationError as e:
                    raise StackError(file, line, f, str(e)) from None


# -- the schema ------------------------------------------------------------------------------------

# Every key either works or is refused: `supported` sets list what is read; the `_UNSUPPORTED_*`
# maps list what Compose has and dockyard does not do (yet), each with a hint; anything else is an
# unknown field. Nothing is read and then dropped.
_TOP = frozenset({"version", "name", "services", "networks", "volumes", "secrets", "configs"})
_UNSUPPORTED_TOP: dict[str, str] = {}
_SERVICE = frozenset({"image", "command", "entrypoint", "environment", "env_file", "ports", "deploy", "healthcheck",
                      "labels", "hostname", "user", "working_dir", "stop_signal", "stop_grace_period", "tty",
                      "stdin_open", "init", "devices", "privileged", "networks", "volumes", "tmpfs", "read_only",
                      "cap_add", "cap_drop", "security_opt", "ulimits", "dns", "dns_search", "dns_opt", "extra_hosts",
                      "sysctls", "shm_size", "group_add", "logging", "secrets", "configs"})
_ON_THE_NODE = "a node's setting that dockyard deploy does not pass on yet"
_UNSUPPORTED_SERVICE = {
    "build": "build the image first with `dockyard image build -t NAME .` and name it in `image:`",
    "container_name": "tasks are named <stack>_<service>.<slot>",
    "depends_on": "a stack's services start in any order; make each one wait for what it needs",
    "links": "services reach each other by published ports", "external_links": "",
    "network_mode": "",
    "restart": "use deploy.restart_policy", "scale": "use deploy.replicas",
    "expose": "every port of a task is reachable from the node; publish it with `ports:`",
    "volumes_from": "",
    "device_cgroup_rules": _ON_THE_NODE,
    "userns_mode": "", "cgroup_parent": "", "cgroup": "", "pid": "", "ipc": "",
    "uts": "", "isolation": "", "domainname": "", "mac_address": "", "oom_score_adj": "",
    "oom_kill_disable": "", "storage_opt": "", "runtime": "", "platform": "", "profiles": "",
    "pull_policy": "", "extends": "", "credential_spec": "", "gpus": "", "annotations": "", "label_file": "",
    "blkio_config": "", "stop_timeout": "use stop_grace_period",
    **dict.fromkeys(("cpus", "cpu_count", "cpu_percent", "cpu_shares", "cpu_period", "cpu_quota", "cpuset",
                     "cpu_rt_runtime", "cpu_rt_period", "mem_limit", "mem_reservation", "memswap_limit",
                     "mem_swappiness", "pids_limit"), "use deploy.resources.limits and reservations"),
}
_DEPLOY = frozenset({"mode", "replicas", "resources", "placement", "update_config", "rollback_config",
                     "restart_policy", "labels", "endpoint_mode"})
_UNSUPPORTED_DEPLOY: dict[str, str] = {}
_RESOURCES = frozenset({"limits", "reservations"})
_LIMITS = frozenset({"cpus", "memory", "pids"})
_RESERVATIONS = frozenset({"cpus", "memory"})
_UNSUPPORTED_RESERVATIONS = {"generic_resources": "", "devices": ""}
_PLACEMENT = frozenset({"constraints", "preferences", "max_replicas_per_node"})
_UPDATE = frozenset({"parallelism", "delay", "order", "failure_action", "monitor", "max_failure_ratio"})
_RESTART = frozenset({"condition", "delay", "max_attempts", "window"})
_HEALTH = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})
_UNSUPPORTED_HEALTH = {"start_interval": "checks run every `interval` from the start"}
_NETWORK = frozenset({"driver", "driver_opts", "ipam", "attachable", "internal", "external", "name", "labels"})
_IPAM = frozenset({"driver", "config"})
_IPAM_CONFIG = frozenset({"subnet"})
_SERVICE_NETWORK = frozenset({"aliases"})
_PORT_LONG = frozenset({"target", "published", "protocol", "mode"})
_UNSUPPORTED_PORT = {"host_ip": "a published port binds every address of the node", "name": "",
                     "app_protocol": ""}


def load_stack(path: str, name: str | None = None, *, environ: Mapping[str, str] | None = None) -> Stack:
    return load_stacks([path], name, environ=environ)


def load_stacks(paths: Sequence[str], name: str | None = None, *,
                environ: Mapping[str, str] | None = None) -> Stack:
    """One stack from several files, as `docker stack deploy -c a.yaml -c b.yaml`: each later file
    overrides the ones before (_merge), and every error still names the file its value came from."""
    warnings: list[str] = []
    merged: _At | None = None
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise StackError(path, 0, "", f"cannot read: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise StackError(path, 0, "", f"not UTF-8 text: {e}") from e
        root = _document(text, path, environ or {}, warnings)
        if merged is None:
            merged = root
        else:
            _merge(merged.value, root.value, path, ())
    if merged is None:
        raise StackError("", 0, "", "no stack file given")
    return _stack(merged, name, environ or {}, warnings)


def parse_stack(text: str, name: str | None = None, *, file: str = "<stack>",
                environ: Mapping[str, str] | None = None) -> Stack:
    warnings: list[str] = []
    return _stack(_document(text, file, environ or {}, warnings), name, environ or {}, warnings)


def _document(text: str, file: str, environ: Mapping[str, str], warnings: list[str]) -> _At:
    """One file read, its top-level keys checked and its values interpolated."""
    try:
        doc = load_yaml(text)  # safe types only, bounded depth and alias expansion
    except YAMLError as e:
        raise StackError(file, e.line, "", e.problem) from None
    if doc is None:
        raise StackError(file, 1, "", "empty file: a stack needs `services:`")
    root = _At(file, "", getattr(doc, "line", 1), doc)
    top = root.mapping(_TOP, _UNSUPPORTED_TOP)
    _interpolate_tree(top, file, environ, warnings)
    return root


# How a later file's value joins an earlier one's (docker stack deploy's merge): mappings merge key by
# key, `environment` and `labels` by name in either form, these lists are replaced, every other list
# is appended to (ports without repeats), and anything else is replaced.
_REPLACED = frozenset({"command", "entrypoint", "test"})
_BY_NAME = frozenset({"environment", "labels"})


def _merge(base: _Map, over: _Map, over_file: str, path: tuple[str, ...]) -> None:
    files: dict[Any, str] = getattr(base, "files", None) or {}
    base.files = files  # type: ignore[attr-defined]
    for k, v in over.items():
        line = over.lines.get(k, over.line)
        old = base.get(k)
        if isinstance(old, _Map) and isinstance(v, _Map) and k not in _BY_NAME:
            base[k] = old = _copy(old)  # written below: it may be shared through an anchor
            _merge(old, v, over_file, (*path, k))
            continue
        if old is not None and k in _BY_NAME and isinstance(old, _Map | _Seq) and isinstance(v, _Map | _Seq):
            base[k] = _by_name(old, v, over_file)  # the key keeps its first place; items say their file
            continue
        if isinstance(old, _Seq) and isinstance(v, _Seq) and k not in _REPLACED:
            base[k] = _appended(old, v, over_file, unique=k == "ports")
            continue
        base[k] = v
        base.lines[k] = line
        files[k] = over_file


def _copy(m: _Map) -> _Map:
    out = _Map(m)
    out.line, out.lines = m.line, dict(m.lines)
    if getattr(m, "files", None):
        out.files = dict(m.files)  # type: ignore[attr-defined]
    return out


def _by_name(old: _Map | _Seq, new: _Map | _Seq, new_file: str) -> _Map:
    """environment/labels of two files as one mapping (a list's NAME=value items by NAME)."""
    def as_map(v: _Map | _Seq) -> _Map:
        if isinstance(v, _Map):
            return v
        out = _Map()
        out.line, out.lines = v.line, {}
        for i, item in enumerate(v):
            k, sep, val = str(item).partition("=")
            out[k] = val if sep else None
            out.lines[k] = v.lines[i] if i < len(v.lines) else v.line
        return out

    merged, extra = as_map(old), as_map(new)
    if merged is old:
        merged = _copy(merged)  # the earlier file's mapping may be shared through an anchor
    files: dict[Any, str] = dict(getattr(merged, "files", None) or {})
    for k, val in extra.items():
        merged[k] = val
        merged.lines[k] = extra.lines.get(k, extra.line)
        files[k] = new_file
    merged.files = files  # type: ignore[attr-defined]
    return merged


def _appended(old: _Seq, new: _Seq, new_file: str, unique: bool) -> _Seq:
    out = _Seq(old)
    out.line, out.lines = old.line, list(old.lines)
    out_files: list[str] = list(getattr(old, "files", None) or [""] * len(old))
    for i, item in enumerate(new):
        if unique and item in out:
            continue
        out.append(item)
        out.lines.append(new.lines[i] if i < len(new.lines) else new.line)
        out_files.append(new_file)
    out.files = out_files  # type: ignore[attr-defined]
    return out


def _stack(root: _At, name: str | None, environ: Mapping[str, str], warnings: list[str]) -> Stack:
    file = root.file
    top = root.value
    version = root.child("version")
    if version is not None:
        _version(version)
    stack_name = name
    if stack_name is None:
        at = root.child("name")
        if at is None:
            raise StackError(file, 1, "name", "no stack name: give one (--name) or set `name:` in the file")
        stack_name = at.string()
    if not _NAME.match(stack_name):
        raise StackError(file, top.lines.get("name", 1), "name",
                         f"invalid stack name {stack_name!r} (letters, digits, '_', '.', '-')")
    services_at = root.child("services")
    if services_at is None:
        raise StackError(file, 1, "services", "missing: a stack needs at least one service")
    networks = _networks(root.child("networks"), stack_name)
    from deploy.stack_volumes import top_volumes

    volumes = top_volumes(root.child("volumes"), stack_name)
    from deploy.stack_files import top_objects

    declared = {kind: top_objects(root.child(f"{kind}s"), kind, stack_name) for kind in ("secret", "config")}
    specs = []
    for short, at in services_at.items():
        if not _NAME.match(short):
            raise StackError(file, at.line, at.field, f"invalid service name {short!r}")
        spec = _service(at, f"{stack_name}_{short}", environ or {}, warnings, networks, volumes, declared)
        try:
            check_refs(spec)
        except ObjectError as e:
            at.fail(str(e))
        specs.append(spec)
    if not specs:
        raise StackError(file, services_at.line, "services", "no services defined")
    used = {(k, r.source) for s in specs for k, refs in (("secret", s.secrets), ("config", s.configs)) for r in refs}
    objects = tuple(o for d in declared.values() for o in d.values() if (o.kind, o.name) in used)
    return Stack(stack_name, tuple(specs), tuple(warnings), tuple(networks.values()), objects)


DEFAULT_NETWORK = "default"


def with_default_network(stack: Stack) -> Stack:
    """As Swarm: every service that names no network joins the stack's own `<stack>_default`
    overlay (or the stack's `default:` entry, when the file configures one), so services reach
    each other by name with no `networks:` written at all."""
    if all(s.networks for s in stack.services):
        return stack
    nets = {n.key: n for n in stack.networks}
    net = nets.get(DEFAULT_NETWORK) or StackNetwork(DEFAULT_NETWORK, f"{stack.name}_{DEFAULT_NETWORK}")
    nets[DEFAULT_NETWORK] = net
    services = tuple(s if s.networks else dataclasses.replace(s, networks=(NetworkAttachment(net.name),))
                     for s in stack.services)
    return dataclasses.replace(stack, services=services, networks=tuple(nets.values()))


_VERSION = re.compile(r"^3(?:\.[0-9])?$")


def _version(at: _At) -> None:
    """`version:` is optional (Compose calls it obsolete); docker stack deploy reads 3.0 to 3.9."""
    v = at.value
    text = v if isinstance(v, str) else repr(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    if text is None:
        at.fail(f"expected a version string like \"3.8\", got {_kind(v)}")
    if not _VERSION.match(text.strip()):
        at.fail(f"unsupported Compose file version {text!r}: stack files are version 3.x (3.0 to 3.9), "
                "or leave `version:` out")


def _networks(at: _At | None, stack: str) -> dict[str, StackNetwork]:
    out: dict[str, StackNetwork] = {}
    if at is None:
        return out
    for key, n in at.items():
        if not _NAME.match(key):
            n.fail(f"invalid network name {key!r}")
        if n.value is None:
            out[key] = StackNetwork(key, f"{stack}_{key}")
            continue
        n.mapping(_NETWORK)
        external = _opt(n, "external", _At.boolean, False)
        name_at = n.child("name")
        name = name_at.string() if name_at is not None else (key if external else f"{stack}_{key}")
        if external:
            for f in ("driver", "ipam", "attachable", "internal", "driver_opts"):
                if n.child(f) is not None:
                    n.fail(f"an external network is made outside the stack: {f} cannot be set here")
            out[key] = StackNetwork(key, name, external=True)
            continue
        driver_at = n.child("driver")
        driver = driver_at.choice(("overlay",)) if driver_at is not None else "overlay"
        if n.child("driver_opts") is not None:
            n.child("driver_opts").fail("no driver options are supported")  # type: ignore[union-attr]
        subnet = ""
        ipam = n.child("ipam")
        if ipam is not None:
            ipam.mapping(_IPAM)
            if ipam.child("driver") is not None:
                ipam.child("driver").choice(("default",))  # type: ignore[union-attr]
            configs = ipam.child("config")
            elements = configs.elements() if configs is not None else []
            if len(elements) > 1:
                configs.fail("one subnet per network")  # type: ignore[union-attr]
            for c in elements:
                c.mapping(_IPAM_CONFIG)
                sub = c.child("subnet")
                if sub is not None:
                    subnet = sub.string()
                    import ipaddress

                    try:
                        ipaddress.IPv4Network(subnet, strict=True)
                    except ValueError as e:
                        sub.fail(f"invalid subnet {subnet!r}: {e}")
        f_at = n.child("attachable")
        if f_at is not None and f_at.boolean():
            f_at.fail("not supported yet: plain containers cannot join cluster networks yet")
        internal = _opt(n, "internal", _At.boolean, False)
        out[key] = StackNetwork(key, name, driver=driver, subnet=subnet, internal=internal,
                                labels=_labels(n.child("labels")))
    return out


def _service_networks(at: _At | None, declared: Mapping[str, StackNetwork]) -> tuple[NetworkAttachment, ...]:
    if at is None:
        return ()
    entries: list[tuple[str, _At, _At | None]] = []
    if isinstance(at.value, _Seq):
        entries = [(e.string(), e, None) for e in at.elements()]
    else:
        entries = [(k, e, e if e.value is not None else None) for k, e in at.items()]
    out: list[NetworkAttachment] = []
    for key, where, body in entries:
        net = declared.get(key)
        if net is None:
            where.fail(f"network {key!r} is not declared under the top-level networks:"
                       + (f" (declared: {', '.join(sorted(declared))})" if declared else ""))
        aliases: tuple[str, ...] = ()
        if body is not None:
            body.mapping(_SERVICE_NETWORK)
            al = body.child("aliases")
            if al is not None:
                aliases = tuple(a.string() for a in al.elements())
                for a, e in zip(aliases, al.elements(), strict=True):
                    if not _NAME.match(a):
                        e.fail(f"invalid alias {a!r}")
        if any(x.name == net.name for x in out):
            where.fail(f"network {key!r} listed twice")
        out.append(NetworkAttachment(net.name, aliases))
    return tuple(out)


def _service(at: _At, full_name: str, environ: Mapping[str, str], warnings: list[str],
             networks: Mapping[str, StackNetwork], volumes: dict[str, Any] | None = None,
             declared: Mapping[str, dict[str, Any]] | None = None) -> ServiceSpec:
    from deploy.stack_files import service_refs
    from deploy.stack_volumes import service_mounts

    at.mapping(_SERVICE, _UNSUPPORTED_SERVICE)
    image_at = at.child("image")
    if image_at is None:
        at.fail("no image (dockyard deploy runs images; build them first with `dockyard image build`)")
    image = image_at.string().strip()
    if not image or any(c.isspace() for c in image):
        image_at.fail(f"invalid image reference {image!r}")
    command = _opt(at, "command", _At.words)
    entrypoint = _opt(at, "entrypoint", _At.words)
    env = dict(_env_files(at.child("env_file"), environ, warnings))
    env.update(_environment(at.child("environment"), environ))
    ports_at = at.child("ports")
    ports = tuple(p for e in (ports_at.elements() if ports_at is not None else []) for p in _ports(e))
    published: set[tuple[int, str]] = set()
    for p in ports:
        if p.published is not None:
            if (p.published, p.protocol) in published:
                (ports_at or at).fail(f"host port {p.published}/{p.protocol} published twice")
            published.add((p.published, p.protocol))
    container_labels = _labels(at.child("labels"))
    labels: tuple[tuple[str, str], ...] = ()
    healthcheck = _healthcheck(at.child("healthcheck"))
    attachments = _service_networks(at.child("networks"), networks)
    mounts = service_mounts(at, volumes or {})
    secrets = service_refs(at.child("secrets"), "secret", (declared or {}).get("secret", {}))
    configs = service_refs(at.child("configs"), "config", (declared or {}).get("config", {}))
    read_only = _opt(at, "read_only", _At.boolean, False)
    from deploy import stack_hostconfig

    host_settings = stack_hostconfig.read(at)
    grace = _opt(at, "stop_grace_period", parse_duration)
    hostname = _opt(at, "hostname", _At.string, "")
    if hostname and not _HOSTNAME.match(hostname):
        (at.child("hostname") or at).fail(f"invalid hostname {hostname!r} (letters, digits, '-' and '.', "
                                          "at most 63 characters a label)")
    workdir = _opt(at, "working_dir", _At.string, "")
    if workdir and not workdir.startswith("/"):
        (at.child("working_dir") or at).fail(f"{workdir!r} is not an absolute path")
    stop_signal = _opt(at, "stop_signal", _At.string, "")
    if stop_signal and not _SIGNAL.match(stop_signal):
        (at.child("stop_signal") or at).fail(f"invalid signal {stop_signal!r} (a name like SIGINT or a number)")

    devices = _devices(at.child("devices"))

    replicas, resources, placement, pids = 1, ResourceSpec(), PlacementSpec(), 0
    mode = ServiceMode.REPLICATED
    endpoint_mode = "vip"
    update, rollback, restart = UpdateConfig(), UpdateConfig(), RestartPolicy()
    deploy = at.child("deploy")
    if deploy is not None:
        deploy.mapping(_DEPLOY, _UNSUPPORTED_DEPLOY)
        endpoint_mode = _opt(deploy, "endpoint_mode", lambda a: a.choice(("vip", "dnsrr")), "vip")
        em_at = deploy.child("endpoint_mode")
        meshed = next((p for p in ports if p.meshed), None)
        if endpoint_mode == "dnsrr" and meshed is not None and em_at is not None:
            em_at.fail(f"port {meshed.published}/{meshed.protocol} is published in ingress mode, which needs "
                       "endpoint_mode vip (publish it with mode: host for dnsrr)")
        mode = ServiceMode(_opt(deploy, "mode", lambda a: a.choice(("replicated", "global")), "replicated"))
        replicas = _opt(deploy, "replicas", lambda a: a.integer(0, MAX_REPLICAS), 1)
        if mode is ServiceMode.GLOBAL and deploy.child("replicas") is not None:
            (deploy.child("replicas") or deploy).fail("a global service runs one task per node: leave replicas out")
        resources, pids = _resources(deploy.child("resources"))
        placement = _placement(deploy.child("placement"))
        placement_at = deploy.child("placement")
        per_node = placement_at.child("max_replicas_per_node") if placement_at is not None else None
        if mode is ServiceMode.GLOBAL and per_node is not None:
            per_node.fail("a global service runs one task per node: max_replicas_per_node is for replicated ones")
        update = _update(deploy.child("update_config"), UpdateConfig())
        rollback = _update(deploy.child("rollback_config"), UpdateConfig())
        restart = _restart(deploy.child("restart_policy"))
        labels = labels + _labels(deploy.child("labels"))
    return ServiceSpec(
        name=full_name, image=image, command=command, entrypoint=entrypoint, env=tuple(sorted(env.items())), ports=ports,
        replicas=replicas, resources=resources, placement=placement, update_config=update,
        rollback_config=rollback, restart_policy=restart, healthcheck=healthcheck,
        labels=tuple(sorted(dict(labels).items())), mode=mode, hostname=hostname, networks=attachments,
        endpoint_mode=endpoint_mode,
        user=_opt(at, "user", _At.string, ""), workdir=workdir, stop_signal=stop_signal, stop_grace_period=grace,
        tty=_opt(at, "tty", _At.boolean, False), stdin_open=_opt(at, "stdin_open", _At.boolean, False),
        init=_opt(at, "init", _At.boolean, False), pids_limit=pids,
        container_labels=tuple(sorted(dict(container_labels).items())), devices=devices,
        privileged=_opt(at, "privileged", _At.boolean, False), mounts=mounts, read_only=read_only,
        secrets=secrets, configs=configs, **host_settings,
    )


def _devices(at: _At | None) -> tuple[str, ...]:
    """`devices:` as Compose's short syntax, HOST[:CONTAINER][:rwm] (the node checks the host's path)."""
    from common.devices import DeviceMapping

    out = []
    for el in at.elements() if at is not None else []:
        text = el.string()
        try:
            DeviceMapping.parse(text)
        except ValueError as e:
            el.fail(str(e))
        out.append(text)
    return tuple(out)


def _opt(at: _At, key: str, read: Callable[..., Any], default: Any = None) -> Any:
    child = at.child(key)
    return default if child is None else read(child)


def _environment(at: _At | None, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """`environment:` as a list or a mapping; a name without a value takes the deploying shell's
    (as Compose does), and is an error when the shell has none."""
    if at is None:
        return ()
    env: dict[str, str] = {}
    if isinstance(at.value, _Seq):
        for e in at.elements():
            entry = e.string()
            key, sep, value = entry.partition("=")
            if not key or not re.match(r"^[^=\s]+$", key):
                e.fail(f"invalid environment entry {entry!r} (use NAME=value)")
            if not sep:
                if key not in environ:
                    e.fail(f"{key} has no value, and the environment has no {key} (write {key}=value)")
                value = environ[key]
            env[key] = value
    else:
        for key, e in at.items():
            if e.value is None:
                if key not in environ:
                    e.fail(f"{key} has no value, and the environment has no {key} (write {key}: value)")
                env[key] = environ[key]
                continue
            if isinstance(e.value, bool):
                env[key] = "true" if e.value else "false"
            else:
                env[key] = e.string()
    return tuple(sorted(env.items()))


def _env_files(at: _At | None, environ: Mapping[str, str], warnings: list[str]) -> dict[str, str]:
    """`env_file:` (a path or a list, relative to the stack file), read as Compose reads .env files."""
    from deploy.compose.dotenv import DotEnvError, read_env_file

    if at is None:
        return {}
    out: dict[str, str] = {}
    for e in [at] if isinstance(at.value, str) else at.elements():
        path = e.string()
        full = path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(e.file)), path)
        try:
            out.update(read_env_file(full, environ, warnings.append))
        except FileNotFoundError:
            e.fail(f"env file {full} not found")
        except DotEnvError as err:
            e.fail(str(err))
    return out


def _labels(at: _At | None) -> tuple[tuple[str, str], ...]:
    if at is None:
        return ()
    if isinstance(at.value, _Seq):
        out = []
        for e in at.elements():
            k, _, v = e.string().partition("=")
            out.append((k, v))
        return tuple(out)
    return tuple((k, "" if e.value is None else e.string()) for k, e in at.items())


_PORT_SHORT = re.compile(r"^(?:(?P<ip>\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):)?(?:(?P<pub>\d+(?:-\d+)?):)?(?P<tgt>\d+(?:-\d+)?)"
                         r"(?:/(?P<proto>tcp|udp|sctp))?$")


def _port_number(at: _At, text: str) -> int:
    n = int(text) if len(text) <= 10 else 1 << 40
    if not 1 <= n <= 65535:
        at.fail(f"port {n} is out of range 1-65535")
    return n


def _port_range(at: _At, text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    a = _port_number(at, lo)
    b = _port_number(at, hi) if hi else a
    if b < a:
        at.fail(f"port range {text} runs backwards")
    return list(range(a, b + 1))


def _ports(at: _At) -> list[PortSpec]:
    if isinstance(at.value, _Map):
        at.mapping(_PORT_LONG, _UNSUPPORTED_PORT)
        target_at = at.child("target")
        if target_at is None:
            at.fail("a port needs `target` (the container port)")
        target = _port_number(target_at, str(target_at.integer(1)))
        pub_at = at.child("published")
        published = None if pub_at is None else _port_number(pub_at, str(pub_at.integer(1)))
        protocol = _opt(at, "protocol", lambda a: a.choice(("tcp", "udp", "sctp")), "tcp")
        mode = _opt(at, "mode", lambda a: a.choice(("ingress", "host")), "ingress")
        return [PortSpec(target=target, published=published, protocol=protocol, mode=mode)]
    text = at.string() if not isinstance(at.value, int) else str(at.value)
    m = _PORT_SHORT.match(text.strip())
    if m is None:
        at.fail(f"invalid port {text!r} (use TARGET, PUBLISHED:TARGET or PUBLISHED:TARGET/udp)")
    if m.group("ip"):
        at.fail(f"{text!r}: binding a host IP is not supported by Swarm-style deploys")
    targets = _port_range(at, m.group("tgt"))
    proto = m.group("proto") or "tcp"
    if m.group("pub") is None:
        return [PortSpec(target=t, published=None, protocol=proto, mode="ingress") for t in targets]
    pubs = _port_range(at, m.group("pub"))
    if len(pubs) != len(targets):
        at.fail(f"{text!r}: published and target ranges differ in length")
    return [PortSpec(target=t, published=p, protocol=proto, mode="ingress") for p, t in zip(pubs, targets, strict=True)]


def _resources(at: _At | None) -> tuple[ResourceSpec, int]:
    """The resources and the pids limit (0: none)."""
    if at is None:
        return ResourceSpec(), 0
    at.mapping(_RESOURCES)

    def read(sub: _At | None, allowed: frozenset[str], unsupported: Mapping[str, str]) -> Resources:
        if sub is None:
            return Resources()
        sub.mapping(allowed, unsupported)
        cpus = _opt(sub, "cpus", parse_cpus, 0)
        memory = _opt(sub, "memory", parse_size, 0)
        if sub.child("memory") is not None and memory <= 0:
            (sub.child("memory") or sub).fail("memory must be more than 0")
        return Resources(cpus, memory)

    limits = read(at.child("limits"), _LIMITS, {})
    limits_at = at.child("limits")
    pids = 0 if limits_at is None else _opt(limits_at, "pids", lambda a: a.integer(1, MAX_PIDS), 0)
    reservations = read(at.child("reservations"), _RESERVATIONS, _UNSUPPORTED_RESERVATIONS)
    for what, lim, res in (("cpus", limits.nano_cpus, reservations.nano_cpus),
                           ("memory", limits.memory_bytes, reservations.memory_bytes)):
        if lim and res > lim:
            (at.child("reservations") or at).fail(f"reserves more {what} than its limit allows")
    return ResourceSpec(limits=limits, reservations=reservations), pids


def _placement(at: _At | None) -> PlacementSpec:
    if at is None:
        return PlacementSpec()
    at.mapping(_PLACEMENT)
    exprs: list[str] = []
    c = at.child("constraints")
    for e in c.elements() if c is not None else []:
        try:
            exprs.append(constraint_lang.parse(e.string()).text)
        except constraint_lang.ConstraintError as err:
            e.fail(str(err))
    spread: list[str] = []
    p = at.child("preferences")
    for e in p.elements() if p is not None else []:
        e.mapping(frozenset({"spread"}))
        s = e.child("spread")
        if s is None:
            e.fail("a preference needs `spread: node.labels.<name>`")
        key = s.string().strip()
        try:
            constraint_lang.check_key(key, "spread key")
        except constraint_lang.ConstraintError as err:
            s.fail(str(err))
        spread.append(key)
    max_per_node = _opt(at, "max_replicas_per_node", _At.integer, 0)
    return PlacementSpec(constraints=tuple(exprs), spread=tuple(spread), max_replicas_per_node=max_per_node)


def _update(at: _At | None, default: UpdateConfig) -> UpdateConfig:
    if at is None:
        return default
    at.mapping(_UPDATE)
    ratio = _opt(at, "max_failure_ratio", _At.number, default.max_failure_ratio)
    if not 0 <= ratio <= 1:
        (at.child("max_failure_ratio") or at).fail(f"must be between 0 and 1, got {ratio}")
    return UpdateConfig(
        parallelism=_opt(at, "parallelism", _At.integer, default.parallelism),
        delay=_opt(at, "delay", parse_duration, default.delay),
        order=UpdateOrder(_opt(at, "order", lambda a: a.choice(("stop-first", "start-first")), default.order.value)),
        failure_action=FailureAction(_opt(at, "failure_action", lambda a: a.choice(("pause", "continue", "rollback")),
                                          default.failure_action.value)),
        monitor=_opt(at, "monitor", parse_duration, default.monitor),
        max_failure_ratio=ratio,
    )


def _restart(at: _At | None) -> RestartPolicy:
    d = RestartPolicy()
    if at is None:
        return d
    at.mapping(_RESTART)
    return RestartPolicy(
        condition=RestartCondition(_opt(at, "condition", lambda a: a.choice(("none", "on-failure", "any")),
                                        d.condition.value)),
        delay=_opt(at, "delay", parse_duration, d.delay),
        max_attempts=_opt(at, "max_attempts", _At.integer, d.max_attempts),
        window=_opt(at, "window", parse_duration, d.window),
    )


def _healthcheck(at: _At | None) -> HealthCheck | None:
    if at is None:
        return None
    at.mapping(_HEALTH, _UNSUPPORTED_HEALTH)
    d = HealthCheck()
    disable = _opt(at, "disable", _At.boolean, False)
    test: tuple[str, ...] = ()
    t = at.child("test")
    if t is not None:
        if isinstance(t.value, str):
            test = ("CMD-SHELL", t.value)
        else:
            test = t.words()
            if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
                t.fail("a test list starts with CMD, CMD-SHELL or NONE, like [\"CMD\", \"curl\", \"-f\", \"http://localhost\"]")
            if test[0] != "NONE" and len(test) < 2:
                t.fail(f"{test[0]} needs a command after it")
    elif not disable:
        at.fail("a healthcheck needs `test` (or `disable: true`)")
    return HealthCheck(
        test=test,
        interval=_opt(at, "interval", parse_duration, d.interval),
        timeout=_opt(at, "timeout", parse_duration, d.timeout),
        retries=_opt(at, "retries", _At.integer, d.retries),
        start_period=_opt(at, "start_period", parse_duration, d.start_period),
        disable=disable,
    )
