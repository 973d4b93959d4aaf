"""The container a `run` or `create` asks for, built from its options (deploy/options.py CONTAINER)
as an agent.proto ContainerConfig in its proto3 JSON form (field names as in the .proto).

Both ways of running a command use it: click's (deploy/cli.py turns the dict into the message) and
the fast one (deploy/cli_local.py sends the dict as it is). It imports nothing heavy. A bad value
raises BadOption, which click's commands report as a bad parameter and the fast path hands to click.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from typing import Any

RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
RUN_ERROR = 125  # docker run's exit status for its own errors (a bad flag, a refused create)


def start_error_code(error: str) -> int:
    """docker run's exit status when the container's command could not be run (docker/cli's
    runStartContainerErr): 127 not found, 126 not invocable, 125 anything else that failed."""
    if any(s in error for s in ("executable file not found", "no such file or directory")):
        return 127
    if any(s in error for s in ("permission denied", "is a directory")):
        return 126
    return RUN_ERROR


class BadOption(ValueError):
    """A bad option value: the message, the option to name ("" when the message names it), and
    whether click reports it as a usage error (a file that cannot be read is not one)."""

    def __init__(self, message: str, hint: str = "", usage: bool = True) -> None:
        super().__init__(message)
        self.hint = hint
        self.usage = usage


def env_file(path: str) -> list[str]:
    out = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if "=" not in line:
                    val = os.environ.get(line)
                    if val is None:
                        continue
                    line = f"{line}={val}"
                if line.startswith("="):
                    raise BadOption(f"poorly formatted environment: {path}:{n}: variable name is empty", usage=False)
                out.append(line)
    except OSError as e:
        raise BadOption(f"open {path}: {e.strerror}", usage=False) from None
    return out


def parse_size(value: str, flag: str) -> int:
    from deploy import display

    try:
        return display.parse_size(value, flag)
    except ValueError as e:
        raise BadOption(str(e)) from None


def ports(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    if not specs:
        return []
    from agent.runtime.network.model import NetworkError
    from agent.runtime.network.ports import parse_publish

    out = []
    for s in specs:
        try:
            out += [{"host_ip": p.host_ip, "host_port": p.host_port, "container_port": p.container_port,
                     "protocol": p.protocol} for p in parse_publish(s)]
        except NetworkError as e:
            raise BadOption(str(e), "'-p' / '--publish'") from e
    return out


def device_rates(specs: tuple[str, ...], flag: str) -> list[dict[str, Any]]:
    out = []
    for s in specs:
        path, sep, rate = s.rpartition(":")
        if not sep or not path.startswith("/dev/"):
            raise BadOption(f"{s}: expected /dev/DEVICE:RATE", f"'{flag}'")
        out.append({"path": path, "rate": parse_size(rate, flag)})
    return out


def devices(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    """--device HOST[:CONTAINER][:PERMISSIONS], as docker's CLI splits it."""
    if not specs:
        return []
    from common.devices import DeviceMapping

    out = []
    for spec in specs:
        try:
            d = DeviceMapping.parse(spec)
        except ValueError as e:
            raise BadOption(str(e), "'--device'") from None
        out.append({"path_on_host": d.path_on_host, "path_in_container": d.path_in_container,
                    "permissions": d.permissions})
    return out


def nano_cpus(text: str) -> int:
    try:
        cpus = float(text)
    except ValueError:
        raise BadOption(f'invalid argument "{text}" for "--cpus" flag: not a number') from None
    n = os.cpu_count() or 1
    if cpus <= 0 or cpus > n:
        raise BadOption(f"range of CPUs is from 0.01 to {float(n):.2f}, as there are only {n} CPUs available",
                        "'--cpus'")
    return int(cpus * 1e9)


def restart_policy(text: str) -> dict[str, Any]:
    """--restart no|always|unless-stopped|on-failure[:N] as the proto's RestartPolicy fields."""
    rname, _, rmax = text.partition(":")
    if rname not in RESTART_POLICIES or (rmax and (rname != "on-failure" or not rmax.isdigit())):
        raise BadOption(f"invalid restart policy '{text}'", "'--restart'")
    return {"name": rname, "max_retries": int(rmax or 0)}


