"""Compose / Swarm stack files -> ServiceSpecs, checked at the boundary.

    stack = load_stack("stack.yaml", name="bar")     # services bar_web, bar_worker; tasks bar_web.1 ...

Accepts the file a Swarm user already has (compose spec, `docker stack deploy` subset). Every
error names the file, the line and the field: `stack.yaml:12: services.web.deploy.resources.limits.memory:
invalid size '12X' (use a number with b, k, m or g, like 512M)`. Unknown fields are errors; fields
Swarm also ignores (build, depends_on, container_name, ...) are returned as warnings, as
`docker stack deploy` prints "Ignoring unsupported options".

Line numbers come from a SafeLoader whose mappings and sequences remember where each key and item
was written. ${VAR} and ${VAR:-default} are interpolated from the `environ` given (pure: no
os.environ unless the caller passes it).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

from scheduler import constraints as constraint_lang
from scheduler.model import (
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
    ServiceSpec,
    UpdateConfig,
    UpdateOrder,
)


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

    def service(self, short: str) -> ServiceSpec:
        full = f"{self.name}_{short}"
        for s in self.services:
            if s.name == full:
                return s
        raise KeyError(full)


# -- a YAML loader that keeps line numbers -------------------------------------------------------

class _Map(dict[Any, Any]):
    line: int = 0
    lines: dict[Any, int]


class _Seq(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)  # merge keys (<<: *anchor)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is not a string",
                                                    key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {out.lines[key]})", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)  # type: ignore[no-untyped-call]
        out.lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq()
    out.line = node.start_mark.line + 1
    out.lines = []
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))  # type: ignore[no-untyped-call]
        out.lines.append(item.start_mark.line + 1)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)  # type: ignore[arg-type]


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
        return _At(self.file, f"{self.field}.{key}" if self.field else key, m.lines.get(key, m.line), m[key])

    def items(self) -> list[tuple[str, _At]]:
        m = self.mapping()
        return [(k, _At(self.file, f"{self.field}.{k}" if self.field else k, m.lines.get(k, m.line), v))
                for k, v in m.items()]

    def elements(self) -> list[_At]:
        s = self.seq()
        return [_At(self.file, f"{self.field}[{i}]", s.lines[i] if i < len(s.lines) else s.line, v)
                for i, v in enumerate(s)]

    def mapping(self, allowed: frozenset[str] | None = None, ignored: frozenset[str] = frozenset(),
                warnings: list[str] | None = None) -> _Map:
        if not isinstance(self.value, _Map):
            self.fail(f"expected a mapping, got {_kind(self.value)}")
        if allowed is not None:
            for k in self.value:
                if k in allowed or k.startswith("x-"):
                    continue
                line = self.value.lines.get(k, self.value.line)
                field = f"{self.field}.{k}" if self.field else k
                if k in ignored:
                    if warnings is not None:
                        warnings.append(f"{self.file}:{line}: {field}: ignored (not supported by dockyard deploy)")
                    continue
                hint = _close(k, allowed)
                raise StackError(self.file, line, field,
                                 "unknown field" + (f" (did you mean {hint!r}?)" if hint else ""))
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

    def integer(self, minimum: int = 0) -> int:
        v = self.value
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(f"expected a whole number, got {_kind(v)} {self.value!r}")
        if v < minimum:
            self.fail(f"must be at least {minimum}, got {v}")
        return v

    def number(self) -> float:
        v = self.value
        try:
            if isinstance(v, bool):
                raise ValueError
            f = float(v)
        except (TypeError, ValueError):
            self.fail(f"expected a number, got {_kind(v)} {v!r}")
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


def parse_size(at: _At) -> int:
    v = at.value
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    m = _SIZE.match(str(v)) if isinstance(v, str) else None
    if m is None:
        at.fail(f"invalid size {v!r} (use a number with b, k, m or g, like 512M)")
    return int(float(m.group(1)) * _UNIT[m.group(2).lower()])


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
    return total


def parse_cpus(at: _At) -> int:
    v = at.value
    try:
        if isinstance(v, bool):
            raise ValueError
        cpus = float(v)
    except (TypeError, ValueError):
        at.fail(f"invalid cpus {v!r} (a number of CPUs as a string, like '0.5')")
    if cpus <= 0:
        at.fail(f"cpus must be more than 0, got {v!r}")
    return round(cpus * NANO)


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _interpolate(value: Any, at: Callable[[], _At], environ: Mapping[str, str]) -> Any:
    if not isinstance(value, str) or "$" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        got = environ.get(name)
        if op in (":-", "-"):
            if got is None or (op == ":-" and got == ""):
                return arg
        elif op in (":?", "?") and (got is None or (op == ":?" and got == "")):
            at().fail(f"variable {name} is required: {arg or 'not set'}")
        return got if got is not None else ""

    return _VAR.sub(sub, value)


def _interpolate_tree(node: Any, file: str, environ: Mapping[str, str], field: str = "") -> None:
    def locate(f: str, ln: int, v: Any) -> Callable[[], _At]:
        return lambda: _At(file, f, ln, v)

    if isinstance(node, _Map):
        for k in list(node):
            f = f"{field}.{k}" if field else k
            v = node[k]
            if isinstance(v, _Map | _Seq):
                _interpolate_tree(v, file, environ, f)
            else:
                node[k] = _interpolate(v, locate(f, node.lines.get(k, node.line), v), environ)
    elif isinstance(node, _Seq):
        for i, v in enumerate(node):
            f = f"{field}[{i}]"
            if isinstance(v, _Map | _Seq):
                _interpolate_tree(v, file, environ, f)
            else:
                node[i] = _interpolate(v, locate(f, node.lines[i] if i < len(node.lines) else node.line, v), environ)


# -- the schema ------------------------------------------------------------------------------------

_TOP = frozenset({"version", "name", "services", "networks", "volumes", "configs", "secrets"})
_SERVICE = frozenset({"image", "command", "entrypoint", "environment", "ports", "deploy", "healthcheck",
                      "labels", "networks", "volumes", "hostname", "user", "working_dir", "stop_signal",
                      "stop_grace_period", "logging", "configs", "secrets", "env_file", "tty", "stdin_open",
                      "init", "read_only", "ulimits", "sysctls", "extra_hosts", "dns", "cap_add", "cap_drop"})
# Compose options Swarm ignores too: a warning, not an error.
_SERVICE_IGNORED = frozenset({"build", "container_name", "depends_on", "links", "network_mode", "restart",
                              "devices", "privileged", "security_opt", "userns_mode", "cgroup_parent",
                              "external_links", "profiles", "pull_policy", "platform", "expose"})
_DEPLOY = frozenset({"mode", "replicas", "resources", "placement", "update_config", "rollback_config",
                     "restart_policy", "labels", "endpoint_mode"})
_RESOURCES = frozenset({"limits", "reservations"})
_LIMITS = frozenset({"cpus", "memory", "pids"})
_RESERVATIONS = frozenset({"cpus", "memory", "generic_resources", "devices"})
_PLACEMENT = frozenset({"constraints", "preferences", "max_replicas_per_node"})
_UPDATE = frozenset({"parallelism", "delay", "order", "failure_action", "monitor", "max_failure_ratio"})
_RESTART = frozenset({"condition", "delay", "max_attempts", "window"})
_HEALTH = frozenset({"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"})
_NETWORK = frozenset({"driver", "driver_opts", "ipam", "attachable", "internal", "external", "name", "labels"})
_IPAM = frozenset({"driver", "config"})
_IPAM_CONFIG = frozenset({"subnet"})
_SERVICE_NETWORK = frozenset({"aliases"})
_PORT_LONG = frozenset({"target", "published", "protocol", "mode", "host_ip", "name", "app_protocol"})


def load_stack(path: str, name: str | None = None, *, environ: Mapping[str, str] | None = None) -> Stack:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise StackError(path, 0, "", f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise StackError(path, 0, "", f"not UTF-8 text: {e}") from e
    return parse_stack(text, name, file=path, environ=environ)


def parse_stack(text: str, name: str | None = None, *, file: str = "<stack>",
                environ: Mapping[str, str] | None = None) -> Stack:
    try:
        doc = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise StackError(file, line, "", f"not valid YAML: {e.problem or e}") from e
    except yaml.YAMLError as e:
        raise StackError(file, 0, "", f"not valid YAML: {e}") from e
    if doc is None:
        raise StackError(file, 1, "", "empty file: a stack needs `services:`")
    root = _At(file, "", getattr(doc, "line", 1), doc)
    warnings: list[str] = []
    top = root.mapping(_TOP)
    _interpolate_tree(top, file, environ or {})
    stack_name = name
    if stack_name is None:
        at = root.child("name")
        if at is None:
            raise StackError(file, 1, "name", "no stack name: give one (--name) or set `name:` in the file")
        stack_name = at.string()
    if not _NAME.match(stack_name):
        raise StackError(file, top.lines.get("name", 1), "name",
                         f"invalid stack name {stack_name!r} (letters, digits, '_', '.', '-')")
    for ignored in ("configs", "secrets"):
        if top.get(ignored):
            warnings.append(f"{file}:{top.lines[ignored]}: {ignored}: ignored (not supported by dockyard deploy)")
    services_at = root.child("services")
    if services_at is None:
        raise StackError(file, 1, "services", "missing: a stack needs at least one service")
    networks = _networks(root.child("networks"), stack_name)
    specs = []
    for short, at in services_at.items():
        if not _NAME.match(short):
            raise StackError(file, at.line, at.field, f"invalid service name {short!r}")
        specs.append(_service(at, f"{stack_name}_{short}", warnings, networks))
    if not specs:
        raise StackError(file, services_at.line, "services", "no services defined")
    return Stack(stack_name, tuple(specs), tuple(warnings), tuple(networks.values()))


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
        out[key] = StackNetwork(key, name, driver=driver, subnet=subnet,
                                attachable=_opt(n, "attachable", _At.boolean, False),
                                internal=_opt(n, "internal", _At.boolean, False), labels=_labels(n.child("labels")))
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


def _service(at: _At, full_name: str, warnings: list[str], networks: Mapping[str, StackNetwork]) -> ServiceSpec:
    at.mapping(_SERVICE, _SERVICE_IGNORED, warnings)
    image_at = at.child("image")
    if image_at is None:
        at.fail("no image (dockyard deploy runs images; build them first with `dockyard image build`)")
    image = image_at.string().strip()
    if not image or any(c.isspace() for c in image):
        image_at.fail(f"invalid image reference {image!r}")
    command = _opt(at, "command", _At.words)
    entrypoint = _opt(at, "entrypoint", _At.words)
    env = _environment(at.child("environment"))
    ports_at = at.child("ports")
    ports = tuple(p for e in (ports_at.elements() if ports_at is not None else []) for p in _ports(e))
    published = [(p.published, p.protocol) for p in ports if p.published is not None]
    for p in set(published):
        if published.count(p) > 1:
            (ports_at or at).fail(f"host port {p[0]}/{p[1]} published twice")
    labels = _labels(at.child("labels"))
    healthcheck = _healthcheck(at.child("healthcheck"))
    attachments = _service_networks(at.child("networks"), networks)

    replicas, resources, placement = 1, ResourceSpec(), PlacementSpec()
    update, rollback, restart = UpdateConfig(), UpdateConfig(), RestartPolicy()
    deploy = at.child("deploy")
    if deploy is not None:
        deploy.mapping(_DEPLOY)
        mode = deploy.child("mode")
        if mode is not None and mode.choice(("replicated", "global")) == "global":
            mode.fail("global services are not supported yet (use replicas with max_replicas_per_node: 1)")
        replicas = _opt(deploy, "replicas", _At.integer, 1)
        resources = _resources(deploy.child("resources"))
        placement = _placement(deploy.child("placement"))
        update = _update(deploy.child("update_config"), UpdateConfig())
        rollback = _update(deploy.child("rollback_config"), UpdateConfig())
        restart = _restart(deploy.child("restart_policy"))
        labels = labels + _labels(deploy.child("labels"))
    return ServiceSpec(
        name=full_name, image=image, command=command, entrypoint=entrypoint, env=env, ports=ports,
        replicas=replicas, resources=resources, placement=placement, update_config=update,
        rollback_config=rollback, restart_policy=restart, healthcheck=healthcheck,
        labels=tuple(sorted(dict(labels).items())), networks=attachments,
    )


def _opt(at: _At, key: str, read: Callable[..., Any], default: Any = None) -> Any:
    child = at.child(key)
    return default if child is None else read(child)


def _environment(at: _At | None) -> tuple[tuple[str, str], ...]:
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
                e.fail(f"{key} has no value (write {key}=value; dockyard does not read the deploying shell)")
            env[key] = value
    else:
        for key, e in at.items():
            if e.value is None:
                e.fail(f"{key} has no value (dockyard does not read the deploying shell)")
            if isinstance(e.value, bool):
                env[key] = "true" if e.value else "false"
            else:
                env[key] = e.string()
    return tuple(sorted(env.items()))


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
    n = int(text)
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
        at.mapping(_PORT_LONG)
        target_at = at.child("target")
        if target_at is None:
            at.fail("a port needs `target` (the container port)")
        target = _port_number(target_at, str(target_at.integer(1)))
        pub_at = at.child("published")
        published = None if pub_at is None else _port_number(pub_at, str(pub_at.integer(1)))
        protocol = _opt(at, "protocol", lambda a: a.choice(("tcp", "udp", "sctp")), "tcp")
        mode = _opt(at, "mode", lambda a: a.choice(("ingress", "host")), "ingress")
        if at.child("host_ip") is not None:
            (at.child("host_ip") or at).fail("host_ip is not supported by Swarm-style deploys")
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


def _resources(at: _At | None) -> ResourceSpec:
    if at is None:
        return ResourceSpec()
    at.mapping(_RESOURCES)

    def read(sub: _At | None, allowed: frozenset[str]) -> Resources:
        if sub is None:
            return Resources()
        sub.mapping(allowed)
        for unsupported in ("generic_resources", "devices"):
            if sub.child(unsupported) is not None:
                (sub.child(unsupported) or sub).fail("not supported yet")
        cpus = _opt(sub, "cpus", parse_cpus, 0)
        memory = _opt(sub, "memory", parse_size, 0)
        if sub.child("memory") is not None and memory <= 0:
            (sub.child("memory") or sub).fail("memory must be more than 0")
        if sub.child("pids") is not None:
            (sub.child("pids") or sub).integer(1)
        return Resources(cpus, memory)

    limits = read(at.child("limits"), _LIMITS)
    reservations = read(at.child("reservations"), _RESERVATIONS)
    for what, lim, res in (("cpus", limits.nano_cpus, reservations.nano_cpus),
                           ("memory", limits.memory_bytes, reservations.memory_bytes)):
        if lim and res > lim:
            (at.child("reservations") or at).fail(f"reserves more {what} than its limit allows")
    return ResourceSpec(limits=limits, reservations=reservations)


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
    at.mapping(_HEALTH)
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
