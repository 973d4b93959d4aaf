"""Docker's JSON <-> the agent's own types: the one conversion layer of the Engine API.

A create body is mapped field by field onto ContainerConfig. What dockyard cannot do is refused
with the field's name (400), never ignored: a field is accepted only when it is mapped, or when it
holds its zero value (the docker CLI and docker-py send many fields at their defaults).
"""

from __future__ import annotations

import datetime
import os
import shlex
import time
from typing import Any

from agent import logs
from agent.model import (
    Container,
    ContainerConfig,
    DeviceRate,
    HealthCheck,
    InvalidArgument,
    LogConfig,
    Mount,
    NetworkAttachment,
    Port,
    Resources,
    RestartPolicy,
    Ulimit,
)
from agent.volumes import specs as mount_specs
from common.devices import DeviceMapping
from common.humanize import human_duration

from .http import HTTPError

# Config (the container's own) keys that are mapped; every other key must hold its zero value.
_CONFIG_MAPPED = {
    "Hostname", "User", "Env", "Cmd", "Entrypoint", "Image", "WorkingDir", "Labels", "Tty", "OpenStdin",
    "StdinOnce", "StopSignal", "StopTimeout", "ExposedPorts", "HostConfig", "NetworkingConfig", "Healthcheck",
    "Volumes",
    # The client's own attach choices (it attaches with /attach), and docker's Windows-only flag.
    "AttachStdin", "AttachStdout", "AttachStderr", "ArgsEscaped",
}
_HOST_MAPPED = {
    "PortBindings", "PublishAllPorts", "RestartPolicy", "AutoRemove", "NetworkMode", "Memory", "MemorySwap",
    "NanoCpus", "CpuShares", "PidsLimit", "BlkioWeight", "BlkioDeviceReadBps", "BlkioDeviceWriteBps",
    "PidMode", "IpcMode", "UsernsMode", "Init", "SecurityOpt", "LogConfig", "ConsoleSize", "CgroupnsMode",
    "Isolation", "Privileged", "Devices", "Binds", "Mounts", "Tmpfs", "ReadonlyRootfs", "CapAdd", "CapDrop",
    "Ulimits", "Dns", "DnsSearch", "DnsOptions", "ExtraHosts", "Sysctls", "ShmSize", "GroupAdd", "VolumesFrom",
    "VolumeDriver", "Links", "CpusetCpus", "CpusetMems", "MemorySwappiness", "UTSMode", "DeviceCgroupRules",
}


def empty(v: Any) -> bool:
    """The zero value of a Docker field: what a client sends for "not set"."""
    if v is None or v is False or v == 0 or v == "":
        return True
    if isinstance(v, list):
        return all(empty(x) for x in v)
    if isinstance(v, dict):
        return all(empty(x) for x in v.values())
    return False


# Fields whose "not set" is not their zero value (docker's CLI sends them so).
_NOT_SET = {"MemorySwappiness": -1}
# Maps whose keys carry the meaning ({"/scratch": ""} is a tmpfs): set as soon as they have a key.
_MAPS = {"Tmpfs", "Sysctls", "StorageOpt", "Volumes", "Annotations", "DriverOpts", "ExposedPorts"}


def _refuse_unmapped(obj: dict[str, Any], mapped: set[str], where: str) -> None:
    for k, v in obj.items():
        if k not in mapped and (bool(v) if k in _MAPS else not empty(v)) and _NOT_SET.get(k) != v:
            raise HTTPError(400, f"{where}.{k} is not supported by dockyard (got {v!r})")


