"""Image configuration (OCI image spec) and the Dockerfile-syntax --change instructions.

``ImageConfig`` is the runtime part of an OCI image config (``config`` in the JSON: Env, Cmd,
Entrypoint, WorkingDir, ExposedPorts, User, Labels, StopSignal). ``Image`` is what the image
store answers with. ``apply_change`` implements the instructions ``docker import --change`` takes,
with Dockerfile semantics (exec and shell forms, ``ENV k=v`` and legacy ``ENV k v``, relative
WORKDIR, ``EXPOSE 80`` meaning ``80/tcp``) so the builder can reuse it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidArchive, InvalidChange

MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
LAYER_MEDIA_TYPES = {
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}

CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "WORKDIR", "VOLUME",
                       "HEALTHCHECK")
_HEALTH_FLAGS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval", "retries": "Retries"}


def host_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


MAX_JSON_DEPTH = 64  # manifests, indexes and configs nest about 5 deep; 64 leaves room and no more


def load_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for what comes from outside (manifest.json, index.json, image configs, registry
    manifests): invalid JSON or nesting deeper than ``max_depth`` is an InvalidArchive naming
    ``what``, never a RecursionError (the C decoder's own limit is the interpreter's stack)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise InvalidArchive(f"{what}: JSON nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArchive(f"{what}: not valid JSON: {e}") from None
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if depth > max_depth:
            raise InvalidArchive(f"{what}: JSON nested deeper than {max_depth} levels")
        if isinstance(v, dict):
            todo.extend((c, depth + 1) for c in v.values() if isinstance(c, (dict, list)))
        elif isinstance(v, list):
            todo.extend((c, depth + 1) for c in v if isinstance(c, (dict, list)))
    return value


@dataclass
class ImageConfig:
    env: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    volumes: list[str] = field(default_factory=list)          # VOLUME: anonymous volumes at run
    healthcheck: dict[str, Any] | None = None                 # HEALTHCHECK, docker's shape (ns durations)
    on_build: list[str] = field(default_factory=list)         # ONBUILD triggers, run by a build FROM it

    def to_oci(self) -> dict[str, Any]:
        """The ``config`` object of an OCI image config; empty fields are left out as docker does."""
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.healthcheck:
            out["Healthcheck"] = dict(self.healthcheck)
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        return out

    @classmethod
    def from_oci(cls, data: dict[str, Any] | None, what: str = "config") -> ImageConfig:
        """Read the ``config`` object of an OCI/docker image config, checking each field's type."""
        data = data or {}
        if not isinstance(data, dict):
            raise InvalidArchive(f"{what}: must be an object")

        def strings(key: str) -> list[str]:
            value = data.get(key)
            if value is None:
                return []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidArchive(f"{what}.{key}: must be a list of strings")
            return list(value)

        def string(key: str) -> str:
            value = data.get(key)
            if value is None:
                return ""
            if not isinstance(value, str):
                raise InvalidArchive(f"{what}.{key}: must be a string")
            return value

        ports = data.get("ExposedPorts") or {}
        labels = data.get("Labels") or {}
        if not isinstance(ports, dict):
            raise InvalidArchive(f"{what}.ExposedPorts: must be an object")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidArchive(f"{what}.Labels: must be an object of strings")
        volumes = data.get("Volumes") or {}
        if not isinstance(volumes, dict) or not all(isinstance(k, str) and k.startswith("/") for k in volumes):
            raise InvalidArchive(f"{what}.Volumes: must be an object of absolute paths")
        health = data.get("Healthcheck")
        if health is not None:
            test = health.get("Test") if isinstance(health, dict) else None
            if not isinstance(test, list) or not all(isinstance(t, str) for t in test) or not all(
                    isinstance(health.get(k, 0), int) and not isinstance(health.get(k, 0), bool)
                    for k in _HEALTH_FLAGS.values()):
                raise InvalidArchive(f"{what}.Healthcheck: must have a Test list and whole-number durations")
        return cls(
            env=strings("Env"),
            cmd=strings("Cmd"),
            entrypoint=strings("Entrypoint"),
            workdir=string("WorkingDir"),
            user=string("User"),
            exposed_ports=sorted(ports),
            labels=dict(labels),
            stop_signal=string("StopSignal"),
            volumes=sorted(volumes),
            healthcheck=dict(health) if health else None,
            on_build=strings("OnBuild"),
        )

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            k, _, v = item.partition("=")
            out[k] = v
        return out


