"""Settings: every default once, and where the agent's and the scheduler's options come from.

An option of ``dockyard agent`` or ``dockyard scheduler`` is taken, first that has it:
1. the command line (``--bridge br0``);
2. the environment: ``DOCKYARD_AGENT_<PARAM>`` / ``DOCKYARD_SCHEDULER_<PARAM>`` (``DOCKYARD_AGENT_BRIDGE=br0``);
3. the TOML file given by ``--config FILE`` (or ``DOCKYARD_AGENT_CONFIG`` / ``DOCKYARD_SCHEDULER_CONFIG``),
   its ``[agent]`` or ``[scheduler]`` table, keys as the options are spelt (``bridge = "br0"``,
   ``metrics-addr = "127.0.0.1:9400"``, ``label = ["zone=a"]``);
4. the defaults below.
A key the command does not have, or a file that is not TOML, is an error naming the file and key.

``dockyard agent`` also reads docker's daemon.json (``DAEMON_JSON``, or ``--config-file PATH``) with
dockerd's rules: the keys that apply (``DAEMON_KEYS``) stand for their flags; an unknown key, a
value of the wrong type, or a key also given as a flag (or its variable) is refused at start,
naming it (``load_daemon_json``).
ENVIRONMENT lists every other DOCKYARD_* variable; README.md ("Settings") shows them all.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

# --- defaults -----------------------------------------------------------------------------------

ROOT = "/var/lib/dockyard"                    # the agent's state
AGENT_SOCKET = "/run/dockyard/agent.sock"     # the node API, for the CLI
DOCKER_SOCKET = "/run/dockyard/docker.sock"   # Docker's Engine API
BRIDGE = "dockyard0"
SUBNET = "172.29.0.0/16"
LOCAL_NETWORK_POOL = "10.222.0.0/16"           # user-defined networks of an agent: a /24 each
AGENT_METRICS_PORT = 9323                     # as dockerd's
AGENT_METRICS = f"127.0.0.1:{AGENT_METRICS_PORT}"
AGENT_JOIN_LISTEN = "127.0.0.1:7070"          # --join without --listen: the scheduler calls the agent here
SCHEDULER_PORT = 2377                         # as swarm's
SCHEDULER_LISTEN = f"127.0.0.1:{SCHEDULER_PORT}"
SCHEDULER_JOIN_PORT = SCHEDULER_PORT + 1      # --tls: the join port (server TLS only: CA and issuance)
SCHEDULER_METRICS = "127.0.0.1:9324"
SCHEDULER_STATE = "/var/lib/dockyard-scheduler"
ETCD = "/usr/bin/etcd"
DAEMON_JSON = "/etc/dockyard/daemon.json"    # docker's daemon.json keys (read if it exists)
MIN_FREE_DISK = 5.0                           # percent of the agent's disk kept free: below, no new work
LOG_DRIVER = "json-file"                      # the containers' log driver when neither they nor the agent say

# --- the environment ----------------------------------------------------------------------------

# Every DOCKYARD_* variable besides the per-option ones of agent and scheduler (tests/unit/test_settings.py
# fails when the code reads one that is not here).
ENVIRONMENT: dict[str, str] = {
    "DOCKYARD_HOST": "the agent the CLI talks to (-H): unix:///path or tcp://host:port",
    "DOCKYARD_SCHEDULER": "the scheduler(s) the cluster verbs talk to: HOST:PORT[,HOST:PORT...]",
    "DOCKYARD_CERT_PATH": "the CLI's TLS client bundle (ca.pem, cert.pem, key.pem; default ~/.dockyard)",
    "DOCKYARD_JOIN_TOKEN": "the join token of `dockyard agent --join` (as --token)",
    "DOCKYARD_CONFIG": "the CLI's directory for registry credentials (default ~/.dockyard)",
    "DOCKYARD_AGENT_CONFIG": "the agent's TOML settings file ([agent] table), as --config",
    "DOCKYARD_SCHEDULER_CONFIG": "the scheduler's TOML settings file ([scheduler] table), as --config",
    "DOCKYARD_LOG": "log level of the agent and the scheduler (INFO)",
    "DOCKYARD_ETCD": f"the etcd binary the scheduler starts for itself ({ETCD})",
    "DOCKYARD_CRIU": "the criu binary to use instead of the one found (deploy/install-criu.sh)",
    "DOCKYARD_TRACE": "FILE: time stamps of each step of the start and exit path (agent, shim)",
    "DOCKYARD_FAULT_INJECTION": "1: tests may pause a migration at a named step (never in production)",
    "DOCKYARD_ZYGOTE_CGROUPS": "internal: the cgroup driver's root and parent, agent to zygote",
    "DOCKYARD_FORCE_UPDATE": "internal: a label the scheduler sets on a task to roll it (service update --force)",
    "DOCKYARD_TEST_INVENTORY": "tests: an inventory of real hosts for tests/cluster/test_bootstrap.py",
}


def env_prefix(command: str) -> str:
    """The prefix of the per-option variables of ``dockyard agent`` / ``dockyard scheduler``."""
    return f"DOCKYARD_{command.upper()}"


# --- the TOML file ------------------------------------------------------------------------------


class SettingsError(ValueError):
    """A settings file that cannot be used: the message names the file and the key."""


def load_file(path: str, section: str, names: dict[str, str]) -> dict[str, Any]:
    """The ``[section]`` table of a TOML file, keyed by parameter name. ``names`` maps every
    accepted key (an option's spelling, ``metrics-addr``, or its parameter, ``metrics_addr``) to
    its parameter name."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise SettingsError(f"{path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"agent", "scheduler"})
    if unknown:
        raise SettingsError(f"{path}: unknown table [{unknown[0]}] (known: [agent], [scheduler])")
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [{section}] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            known = ", ".join(sorted(n for n in names if "_" not in n))
            raise SettingsError(f"{path}: [{section}] {key}: not an option of `dockyard {section}` (known: {known})")
        out[names[key]] = value
    return out