def _strs(v: Any, field: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return shlex.split(v)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise HTTPError(400, f"{field} must be a list of strings (got {v!r})")
    return list(v)


def _str_list(v: Any, field: str) -> list[str]:
    """A JSON array of strings only (docker's []string, not its StrSlice that also takes one string)."""
    if v is not None and not isinstance(v, list):
        raise HTTPError(400, f"{field} must be a list of strings (got {v!r})")
    return _strs(v, field)


def _int(v: Any, field: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise HTTPError(400, f"{field} must be an integer (got {v!r})")
    return v


def _bool(v: Any, field: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise HTTPError(400, f"{field} must be true or false (got {v!r})")
    return v


def _str(v: Any, field: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise HTTPError(400, f"{field} must be a string (got {v!r})")
    return v


def _ports(host: dict[str, Any], exposed: list[str]) -> list[Port]:
    out: list[Port] = []
    bindings = host.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise HTTPError(400, "HostConfig.PortBindings must be an object")
    for key, binds in bindings.items():
        cport, proto = _port_key(key)
        for b in binds or [{}]:
            hp = str((b or {}).get("HostPort") or "0")
            if "-" in hp:
                raise HTTPError(400, f"HostConfig.PortBindings {key}: host port ranges ({hp}) are not supported")
            try:
                host_port = int(hp)
            except ValueError:
                raise HTTPError(400, f"HostConfig.PortBindings {key}: invalid host port {hp!r}") from None
            out.append(Port(str((b or {}).get("HostIp") or ""), host_port, cport, proto))
    if host.get("PublishAllPorts"):
        bound = {(p.container_port, p.protocol) for p in out}
        for key in exposed:
            cport, proto = _port_key(key)
            if (cport, proto) not in bound:
                out.append(Port("", 0, cport, proto))
    return out


def _port_key(key: str) -> tuple[int, str]:
    num, _, proto = key.partition("/")
    proto = proto or "tcp"
    try:
        port = int(num)
    except ValueError:
        raise HTTPError(400, f"invalid port {key!r}: want PORT[/tcp|udp]") from None
    if proto not in ("tcp", "udp"):
        raise HTTPError(400, f"invalid port {key!r}: protocol {proto!r} is not supported (tcp or udp)")
    return port, proto


def _rates(v: Any, field: str) -> tuple[DeviceRate, ...]:
    out = []
    for d in v or []:
        if not isinstance(d, dict) or "Path" not in d:
            raise HTTPError(400, f"HostConfig.{field}: each entry needs Path and Rate (got {d!r})")
        out.append(DeviceRate(str(d["Path"]), _int(d.get("Rate"), f"HostConfig.{field}.Rate")))
    return tuple(out)


def _devices(v: Any) -> list[DeviceMapping]:
    out = []
    for d in v or []:
        if not isinstance(d, dict) or not d.get("PathOnHost"):
            raise HTTPError(400, f"HostConfig.Devices: each entry needs PathOnHost (got {d!r})")
        out.append(DeviceMapping(_str(d["PathOnHost"], "HostConfig.Devices.PathOnHost"),
                                 _str(d.get("PathInContainer"), "HostConfig.Devices.PathInContainer"),
                                 _str(d.get("CgroupPermissions"), "HostConfig.Devices.CgroupPermissions") or "rwm"))
    return out


def _mounts(body: dict[str, Any], host: dict[str, Any]) -> list[Mount]:
    """Binds (-v's text), Mounts (--mount's objects), Tmpfs ({path: options}) and Config.Volumes
    (anonymous volumes where no other mount is) -> the agent's mounts, parsed by the CLI's parsers."""
    out: list[Mount] = []
    try:
        binds = host.get("Binds")
        if isinstance(binds, str):
            raise HTTPError(400, "HostConfig.Binds must be a list of SOURCE:TARGET[:MODE] strings")
        for spec in _strs(binds, "HostConfig.Binds"):
            out.append(mount_specs.parse_volume(spec))
        for i, obj in enumerate(host.get("Mounts") or []):
            out.append(_mount_obj(obj, f"HostConfig.Mounts[{i}]"))
        tmpfs = host.get("Tmpfs") or {}
        if not isinstance(tmpfs, dict) or not all(isinstance(v, str) for v in tmpfs.values()):
            raise HTTPError(400, "HostConfig.Tmpfs must be an object of path: options strings")
        for path, opts in tmpfs.items():
            out.append(mount_specs.parse_tmpfs(f"{path}:{opts}" if opts else path))
    except InvalidArgument as e:
        raise HTTPError(400, str(e)) from None
    volumes = body.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise HTTPError(400, "Config.Volumes must be an object of paths")
    driver = _str(host.get("VolumeDriver"), "HostConfig.VolumeDriver")
    if driver not in ("", "local"):
        raise HTTPError(400, f"HostConfig.VolumeDriver {driver!r}: volume plugin not found (only local)")
    covered = {os.path.normpath(m.target) for m in out if m.target}
    for path in volumes:
        if os.path.normpath(path) not in covered:
            out.append(Mount(type="volume", target=path, anonymous=True))
    return out


def _mount_obj(obj: Any, where: str) -> Mount:
    """One of HostConfig.Mounts: {Type, Source, Target, ReadOnly, BindOptions, VolumeOptions, TmpfsOptions}."""
    if not isinstance(obj, dict):
        raise HTTPError(400, f"{where} must be an object")
    known = {"Type", "Source", "Target", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions"}
    for k, v in obj.items():
        if k not in known and not empty(v):
            raise HTTPError(400, f"{where}.{k} is not supported by dockyard (got {v!r})")
    kind = _str(obj.get("Type"), f"{where}.Type") or "volume"
    if kind not in ("volume", "bind", "tmpfs"):
        raise HTTPError(400, f"{where}.Type {kind!r}: mount type unknown (volume, bind or tmpfs; "
                             "npipe and cluster are not supported)")
    if (obj.get("Consistency") or "default") not in ("default", "consistent", "cached", "delegated"):
        raise HTTPError(400, f"{where}.Consistency {obj['Consistency']!r}: unknown")
    m = Mount(type=kind, source=_str(obj.get("Source"), f"{where}.Source"),
              target=_str(obj.get("Target"), f"{where}.Target"), readonly=_bool(obj.get("ReadOnly"), f"{where}.ReadOnly"),
              origin="--mount")
    for key, allowed in (("BindOptions", {"Propagation"}), ("VolumeOptions", {"NoCopy", "Labels", "DriverConfig"}),
                         ("TmpfsOptions", {"SizeBytes", "Mode"})):
        opts = obj.get(key) or {}
        if not isinstance(opts, dict):
            raise HTTPError(400, f"{where}.{key} must be an object")
        for k, v in opts.items():
            if k not in allowed and not empty(v):
                raise HTTPError(400, f"{where}.{key}.{k} is not supported by dockyard (got {v!r})")
        if opts and not empty(opts) and key.lower() != kind + "options":
            raise HTTPError(400, f"{where}.{key} does not apply to a {kind} mount")
    m.propagation = _str((obj.get("BindOptions") or {}).get("Propagation"), f"{where}.BindOptions.Propagation")
    vo = obj.get("VolumeOptions") or {}
    m.nocopy = _bool(vo.get("NoCopy"), f"{where}.VolumeOptions.NoCopy")
    m.volume_labels = _str_map(vo.get("Labels"), f"{where}.VolumeOptions.Labels")
    dc = vo.get("DriverConfig") or {}
    m.volume_driver = _str(dc.get("Name"), f"{where}.VolumeOptions.DriverConfig.Name")
    m.volume_options = _str_map(dc.get("Options"), f"{where}.VolumeOptions.DriverConfig.Options")
    if m.type == "volume" and not m.source:
        m.anonymous = True
    if m.type == "tmpfs":
        to = obj.get("TmpfsOptions") or {}
        m.tmpfs_options = list(mount_specs.TMPFS_DEFAULT_FLAGS)
        size = _int(to.get("SizeBytes"), f"{where}.TmpfsOptions.SizeBytes")
        mode = _int(to.get("Mode"), f"{where}.TmpfsOptions.Mode")
        if size < 0:
            raise HTTPError(400, f"{where}.TmpfsOptions.SizeBytes must not be negative")
        if size:
            m.tmpfs_options.append(f"size={size}")
        if mode:
            m.tmpfs_options.append(f"mode={mode:o}")
    return m


def _endpoint(body: dict[str, Any], net: str) -> tuple[list[str], list[str], str, list[NetworkAttachment]]:
    """NetworkingConfig.EndpointsConfig: the container's own network (its NetworkMode), its Aliases
    and Links, and the further user networks it joins at create (API 1.44: several at once)."""
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    if not isinstance(endpoints, dict):
        raise HTTPError(400, "NetworkingConfig.EndpointsConfig must be an object")
    aliases: list[str] = []
    links: list[str] = []
    ip = ""
    more: list[NetworkAttachment] = []
    for netname, ep in endpoints.items():
        where = f"NetworkingConfig.EndpointsConfig.{netname}"
        first = netname in (net, "default") or (net == "bridge" and netname == "bridge")
        if not first and netname in ("bridge", "host", "none", "default"):
            raise HTTPError(400, f"{where}: a further network must be a user-defined one (NetworkMode is {net})")
        a = NetworkAttachment(netname)
        for k, v in (ep or {}).items():
            if k == "Aliases":
                (aliases if first else a.aliases).extend(_strs(v, f"{where}.{k}"))
            elif k == "Links" and first:
                links.extend(_strs(v, f"{where}.{k}"))
            elif k == "IPAMConfig" and v:
                if first:
                    ip = ipam_address(v, where)
                else:
                    a.ipv4_address = ipam_address(v, where)
            elif k not in ("NetworkID", "EndpointID") and not empty(v):
                raise HTTPError(400, f"{where}.{k} is not supported by dockyard (got {v!r})")
        if not first:
            more.append(a)
    return aliases, links, ip, more


def ipam_address(v: Any, where: str) -> str:
    """An endpoint's IPAMConfig: IPv4Address only (dockyard's bridges are IPv4; no link-local extras)."""
    if not isinstance(v, dict):
        raise HTTPError(400, f"{where}.IPAMConfig must be an object")
    for k, x in v.items():
        if k != "IPv4Address" and not empty(x):
            raise HTTPError(400, f"{where}.IPAMConfig.{k} is not supported by dockyard (got {x!r})")
    return _str(v.get("IPv4Address"), f"{where}.IPAMConfig.IPv4Address")


def _link(v: str) -> str:
    """docker's link forms: NAME, NAME:ALIAS and the daemon's own /NAME:/THIS/ALIAS."""
    name, _, alias = v.partition(":")
    return name.lstrip("/") + (":" + alias.rsplit("/", 1)[-1] if alias else "")


def _str_map(v: Any, field: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise HTTPError(400, f"{field} must be an object of strings (got {v!r})")
    return dict(v)


def _ulimits(v: Any) -> list[Ulimit]:
    out = []
    for u in v or []:
        if not isinstance(u, dict) or not isinstance(u.get("Name"), str):
            raise HTTPError(400, f"HostConfig.Ulimits: each entry needs Name, Soft and Hard (got {u!r})")
        soft = _int(u.get("Soft"), f"HostConfig.Ulimits.{u['Name']}.Soft")
        out.append(Ulimit(u["Name"], soft, _int(u["Hard"], f"HostConfig.Ulimits.{u['Name']}.Hard")
                          if u.get("Hard") is not None else soft))
    return out


def _groups(v: Any) -> list[str]:
    """GroupAdd: names or numbers (docker-py sends numbers as strings, other clients as numbers)."""
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in v):
        raise HTTPError(400, f"HostConfig.GroupAdd must be a list of group names or numbers (got {v!r})")
    return [str(g) for g in v]


NS = 1_000_000_000


def _healthcheck(v: Any) -> HealthCheck | None:
    """Config.Healthcheck: Test (["NONE"] | ["CMD", ...] | ["CMD-SHELL", cmd]), durations in ns."""
    if v is None or empty(v):
        return None
    if not isinstance(v, dict):
        raise HTTPError(400, "Config.Healthcheck must be an object")
    test = v.get("Test") or []
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    test = _strs(test, "Config.Healthcheck.Test")
    if not test or test[0] not in ("NONE", "CMD", "CMD-SHELL") or (test[0] != "NONE" and len(test) < 2):
        raise HTTPError(400, f"Config.Healthcheck.Test: want [\"NONE\"], [\"CMD\", ...] or "
                             f"[\"CMD-SHELL\", command] (got {test!r})")
    for k in v:
        if k not in ("Test", "Interval", "Timeout", "Retries", "StartPeriod", "StartInterval"):
            raise HTTPError(400, f"Config.Healthcheck.{k} is not supported by dockyard")
    if not empty(v.get("StartInterval")):
        raise HTTPError(400, "Config.Healthcheck.StartInterval is not supported by dockyard")
    for k in ("Interval", "Timeout", "StartPeriod"):
        n = _int(v.get(k), f"Config.Healthcheck.{k}")
        if n and n < NS // 1000:
            raise HTTPError(400, f"Config.Healthcheck.{k} in nanoseconds must be at least 1ms (got {n})")
    def secs(k: str, default: float) -> float:
        n = _int(v.get(k), f"Config.Healthcheck.{k}")
        return n / NS if n else default

    retries = _int(v.get("Retries"), "Config.Healthcheck.Retries")
    if retries < 0:
        raise HTTPError(400, "Config.Healthcheck.Retries must not be negative")
    return HealthCheck(test=test, interval=secs("Interval", 30.0), timeout=secs("Timeout", 30.0),
                       retries=retries or 3, start_period=secs("StartPeriod", 0.0))


def health_json(hc: HealthCheck) -> dict[str, Any]:
    return {"Test": list(hc.test), "Interval": round(hc.interval * NS), "Timeout": round(hc.timeout * NS),
            "Retries": hc.retries, "StartPeriod": round(hc.start_period * NS)}


def config_from_docker(body: Any, name: str) -> tuple[ContainerConfig, tuple[int, int] | None]:
    """A create body -> (ContainerConfig, the terminal's initial (rows, cols) if given)."""
    if not isinstance(body, dict):
        raise HTTPError(400, "the create body must be a JSON object")
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise HTTPError(400, "HostConfig must be an object")
    _refuse_unmapped(body, _CONFIG_MAPPED, "Config")
    _refuse_unmapped(host, _HOST_MAPPED, "HostConfig")
    if not body.get("Image"):
        raise HTTPError(400, "Config.Image is required")

    log = host.get("LogConfig") or {}
    log_config = LogConfig(_str(log.get("Type"), "HostConfig.LogConfig.Type"),
                           _str_map(log.get("Config") or None, "HostConfig.LogConfig.Config"))
    if log_config.type and log_config.type not in logs.DRIVERS:   # clients parse docker's own text
        raise HTTPError(400, f"logger: no log driver named '{log_config.type}' is registered")
    try:   # (the agent's one check, agent/logs.py; the agent's default options may complete these)
        logs.rotation(log_config, complete=False)
    except InvalidArgument as bad:
        raise HTTPError(400, f"HostConfig.LogConfig: {bad}") from None
    if (host.get("Isolation") or "default") != "default":
        raise HTTPError(400, f"HostConfig.Isolation {host['Isolation']!r} is not supported (only default)")

    entry_raw = body.get("Entrypoint")
    entrypoint = _strs(entry_raw, "Config.Entrypoint")
    if entrypoint == [""]:
        entrypoint = []
    exposed = sorted((body.get("ExposedPorts") or {}).keys())
    for key in exposed:
        _port_key(key)
    rp = host.get("RestartPolicy") or {}
    env = _strs(body.get("Env"), "Config.Env")
    for e in env:
        if not e or e.startswith("="):
            raise HTTPError(400, f"invalid environment variable: {e!r}")
    net = _str(host.get("NetworkMode"), "HostConfig.NetworkMode") or "bridge"
    if net == "default":
        net = "bridge"
    aliases, links, ipv4, more = _endpoint(body, net)
    links += _strs(host.get("Links"), "HostConfig.Links")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise HTTPError(400, "Config.Labels must be an object of strings")
    pids = host.get("PidsLimit")
    cfg = ContainerConfig(
        name=name,
        image=_str(body.get("Image"), "Config.Image"),
        cmd=_strs(body.get("Cmd"), "Config.Cmd"),
        entrypoint=entrypoint,
        entrypoint_set=entry_raw is not None,
        env=env,
        workdir=_str(body.get("WorkingDir"), "Config.WorkingDir"),
        user=_str(body.get("User"), "Config.User"),
        hostname=_str(body.get("Hostname"), "Config.Hostname"),
        tty=_bool(body.get("Tty"), "Config.Tty"),
        open_stdin=_bool(body.get("OpenStdin"), "Config.OpenStdin"),
        stdin_once=_bool(body.get("StdinOnce"), "Config.StdinOnce"),
        labels=dict(labels),
        ports=_ports(host, exposed),
        exposed_ports=exposed,
        resources=Resources(
            memory=_int(host.get("Memory"), "HostConfig.Memory"),
            memory_swap=_int(host.get("MemorySwap"), "HostConfig.MemorySwap"),
            nano_cpus=_int(host.get("NanoCpus"), "HostConfig.NanoCpus"),
            cpu_shares=_int(host.get("CpuShares"), "HostConfig.CpuShares"),
            pids_limit=0 if pids is None or pids < 0 else _int(pids, "HostConfig.PidsLimit"),
            blkio_weight=_int(host.get("BlkioWeight"), "HostConfig.BlkioWeight"),
            device_read_bps=_rates(host.get("BlkioDeviceReadBps"), "BlkioDeviceReadBps"),
            device_write_bps=_rates(host.get("BlkioDeviceWriteBps"), "BlkioDeviceWriteBps"),
            cpuset_cpus=_str(host.get("CpusetCpus"), "HostConfig.CpusetCpus"),
            cpuset_mems=_str(host.get("CpusetMems"), "HostConfig.CpusetMems"),
            memory_swappiness=-1 if host.get("MemorySwappiness") is None
            else _int(host.get("MemorySwappiness"), "HostConfig.MemorySwappiness"),
        ),
        network_mode=net,
        pid_mode=_str(host.get("PidMode"), "HostConfig.PidMode"),
        ipc_mode=_str(host.get("IpcMode"), "HostConfig.IpcMode"),
        userns_mode=_str(host.get("UsernsMode"), "HostConfig.UsernsMode"),
        restart_policy=RestartPolicy(_str(rp.get("Name"), "HostConfig.RestartPolicy.Name") or "no",
                                     _int(rp.get("MaximumRetryCount"), "HostConfig.RestartPolicy.MaximumRetryCount")),
        auto_remove=_bool(host.get("AutoRemove"), "HostConfig.AutoRemove"),
        init=_bool(host.get("Init"), "HostConfig.Init"),
        stop_timeout=_int(body.get("StopTimeout"), "Config.StopTimeout"),
        stop_signal=_str(body.get("StopSignal"), "Config.StopSignal"),
        security_opt=_strs(host.get("SecurityOpt"), "HostConfig.SecurityOpt"),
        devices=_devices(host.get("Devices")),
        privileged=_bool(host.get("Privileged"), "HostConfig.Privileged"),
        healthcheck=_healthcheck(body.get("Healthcheck")),
        mounts=_mounts(body, host),
        read_only=_bool(host.get("ReadonlyRootfs"), "HostConfig.ReadonlyRootfs"),
        cap_add=_strs(host.get("CapAdd"), "HostConfig.CapAdd"),
        cap_drop=_strs(host.get("CapDrop"), "HostConfig.CapDrop"),
        ulimits=_ulimits(host.get("Ulimits")),
        dns=_strs(host.get("Dns"), "HostConfig.Dns"),
        dns_search=_strs(host.get("DnsSearch"), "HostConfig.DnsSearch"),
        dns_options=_strs(host.get("DnsOptions"), "HostConfig.DnsOptions"),
        extra_hosts=_strs(host.get("ExtraHosts"), "HostConfig.ExtraHosts"),
        sysctls=_str_map(host.get("Sysctls"), "HostConfig.Sysctls"),
        shm_size=_int(host.get("ShmSize"), "HostConfig.ShmSize"),
        group_add=_groups(host.get("GroupAdd")),
        volumes_from=_strs(host.get("VolumesFrom"), "HostConfig.VolumesFrom"),
        log_config=log_config,
        network_aliases=aliases,
        ipv4_address=ipv4, networks=more,
        links=[_link(x) for x in links],
        cgroupns_mode=_str(host.get("CgroupnsMode"), "HostConfig.CgroupnsMode"),
        uts_mode=_str(host.get("UTSMode"), "HostConfig.UTSMode"),
        device_cgroup_rules=_str_list(host.get("DeviceCgroupRules"), "HostConfig.DeviceCgroupRules"),
    )
    size = host.get("ConsoleSize")
    console = None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size):
        console = (size[0], size[1])
    return cfg, console


# --- out --------------------------------------------------------------------------------------

def iso(t: float) -> str:
    if not t:
        return "0001-01-01T00:00:00Z"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _port_map(c: Container) -> dict[str, list[dict[str, str]] | None]:
    ports: dict[str, list[dict[str, str]] | None] = {k: None for k in c.config.exposed_ports}
    if c.state.status in ("running", "paused"):
        for p in c.ports:
            lst = ports.get(f"{p.container_port}/{p.protocol}") or []
            lst.append({"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
            ports[f"{p.container_port}/{p.protocol}"] = lst
    return ports


def _bindings(cfg: ContainerConfig) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for p in cfg.ports:
        out.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""})
    return out


def endpoint_json(c: Container, version: str = "1.45", network: str = "") -> dict[str, Any]:
    """NetworkSettings.Networks[network] of a container (its first network by default): its
    address there, its aliases and the names other containers find it by (at API <= 1.44 docker
    lists the short id among the aliases too, and docker-compose 1.29 relies on it)."""
    from agent.netattach import attached, attachment

    network = network or _netname(c)
    a = attachment(c, network)
    ep = attached(c).get(network) or {}
    user = network not in ("", "bridge", "default", "host", "none")
    aliases = list(a.aliases if a is not None else c.config.network_aliases)
    ip = a.ipv4_address if a is not None else c.config.ipv4_address
    names = list(aliases)
    if user and tuple(int(x) for x in version.split(".")) <= (1, 44):
        aliases.append(c.id[:12])
    return {
        "IPAMConfig": {"IPv4Address": ip} if ip else None,
        "Links": list(c.config.links) or None if a is None else None, "Aliases": aliases or None,
        "MacAddress": ep.get("mac", ""), "NetworkID": "", "EndpointID": c.id if ep else "",
        "Gateway": ep.get("gateway", ""), "IPAddress": ep.get("ip", ""), "IPPrefixLen": int(ep.get("prefixlen", 0) or 0),
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DriverOpts": None,
        "DNSNames": [c.name, c.id[:12], *names] if user else None,
    }


def networks_json(c: Container, version: str = "1.45") -> dict[str, Any]:
    """NetworkSettings.Networks: every network of the container, its first one first."""
    from agent.netattach import networks_of

    return {n: endpoint_json(c, version, n) for n in networks_of(c) or [_netname(c)]}


def _netname(c: Container) -> str:
    return c.config.network_mode if c.config.network_mode not in ("", "default") else "bridge"


def status_text(c: Container, now: float | None = None, health: str = "") -> str:
    """`docker ps`'s STATUS: "Up 5 minutes (healthy)", "Exited (0) 2 seconds ago", "Created"."""
    s = c.state
    now = now or time.time()
    if s.status in ("running", "paused"):
        text = "Up " + human_duration(now - s.started_at)
        if s.status == "paused":
            return text + " (Paused)"
        return text + (f" (health: {health})" if health == "starting" else f" ({health})" if health else "")
    if s.status == "restarting":
        return f"Restarting ({s.exit_code}) {human_duration(now - s.finished_at)} ago"
    if s.status == "exited" or s.finished_at:
        return f"Exited ({s.exit_code}) {human_duration(now - s.finished_at)} ago"
    return "Created"


def command_of(c: Container) -> str:
    return " ".join(shlex.quote(a) if " " in a else a for a in c.args)


def summary(c: Container, size: tuple[int, int] | None = None, health: str = "",
            mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row of GET /containers/json."""
    ports = []
    if c.state.status in ("running", "paused"):
        for p in c.ports:
            ports.append({"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port,
                          "PublicPort": p.host_port, "Type": p.protocol})
    seen = {(p["PrivatePort"], p["Type"]) for p in ports}
    for key in c.config.exposed_ports:
        cport, proto = _port_key(key)
        if (cport, proto) not in seen:
            ports.append({"PrivatePort": cport, "Type": proto})
    row: dict[str, Any] = {
        "Id": c.id, "Names": ["/" + c.name], "Image": c.image_ref, "ImageID": c.image_id,
        "Command": command_of(c), "Created": int(c.created), "Ports": ports, "Labels": c.config.labels,
        "State": c.state.status, "Status": status_text(c, health=health),
        "HostConfig": {"NetworkMode": c.config.network_mode},
        "NetworkSettings": {"Networks": networks_json(c)},
        "Mounts": mounts or [],
    }
    if size is not None:
        row["SizeRw"], row["SizeRootFs"] = size
    return row


def inspect(c: Container, log_path: str, image_config: Any, health: Any = None,
            mounts: list[dict[str, Any]] | None = None, version: str = "1.45") -> dict[str, Any]:
    """GET /containers/{id}/json: Docker's keys, with Docker's defaults where dockyard has no such
    thing. mounts: the manager's mounts.info (docker's top-level Mounts)."""
    s, cfg = c.state, c.config
    given = mount_specs.docker_spelling(cfg.mounts)
    r = cfg.resources
    env = list(image_config.env or []) if image_config is not None else []
    keys = {e.partition("=")[0] for e in cfg.env}
    env = [e for e in env if e.partition("=")[0] not in keys] + list(cfg.env)
    img_labels = dict(getattr(image_config, "labels", None) or {})
    state_health = None
    if health is not None:
        state_health = {"Status": health.status, "FailingStreak": health.failing_streak, "Log": [
            {"Start": iso(p.start), "End": iso(p.end), "ExitCode": p.exit_code, "Output": p.output}
            for p in health.log]}
    return {
        "Id": c.id,
        "Created": iso(c.created),
        "Path": c.args[0] if c.args else "",
        "Args": c.args[1:],
        "State": {
            "Status": s.status, "Running": s.status in ("running", "paused"), "Paused": s.status == "paused",
            "Restarting": s.status == "restarting", "OOMKilled": s.oom_killed, "Dead": s.status == "dead",
            "Pid": s.pid, "ExitCode": s.exit_code, "Error": s.error, "StartedAt": iso(s.started_at),
            "FinishedAt": iso(s.finished_at), **({"Health": state_health} if state_health else {}),
        },
        "Image": c.image_id,
        "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "",
        "LogPath": log_path,
        "Name": "/" + c.name,
        "RestartCount": s.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": {
            "Binds": given["Binds"], "Mounts": given["Mounts"], "Tmpfs": given["Tmpfs"], "ContainerIDFile": "",
            "LogConfig": {"Type": cfg.log_config.type or "json-file", "Config": dict(cfg.log_config.config)},
            "NetworkMode": cfg.network_mode,
            "PortBindings": _bindings(cfg),
            "RestartPolicy": {"Name": cfg.restart_policy.name or "no",
                              "MaximumRetryCount": cfg.restart_policy.max_retries},
            "AutoRemove": cfg.auto_remove, "VolumeDriver": "", "VolumesFrom": list(cfg.volumes_from) or None,
            "ConsoleSize": [0, 0], "CapAdd": list(cfg.cap_add) or None, "CapDrop": list(cfg.cap_drop) or None,
            "CgroupnsMode": cfg.cgroupns_mode or "host", "Dns": list(cfg.dns), "DnsOptions": list(cfg.dns_options),
            "DnsSearch": list(cfg.dns_search), "ExtraHosts": list(cfg.extra_hosts) or None,
            "GroupAdd": list(cfg.group_add) or None, "Sysctls": dict(cfg.sysctls) or None,
            "IpcMode": cfg.ipc_mode or "private", "Cgroup": "",
            "Links": [f"/{x.partition(':')[0]}:/{c.name}/{x.partition(':')[2] or x.partition(':')[0]}"
                      for x in cfg.links] or None, "OomScoreAdj": 0,
            "PidMode": cfg.pid_mode, "Privileged": cfg.privileged, "PublishAllPorts": False,
            "ReadonlyRootfs": cfg.read_only, "SecurityOpt": list(cfg.security_opt) or None, "UTSMode": cfg.uts_mode,
            "UsernsMode": cfg.userns_mode, "ShmSize": cfg.shm_size or 64 << 20, "Runtime": "dockyard",
            "Isolation": "",
            "CpuShares": r.cpu_shares, "Memory": r.memory, "NanoCpus": r.nano_cpus, "CgroupParent": "",
            "BlkioWeight": r.blkio_weight, "BlkioWeightDevice": [],
            "BlkioDeviceReadBps": [{"Path": d.path, "Rate": d.rate} for d in r.device_read_bps],
            "BlkioDeviceWriteBps": [{"Path": d.path, "Rate": d.rate} for d in r.device_write_bps],
            "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0,
            "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": r.cpuset_cpus, "CpusetMems": r.cpuset_mems,
            "Devices": [{"PathOnHost": d.path_on_host, "PathInContainer": d.path_in_container or d.path_on_host,
                         "CgroupPermissions": d.permissions} for d in cfg.devices],
            "DeviceCgroupRules": list(cfg.device_cgroup_rules) or None, "DeviceRequests": None, "MemoryReservation": 0,
            "MemorySwap": r.memory_swap, "MemorySwappiness": None if r.memory_swappiness == -1 else r.memory_swappiness, "OomKillDisable": False,
            "PidsLimit": r.pids_limit or None,
            "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in cfg.ulimits] or None,
            "CpuCount": 0, "CpuPercent": 0,
            "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "Init": cfg.init or None,
            "MaskedPaths": None, "ReadonlyPaths": None,
        },
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "Mounts": mounts or [],
        "Config": {
            "Hostname": cfg.hostname or c.id[:12], "Domainname": "", "User": cfg.user,
            "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
            **({"ExposedPorts": {k: {} for k in cfg.exposed_ports}} if cfg.exposed_ports else {}),
            "Tty": cfg.tty, "OpenStdin": cfg.open_stdin, "StdinOnce": cfg.stdin_once,
            "Env": env, "Cmd": c.args[len(cfg.entrypoint if cfg.entrypoint_set else
                                        (image_config.entrypoint or [] if image_config else [])):] or None,
            "Image": c.image_ref, "Volumes": {m.target: {} for m in cfg.mounts if m.anonymous} or None,
            "WorkingDir": cfg.workdir or (image_config.workdir if image_config else "") or "",
            "Entrypoint": (cfg.entrypoint if cfg.entrypoint_set else
                           (list(image_config.entrypoint or []) if image_config else [])) or None,
            "OnBuild": None, "Labels": {**img_labels, **cfg.labels},
            **({"StopSignal": cfg.stop_signal} if cfg.stop_signal else {}),
            **({"StopTimeout": cfg.stop_timeout} if cfg.stop_timeout else {}),
            **({"Healthcheck": health_json(cfg.healthcheck)} if cfg.healthcheck else {}),
        },
        "NetworkSettings": {
            "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": False,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "Ports": _port_map(c),
            "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
            "EndpointID": c.id if c.endpoint else "", "Gateway": (c.endpoint or {}).get("gateway", ""),
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": c.ip_address,
            "IPPrefixLen": int((c.endpoint or {}).get("prefixlen", 0) or 0), "IPv6Gateway": "",
            "MacAddress": (c.endpoint or {}).get("mac", ""),
            "Networks": networks_json(c, version),
        },
    }


def _old(version: str) -> bool:
    """Before API 1.44, which dropped VirtualSize (the same as Size since 1.43)."""
    major, _, minor = version.partition(".")
    return (int(major), int(minor)) < (1, 44)


def image_summary(i: Any, containers: int, version: str = "1.45") -> dict[str, Any]:
    return {
        "Id": i.id, "ParentId": "", "RepoTags": list(i.repo_tags), "RepoDigests": list(i.repo_digests),
        "Created": int(i.created), "Size": i.size, "SharedSize": -1,
        **({"VirtualSize": i.size} if _old(version) else {}),
        "Labels": dict(i.config.labels or {}) or None, "Containers": containers,
    }


def image_inspect(i: Any, parent: str, version: str = "1.45") -> dict[str, Any]:
    oci = i.config.to_oci() if hasattr(i.config, "to_oci") else {}
    config = {
        "Hostname": "", "Domainname": "", "User": oci.get("User", ""), "AttachStdin": False,
        "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "Env": oci.get("Env"), "Cmd": oci.get("Cmd"), "Image": "", "Volumes": oci.get("Volumes"),
        "WorkingDir": oci.get("WorkingDir", ""), "Entrypoint": oci.get("Entrypoint"), "OnBuild": oci.get("OnBuild"),
        "Labels": oci.get("Labels"),
        **({"ExposedPorts": oci["ExposedPorts"]} if oci.get("ExposedPorts") else {}),
        **({"StopSignal": oci["StopSignal"]} if oci.get("StopSignal") else {}),
    }
    return {
        "Id": i.id, "RepoTags": list(i.repo_tags), "RepoDigests": list(i.repo_digests), "Parent": parent,
        "Comment": "", "Created": iso(i.created), "DockerVersion": "", "Author": "",
        "Config": config, "Architecture": i.architecture, "Os": i.os, "Size": i.size,
        **({"VirtualSize": i.size} if _old(version) else {}),
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(i.diff_ids)},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        # (a committed image's origin, as docker records it; API 1.45 dropped them for others)
        **({"Container": i.container, "ContainerConfig": i.container_config} if getattr(i, "container", "") else {}),
    }