@dataclass
class Image:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    config: ImageConfig
    created: float
    size: int
    diff_ids: list[str]
    chain_id: str
    history: list[dict[str, Any]]
    architecture: str
    os: str
    manifest_digest: str = ""
    layer_digests: list[str] = field(default_factory=list)
    container: str = ""            # docker commit's: the container it was made from, and that one's config
    container_config: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainID of each prefix of the layer stack: chain(n) = sha256(chain(n-1) + " " + diff(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def chain_id(diff_ids: Sequence[str]) -> str:
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else ""


def format_time(ts: float) -> str:
    """RFC 3339 with nanoseconds, UTC, as docker writes ``created``."""
    whole = int(ts)
    nanos = round((ts - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    m = _TIME.match(text)
    if not m:
        return 0.0
    import calendar

    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    tz = m.group(3)
    offset = 0
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return base + frac - offset


def build_oci_config(
    config: ImageConfig,
    diff_ids: Sequence[str],
    history: Sequence[dict[str, Any]],
    created: float,
    architecture: str | None = None,
    os_name: str = "linux",
) -> dict[str, Any]:
    return {
        "architecture": architecture or host_architecture(),
        "config": config.to_oci(),
        "created": format_time(created),
        "history": list(history),
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


# --- --change: Dockerfile instructions applied to a config -------------------------------------

def _split_instruction(line: str) -> tuple[str, str]:
    text = line.strip()
    if not text:
        raise InvalidChange("empty --change instruction")
    parts = text.split(None, 1)
    return parts[0].upper(), (parts[1].strip() if len(parts) > 1 else "")


def _json_array(args: str) -> list[str] | None:
    """The exec form if ``args`` is a JSON array of strings, else None (then it is shell form)."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _expand(word: str, env: dict[str, str]) -> str:
    """$VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt} as the Dockerfile does for ENV, WORKDIR, LABEL..."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None:  # escaped \$
            return "$"
        name = m.group(2) or m.group(3)
        mod, alt = m.group(4), m.group(5)
        value = env.get(name)
        if mod == ":-":
            return value if value else (alt or "")
        if mod == ":+":
            return (alt or "") if value else ""
        return value or ""

    return re.sub(r"(\\\$)|\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\})", sub, word)


def _words(args: str, what: str) -> list[str]:
    try:
        lexer = shlex.shlex(args, posix=True, punctuation_chars=False)
        lexer.whitespace_split = True
        lexer.escapedquotes = '"'
        return list(lexer)
    except ValueError as e:
        raise InvalidChange(f"{what}: {e}: {args!r}") from None


def _key_values(instr: str, args: str, env: dict[str, str]) -> list[tuple[str, str]]:
    if not args:
        raise InvalidChange(f"{instr} requires at least one argument")
    first = args.split(None, 1)[0]
    if "=" not in first:
        # Legacy form: ENV key value with spaces
        key, _, value = args.partition(" ")
        value = value.strip()
        if not value and instr == "ENV":
            raise InvalidChange(f"ENV names can not be blank: {args!r} needs a value")
        return [(key, _expand(value, env) if instr == "ENV" else value)]
    out = []
    for word in _words(args, instr):
        key, eq, value = word.partition("=")
        if not eq:
            raise InvalidChange(f"{instr}: {word!r} must be key=value")
        if not key:
            raise InvalidChange(f"{instr} names can not be blank: {word!r}")
        out.append((_expand(key, env), _expand(value, env)))
    return out


def apply_change(config: ImageConfig, line: str, shell: Sequence[str] = ("/bin/sh", "-c")) -> ImageConfig:
    """Return a new config with one Dockerfile instruction (as ``docker import --change`` takes) applied."""
    instr, args = _split_instruction(line)
    env = config.env_dict()
    if instr in ("CMD", "ENTRYPOINT"):
        exec_form = _json_array(args)
        if exec_form is None:
            if not args:
                # ENTRYPOINT with no args clears it, as docker does; CMD too.
                argv: list[str] = []
            else:
                argv = [*shell, args]
        else:
            argv = exec_form
        if instr == "CMD":
            return replace(config, cmd=argv)
        # Setting ENTRYPOINT resets CMD inherited from the base, as in a Dockerfile.
        return replace(config, entrypoint=argv, cmd=[])
    if instr == "ENV":
        pairs = _key_values(instr, args, env)
        items = list(config.env)
        for key, value in pairs:
            items = [e for e in items if e.partition("=")[0] != key]
            items.append(f"{key}={value}")
            env[key] = value
        return replace(config, env=items)
    if instr == "LABEL":
        labels = dict(config.labels)
        for key, value in _key_values(instr, args, env):
            labels[key] = value
        return replace(config, labels=labels)
    if instr == "EXPOSE":
        if not args:
            raise InvalidChange("EXPOSE requires at least one argument")
        ports = set(config.exposed_ports)
        for word in _words(_expand(args, env), instr):
            ports.add(_port(word))
        return replace(config, exposed_ports=sorted(ports))
    if instr == "WORKDIR":
        if not args:
            raise InvalidChange("WORKDIR requires exactly one argument")
        path = _expand(args, env)
        if not path.startswith("/"):
            base = config.workdir or "/"
            path = base.rstrip("/") + "/" + path
        return replace(config, workdir=_clean_path(path))
    if instr == "USER":
        if not args or len(args.split()) != 1:
            raise InvalidChange(f"USER requires exactly one argument: {args!r}")
        return replace(config, user=_expand(args, env))
    if instr == "STOPSIGNAL":
        if not args or len(args.split()) != 1:
            raise InvalidChange(f"STOPSIGNAL requires exactly one argument: {args!r}")
        sig = _expand(args, env)
        if not (sig.isdigit() or re.fullmatch(r"(SIG)?[A-Z0-9+-]+", sig.upper())):
            raise InvalidChange(f"STOPSIGNAL: invalid signal {sig!r}")
        return replace(config, stop_signal=sig)
    if instr == "VOLUME":
        exec_form = _json_array(args)
        paths = exec_form if exec_form is not None else _words(_expand(args, env), instr)
        if not paths or not all(paths):
            raise InvalidChange("VOLUME requires at least one argument")
        return replace(config, volumes=sorted({*config.volumes, *(_clean_path(p) for p in paths)}))
    if instr == "HEALTHCHECK":
        return replace(config, healthcheck=_healthcheck(args, shell))
    raise InvalidChange(
        f"{instr} is not a valid change command (allowed: {', '.join(CHANGE_INSTRUCTIONS)})"
    )


def apply_changes(config: ImageConfig, changes: Sequence[str]) -> ImageConfig:
    """Apply instructions in order. As in a Dockerfile, ENTRYPOINT clears an inherited CMD but not a
    CMD set earlier in the same list."""
    cmd_set = False
    for line in changes:
        instr = _split_instruction(line)[0]
        before = config.cmd
        config = apply_change(config, line)
        if instr == "CMD":
            cmd_set = True
        elif instr == "ENTRYPOINT" and cmd_set:
            config = replace(config, cmd=before)
    return config


def _duration_ns(text: str, flag: str) -> int:
    m = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+)", text)
    if not m:
        raise InvalidChange(f"HEALTHCHECK --{flag}: invalid duration {text!r} (like 30s, 1m30s)")
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
    return int(sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)))


def _healthcheck(args: str, shell: Sequence[str]) -> dict[str, Any]:
    """HEALTHCHECK [--interval=D --timeout=D --start-period=D --start-interval=D --retries=N] CMD ... | NONE"""
    out: dict[str, Any] = {}
    rest = args.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        rest = rest.strip()
        key, eq, value = word[2:].partition("=")
        if key not in _HEALTH_FLAGS or not eq:
            raise InvalidChange(f"HEALTHCHECK: unknown flag or missing value: {word}")
        if key == "retries":
            if not value.isdigit():
                raise InvalidChange(f"HEALTHCHECK --retries: {value!r} is not a number")
            out["Retries"] = int(value)
        else:
            out[_HEALTH_FLAGS[key]] = _duration_ns(value, key)
    kind, _, cmd = rest.partition(" ")
    kind = kind.upper()
    if kind == "NONE":
        if cmd.strip() or out:
            raise InvalidChange("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD" or not cmd.strip():
        raise InvalidChange(f"HEALTHCHECK: expected CMD COMMAND or NONE, got {rest!r}")
    exec_form = _json_array(cmd)
    out["Test"] = ["CMD", *exec_form] if exec_form is not None else ["CMD-SHELL", cmd.strip()]
    return out


def _port(word: str) -> str:
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidChange(f"EXPOSE: invalid protocol {proto!r} in {word!r}")
    lo, dash, hi = port.partition("-")
    for p in (lo, hi) if dash else (lo,):
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise InvalidChange(f"EXPOSE: invalid port {word!r}")
    return f"{port}/{proto}"


def _clean_path(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)