# --- docker's daemon.json ----------------------------------------------------------------------

# daemon.json key -> (the agent's parameter, the JSON type it must have). A list or an object
# becomes the strings its flag would be given (log-opts {"max-size": "10m"} -> ("max-size=10m",)).
DAEMON_KEYS: dict[str, tuple[str, str]] = {
    "data-root": ("root", "string"),
    "registry-mirrors": ("registry_mirrors", "list"),
    "insecure-registries": ("insecure_registries", "list"),
    "log-driver": ("log_driver", "string"),
    "log-opts": ("log_opts", "object"),
    "default-ulimits": ("default_ulimits", "ulimits"),
    "dns": ("dns", "list"),
    "dns-search": ("dns_search", "list"),
    "dns-opts": ("dns_options", "list"),
    "bip": ("bip", "string"),
}
# dockerd's keys that dockyard's agent does not do: refused with this reason, not ignored
DAEMON_UNSUPPORTED: dict[str, str] = {
    "default-address-pools": "user-defined networks take --subnet; the agent's bridge takes bip",
    "storage-driver": "dockyard always uses overlayfs", "exec-opts": "", "exec-root": "", "hosts": "use --socket",
    "iptables": "", "ip-forward": "use --ip-forward", "ip-masq": "use --ip-masq", "bridge": "use --bridge",
    "fixed-cidr": "use bip", "default-runtime": "", "runtimes": "",
    "live-restore": "containers always outlive the agent", "userns-remap": "", "debug": "use DOCKYARD_LOG=DEBUG",
    "log-level": "use DOCKYARD_LOG", "max-concurrent-downloads": "", "max-concurrent-uploads": "",
    "experimental": "", "features": "", "labels": "use --label", "cgroup-parent": "use --cgroup-parent",
    "mtu": "", "tls": "", "tlsverify": "", "tlscacert": "", "tlscert": "", "tlskey": "",
}


def load_daemon_json(path: str) -> dict[str, Any]:
    """daemon.json's settings, by the agent's parameter name, each as its flag would give it."""
    import json

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SettingsError(f"{path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw or b"{}")
    except ValueError as e:
        raise SettingsError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: must be a JSON object")
    unknown = sorted(k for k in doc if k not in DAEMON_KEYS)
    if unknown:
        reasons = [f"{k} ({DAEMON_UNSUPPORTED[k] or 'not supported by dockyard'})" if k in DAEMON_UNSUPPORTED else k
                   for k in unknown]
        raise SettingsError(f"{path}: the following directives don't match any configuration option: "
                            + ", ".join(reasons))
    out: dict[str, Any] = {}
    for key, value in doc.items():
        param, kind = DAEMON_KEYS[key]
        out[param] = _daemon_value(path, key, kind, value)
    return out


def _daemon_value(path: str, key: str, kind: str, value: Any) -> Any:
    where = f"{path}: {key}"
    if kind == "string":
        if not isinstance(value, str):
            raise SettingsError(f"{where}: must be a string, not {json_type(value)}")
        return value
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{where}: must be a list of strings")
        return tuple(value)
    if kind == "object":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise SettingsError(f'{where}: must be an object of strings (like {{"max-size": "10m"}})')
        return tuple(f"{k}={v}" for k, v in value.items())
    # default-ulimits: {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}}, as dockerd's
    if not isinstance(value, dict):
        raise SettingsError(f'{where}: must be an object (like {{"nofile": {{"Name": "nofile", "Soft": 1024, '
                            f'"Hard": 2048}}}})')
    out = []
    for name, u in value.items():
        if not isinstance(u, dict) or set(u) - {"Name", "Soft", "Hard"} or not {"Soft", "Hard"} <= set(u):
            raise SettingsError(f"{where}: {name}: must be an object with Soft and Hard (and Name)")
        if u.get("Name", name) != name:
            raise SettingsError(f"{where}: {name}: its Name is {u['Name']!r}")
        if not all(isinstance(u[k], int) and not isinstance(u[k], bool) for k in ("Soft", "Hard")):
            raise SettingsError(f"{where}: {name}: Soft and Hard must be integers")
        out.append(f"{name}={u['Soft']}:{u['Hard']}")
    return tuple(out)


def json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), "a string")


def daemon_option_name(param: str) -> str:
    """The daemon.json key of a parameter (for messages)."""
    return next(k for k, (p, _) in DAEMON_KEYS.items() if p == param)


# --- the click glue (imported lazily: the agent's runtime imports this module for its defaults) ----


def config_option(section: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--config FILE`` option of ``dockyard agent|scheduler``: read first (eager), so that the
    file's values become the defaults every other option falls back to."""
    import click

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value:
            names: dict[str, str] = {}
            for p in ctx.command.params:
                if isinstance(p, click.Option) and p.name and p.name != "config":
                    names[p.name] = p.name
                    names.update((o.lstrip("-"), p.name) for o in p.opts if o.startswith("--"))
            try:
                ctx.default_map = {**(ctx.default_map or {}), **load_file(value, section, names)}
            except SettingsError as e:
                raise click.BadParameter(str(e), param_hint="--config") from None
        return value

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=callback, help=f"TOML file whose [{section}] table sets these options")


def context(command: str) -> dict[str, Any]:
    """click context settings for ``dockyard agent|scheduler``: every option also from the environment."""
    return {"auto_envvar_prefix": env_prefix(command)}
