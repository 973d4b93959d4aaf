"""The Docker Engine API of one agent: wiring, system endpoints, and the server's lifetime.

Handlers call the agent's own services (the container manager, the image store), the same that
the gRPC servicers call: this is a second protocol, not a second runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

from . import containers, images, networks, system, volumes
from .events import Events
from .http import Server
from .router import API_VERSION, Router

log = logging.getLogger("dockyard.dockerapi")

VERSION = "0.1.0"


class DockerAPI:
    def __init__(self, manager: Any, images_store: Any, name: str, root: str, cgroup_version: int,
                 health: Any = None) -> None:
        self.m = manager
        self.health = health   # agent/health.py's HealthMonitor
        self.images = images_store
        self.name = name
        self.root = root
        self.cgroup_version = cgroup_version
        self.events = Events(manager)
        if health is not None:
            health.on_status.append(lambda c, status: self.events.container(c, f"health_status: {status}"))
        self.started = time.time()
        self.pending: dict[str, list[containers.PendingAttach]] = {}
        self.sessions: dict[str, list[Any]] = {}   # container id -> live attach writers (for resize)
        self.execs: dict[str, containers.ExecRecord] = {}
        self.console: dict[str, tuple[int, int]] = {}   # container id -> (rows, cols) its terminal starts at
        self._tasks: set[asyncio.Task[Any]] = set()
        self.router = Router()
        system.register(self.router, self)
        containers.register(self.router, self)
        images.register(self.router, self)
        networks.register(self.router, self)
        volumes.register(self.router, self)
        self.server = Server(self.router, self.common_headers)

    def common_headers(self) -> list[tuple[str, str]]:
        return [("Api-Version", API_VERSION), ("Docker-Experimental", "false"), ("Ostype", "linux"),
                ("Server", f"Docker/{VERSION} (linux) dockyard")]

    async def serve(self, socket_path: str, tcp: str) -> None:
        """Listen on the unix socket (root only: it is root on this host) and, if given, on a
        loopback TCP address."""
        if socket_path:
            path = Path(socket_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                if _answers(socket_path):
                    raise OSError(f"{socket_path} is served by another process: not taking it over")
                path.unlink()
            old = os.umask(0o177)
            try:
                await self.server.listen_unix(socket_path)
            finally:
                os.umask(old)
            os.chmod(socket_path, 0o600)
        if tcp:
            host, port = parse_tcp(tcp)
            await self.server.listen_tcp(host, port)

    async def close(self, socket_path: str) -> None:
        await self.server.close()
        for t in list(self._tasks):
            t.cancel()
        if socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)

    # --- shared by the handlers -------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def info(self) -> dict[str, Any]:
        cs = list(self.m.containers.values())
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {
            "ID": self.name, "Name": self.name, "Containers": len(cs),
            "ContainersRunning": sum(c.state.status == "running" for c in cs),
            "ContainersPaused": sum(c.state.status == "paused" for c in cs),
            "ContainersStopped": sum(c.state.status not in ("running", "paused") for c in cs),
            "Images": len(self.images.list(True)), "Driver": "overlay2", "DriverStatus": [],
            "DockerRootDir": self.root, "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"],
                                                     "Authorization": None, "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True,
            "CPUShares": True, "CPUSet": False, "PidsLimit": True, "IPv4Forwarding": True,
            "BridgeNfIptables": False, "BridgeNfIp6tables": False, "Debug": False,
            "NFd": len(os.listdir("/proc/self/fd")), "OomKillDisable": False, "NGoroutines": 0,
            "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
            "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs", "CgroupVersion": str(self.cgroup_version),
            "NEventsListener": 0, "KernelVersion": platform.release(), "OperatingSystem": _os_name(),
            "OSVersion": "", "OSType": "linux", "Architecture": platform.machine(),
            "IndexServerAddress": "https://index.docker.io/v1/", "RegistryConfig": None,
            "NCPU": os.cpu_count() or 1, "MemTotal": mem, "GenericResources": None,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Labels": [], "ExperimentalBuild": False,
            "ServerVersion": VERSION, "Runtimes": {"dockyard": {"path": "dockyard"}}, "DefaultRuntime": "dockyard",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                      "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "", "SecurityOptions": ["name=seccomp,profile=builtin"],
            "Warnings": None,
        }

    def version(self) -> dict[str, Any]:
        from .router import MIN_API_VERSION

        built = time.strftime("%Y-%m-%dT%H:%M:%S.000000000+00:00", time.gmtime(self.started))
        return {
            "Platform": {"Name": f"dockyard {VERSION}"},
            "Components": [{"Name": "Engine", "Version": VERSION,
                            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                        "Os": "linux", "Arch": _goarch(), "KernelVersion": platform.release(),
                                        "GitCommit": "", "GoVersion": "", "BuildTime": built,
                                        "Experimental": "false"}}],
            "Version": VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "",
            "GoVersion": f"python{platform.python_version()}", "Os": "linux", "Arch": _goarch(),
            "KernelVersion": platform.release(), "BuildTime": built,
        }


def parse_tcp(addr: str) -> tuple[str, int]:
    """HOST:PORT on loopback only: the API gives root on this host, and there is no TLS yet."""
    import ipaddress

    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--docker-tcp {addr!r}: want HOST:PORT, e.g. 127.0.0.1:2375")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"--docker-tcp {addr!r}: only a loopback address is allowed (the API is root on this "
                         "host and has no TLS yet)")
    return host, int(port)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def _goarch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return str(json.loads(line.partition("=")[2])) if line.partition("=")[2].startswith('"') \
                    else line.partition("=")[2]
    return "Linux"


async def start(manager: Any, images_store: Any, name: str, root: str, cgroup_version: int,
                socket_path: str, tcp: str, health: Any = None) -> DockerAPI | None:
    """The agent's Docker API, or None (said in the log) when its socket or port cannot be had:
    that must not keep the agent from running its containers."""
    api = DockerAPI(manager, images_store, name, root, cgroup_version, health)
    try:
        await api.serve(socket_path, tcp)
    except (OSError, ValueError) as e:
        log.error("no Docker API: %s", e)
        await api.close("")
        return None
    log.info("Docker API on %s", " and ".join(x for x in (f"unix://{socket_path}" if socket_path else "",
                                                            f"tcp://{tcp}" if tcp else "") if x))
    await asyncio.sleep(0)
    return api