def update_request(o: dict[str, Any]) -> dict[str, Any]:
    """`dockyard update`'s flags (deploy/options.py UPDATE) as UpdateContainerRequest fields: only
    those given, for the agent changes only those."""
    req: dict[str, Any] = {}
    if o["memory"]:
        req["memory"] = parse_size(o["memory"], "-m, --memory")
    if o["memory_swap"]:
        req["memory_swap"] = -1 if o["memory_swap"] == "-1" else parse_size(o["memory_swap"], "--memory-swap")
    if o["cpus"]:
        req["nano_cpus"] = nano_cpus(o["cpus"])
    for key in ("cpu_shares", "blkio_weight"):
        if o[key] is not None:
            req[key] = o[key]
    if o["pids_limit"] is not None:
        req["pids_limit"] = 0 if o["pids_limit"] < 0 else o["pids_limit"]
    if o["restart"]:
        req["restart_policy"] = restart_policy(o["restart"])
    if not req:
        raise BadOption("you must provide one or more flags when using this command", usage=True)
    return req


def resources(o: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if o["memory"]:
        res["memory"] = parse_size(o["memory"], "-m, --memory")
    if o["memory_swap"]:
        res["memory_swap"] = -1 if o["memory_swap"] == "-1" else parse_size(o["memory_swap"], "--memory-swap")
    if o["cpus"]:
        res["nano_cpus"] = nano_cpus(o["cpus"])
    res["cpu_shares"] = o["cpu_shares"]
    res["pids_limit"] = 0 if o["pids_limit"] < 0 else o["pids_limit"]
    res["blkio_weight"] = o["blkio_weight"]
    res["device_read_bps"] = device_rates(o["device_read_bps"], "--device-read-bps")
    res["device_write_bps"] = device_rates(o["device_write_bps"], "--device-write-bps")
    res["cpuset_cpus"], res["cpuset_mems"] = o["cpuset_cpus"], o["cpuset_mems"]
    if o["memory_swappiness"] != -1:
        if not 0 <= o["memory_swappiness"] <= 100:
            raise BadOption(f"invalid value: {o['memory_swappiness']}. Valid memory swappiness range is 0-100",
                            "'--memory-swappiness'")
        res["memory_swappiness"] = o["memory_swappiness"]
    return res


def build_config(image: str, command: tuple[str, ...] | list[str], o: dict[str, Any]) -> dict[str, Any]:
    """The ContainerConfig for `run`/`create IMAGE COMMAND...` with options `o` (by dest)."""
    env_list = [e for p in o["env_file"] for e in env_file(p)]
    for e in o["env"]:
        if "=" not in e:
            val = os.environ.get(e)
            if val is None:
                continue
            e = f"{e}={val}"
        env_list.append(e)
    for e in env_list:
        if not e.partition("=")[0]:
            raise BadOption(f"invalid environment variable: {e}", "'-e' / '--env'")
    if o["workdir"] and not o["workdir"].startswith("/"):
        raise BadOption(f"the working directory '{o['workdir']}' is invalid, it needs to be an absolute path",
                        "'-w' / '--workdir'")
    entry_set = o["entrypoint"] is not None
    return {
        "name": o["name"], "image": image, "cmd": list(command),
        "entrypoint": [o["entrypoint"]] if entry_set and o["entrypoint"] else [], "entrypoint_set": entry_set,
        "env": env_list, "workdir": o["workdir"], "user": o["user"], "hostname": o["hostname"], "tty": o["tty"],
        "open_stdin": o["interactive"],
        "labels": {**label_files(o.get("label_file") or ()), **dict(label.partition("=")[::2] for label in o["label"])},
        "ports": ports(o["publish"]), "resources": resources(o), "network_mode": o["network"],
        "pid_mode": o["pid_mode"], "ipc_mode": o["ipc_mode"], "userns_mode": o["userns_mode"],
        "cgroupns_mode": o["cgroupns_mode"], "uts_mode": o["uts_mode"],
        "device_cgroup_rules": list(o["device_cgroup_rules"]),
        "restart_policy": restart_policy(o["restart"] or "no"), "auto_remove": o["auto_remove"],
        "init": o["init"], "stop_timeout": o["stop_timeout"], "stop_signal": o["stop_signal"],
        "security_opt": security_opts(o["security_opt"]), "devices": devices(o["device"]), "privileged": o["privileged"],
        **run_extras(o),
    }


# --- volumes and the rest of docker run (imported only when one of these options is given) -------

_EXTRAS = ("volumes", "mounts", "tmpfs", "read_only", "cap_add", "cap_drop", "ulimits", "dns", "dns_search",
           "dns_options", "add_hosts", "sysctls", "shm_size", "group_add", "label_file", "health_cmd",
           "health_interval", "health_timeout", "health_retries", "health_start_period", "health_start_interval",
           "no_healthcheck", "log_driver", "log_opts")


def run_extras(o: dict[str, Any]) -> dict[str, Any]:
    """The ContainerConfig fields of the options above, proto3 JSON names; {} when none is given."""
    if not any(o.get(k) not in (None, "", 0, False, (), []) for k in _EXTRAS):
        return {}
    # (each module below is imported only when its options are given: the start of `run` is what
    # the user waits for)
    from agent.errors import InvalidArgument

    out: dict[str, Any] = {}
    # -v, --mount and --tmpfs go as typed: the agent parses them (agent/volumes/specs.py from_flags)
    for key, field in (("volumes", "volume_flags"), ("mounts", "mount_flags"), ("tmpfs", "tmpfs_flags")):
        if o.get(key):
            out[field] = list(o[key])
    if o.get("read_only"):
        out["read_only"] = True
    for key, name in (("cap_add", "cap_add"), ("cap_drop", "cap_drop"), ("dns", "dns"), ("dns_search", "dns_search"),
                      ("dns_options", "dns_options"), ("add_hosts", "extra_hosts"), ("group_add", "group_add")):
        if o.get(key):
            out[name] = list(o[key])
    ulimits = []
    if o.get("ulimits"):
        from agent.hostconfig import check_ulimit, parse_ulimit
    for s in o.get("ulimits") or ():
        try:
            u = parse_ulimit(s)
            check_ulimit(u)
        except InvalidArgument as e:
            raise BadOption(str(e), "'--ulimit'") from None
        ulimits.append({"name": u.name, "soft": u.soft, "hard": u.hard})
    if ulimits:
        out["ulimits"] = ulimits
    sysctls = {}
    for s in o.get("sysctls") or ():
        k, sep, v = s.partition("=")
        if not sep or not k:
            raise BadOption(f"{s!r}: expected KEY=VALUE", "'--sysctl'")
        sysctls[k] = v
    if sysctls:
        out["sysctls"] = sysctls
    if o.get("shm_size"):
        out["shm_size"] = parse_size(o["shm_size"], "--shm-size")
    health = healthcheck(o)
    if health is not None:
        out["healthcheck"] = health
    if o.get("log_driver") or o.get("log_opts"):
        from agent import logs

        try:
            opts = logs.parse_opts(o.get("log_opts") or ())
        except InvalidArgument as e:
            raise BadOption(str(e), "'--log-opt'") from None
        # checked by the agent, once its default options are merged in (max-size may come from there)
        out["log_config"] = {"type": o.get("log_driver") or "", "config": opts}
    return out


def label_files(paths: tuple[str, ...] | list[str]) -> dict[str, str]:
    """docker's --label-file: KEY=VALUE lines; blank lines and # comments skipped."""
    out = {}
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        k, _, v = line.partition("=")
                        out[k] = v
        except OSError as e:
            raise BadOption(f"open {path}: {e.strerror}", usage=False) from None
    return out


def security_opts(opts: tuple[str, ...] | list[str]) -> list[str]:
    """seccomp=FILE is read here and sent as the profile's JSON, as docker's CLI does."""
    out = []
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key == "seccomp" and sep and value not in ("unconfined", "builtin", "default") \
                and not value.lstrip().startswith("{"):
            try:
                with open(value) as f:
                    value = f.read()
            except OSError as e:
                raise BadOption(f"opening seccomp profile ({value}) failed: {e.strerror}", "'--security-opt'") from None
            opt = f"seccomp={value}"
        out.append(opt)
    return out


def _duration(text: str, flag: str) -> float:
    import re

    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BadOption(f"invalid duration {text!r} (like 30s, 1m30s, 500ms)", f"'{flag}'")
    return sum(float(n) * units[u] for n, u in parts)


def healthcheck(o: dict[str, Any]) -> dict[str, Any] | None:
    """--health-* and --no-healthcheck as a HealthCheck (0 for what is not given: the image's or
    docker's default, filled in by the agent)."""
    keys = ("health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period",
            "health_start_interval")
    given = any(o.get(k) not in (None, "", 0) for k in keys)
    if o.get("no_healthcheck"):
        if given:
            raise BadOption("--no-healthcheck conflicts with --health-* options", "'--no-healthcheck'")
        return {"test": ["NONE"]}
    if not given:
        return None
    if o.get("health_cmd") is not None and not o["health_cmd"].strip():
        raise BadOption("the health command is empty", "'--health-cmd'")
    if (o.get("health_retries") or 0) < 0:
        raise BadOption("must be 0 or more", "'--health-retries'")
    h: dict[str, Any] = {"test": ["CMD-SHELL", o["health_cmd"]] if o.get("health_cmd") else [],
                         "retries": o.get("health_retries") or 0}
    for key in ("interval", "timeout", "start_period", "start_interval"):
        text = o.get(f"health_{key}") or ""
        if text:
            h[key] = _duration(text, f"--health-{key.replace('_', '-')}")
    return h
