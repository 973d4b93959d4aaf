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


def resources(o: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if o["memory"]:
        res["memory"] = parse_size(o["memory"], "-m, --memory")
    if o["memory_swap"]:
        res["memory_swap"] = -1 if o["memory_swap"] == "-1" else parse_size(o["memory_swap"], "--memory-swap")
    if o["cpus"]:
        try:
            cpus = float(o["cpus"])
        except ValueError:
            raise BadOption(f'invalid argument "{o["cpus"]}" for "--cpus" flag: not a number') from None
        n = os.cpu_count() or 1
        if cpus <= 0 or cpus > n:
            raise BadOption(f"range of CPUs is from 0.01 to {float(n):.2f}, as there are only {n} CPUs available",
                            "'--cpus'")
        res["nano_cpus"] = int(cpus * 1e9)
    res["cpu_shares"] = o["cpu_shares"]
    res["pids_limit"] = 0 if o["pids_limit"] < 0 else o["pids_limit"]
    res["blkio_weight"] = o["blkio_weight"]
    res["device_read_bps"] = device_rates(o["device_read_bps"], "--device-read-bps")
    res["device_write_bps"] = device_rates(o["device_write_bps"], "--device-write-bps")
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
    restart = o["restart"] or "no"
    rname, _, rmax = restart.partition(":")
    if rname not in RESTART_POLICIES or (rmax and (rname != "on-failure" or not rmax.isdigit())):
        raise BadOption(f"invalid restart policy '{restart}'", "'--restart'")
    entry_set = o["entrypoint"] is not None
    return {
        "name": o["name"], "image": image, "cmd": list(command),
        "entrypoint": [o["entrypoint"]] if entry_set and o["entrypoint"] else [], "entrypoint_set": entry_set,
        "env": env_list, "workdir": o["workdir"], "user": o["user"], "hostname": o["hostname"], "tty": o["tty"],
        "open_stdin": o["interactive"], "labels": dict(label.partition("=")[::2] for label in o["label"]),
        "ports": ports(o["publish"]), "resources": resources(o), "network_mode": o["network"],
        "pid_mode": o["pid_mode"], "ipc_mode": o["ipc_mode"], "userns_mode": o["userns_mode"],
        "restart_policy": {"name": rname, "max_retries": int(rmax or 0)}, "auto_remove": o["auto_remove"],
        "init": o["init"], "stop_timeout": o["stop_timeout"], "stop_signal": o["stop_signal"],
        "security_opt": list(o["security_opt"]), "devices": devices(o["device"]), "privileged": o["privileged"],
    }
