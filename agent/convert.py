"""protobuf <-> the agent's dataclasses. Nothing past this module and server.py sees *_pb2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agent import attachsession
from agent.model import (
    Container,
    ContainerConfig,
    DeviceRate,
    HealthCheck,
    LogConfig,
    Mount,
    Overlay,
    Port,
    Resources,
    RestartPolicy,
    TaskFile,
    Ulimit,
)
from agent.runtime.spec import ProcessSpec
from agent.volumes.specs import docker_spelling, from_flags
from common.devices import DeviceMapping
from protos import agent_pb2 as pb


def resources_from_pb(r: pb.Resources) -> Resources:
    return Resources(
        memory=r.memory, memory_swap=r.memory_swap, nano_cpus=r.nano_cpus, cpu_shares=r.cpu_shares,
        pids_limit=r.pids_limit, blkio_weight=r.blkio_weight,
        device_read_bps=tuple(DeviceRate(d.path, d.rate) for d in r.device_read_bps),
        device_write_bps=tuple(DeviceRate(d.path, d.rate) for d in r.device_write_bps),
        cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
        memory_swappiness=r.memory_swappiness if r.HasField("memory_swappiness") else -1,
    )


def resources_to_pb(r: Resources) -> pb.Resources:
    return pb.Resources(
        memory=r.memory, memory_swap=r.memory_swap, nano_cpus=r.nano_cpus, cpu_shares=r.cpu_shares,
        pids_limit=r.pids_limit, blkio_weight=r.blkio_weight,
        device_read_bps=[pb.DeviceRate(path=d.path, rate=d.rate) for d in r.device_read_bps],
        device_write_bps=[pb.DeviceRate(path=d.path, rate=d.rate) for d in r.device_write_bps],
        cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
        memory_swappiness=None if r.memory_swappiness == -1 else r.memory_swappiness,
    )


def config_from_pb(m: pb.ContainerConfig) -> ContainerConfig:
    return ContainerConfig(
        name=m.name, image=m.image, cmd=list(m.cmd), entrypoint=list(m.entrypoint),
        entrypoint_set=m.entrypoint_set, env=list(m.env), workdir=m.workdir, user=m.user,
        hostname=m.hostname, tty=m.tty, open_stdin=m.open_stdin, labels=dict(m.labels),
        ports=[Port(p.host_ip, p.host_port, p.container_port, p.protocol or "tcp") for p in m.ports],
        resources=resources_from_pb(m.resources),
        network_mode=m.network_mode or "bridge", pid_mode=m.pid_mode, ipc_mode=m.ipc_mode,
        userns_mode=m.userns_mode,
        restart_policy=restart_policy_from_pb(m.restart_policy),
        auto_remove=m.auto_remove, init=m.init, stop_timeout=m.stop_timeout, stop_signal=m.stop_signal,
        security_opt=list(m.security_opt),
        devices=[DeviceMapping(d.path_on_host, d.path_in_container, d.permissions or "rwm") for d in m.devices],
        privileged=m.privileged,
        overlays=[Overlay(o.network, o.vni, o.subnet, o.ip, o.mac, o.mtu, o.internal) for o in m.overlays],
        mounts=[*(mount_from_pb(x) for x in m.mounts),
                *from_flags(list(m.volume_flags), list(m.mount_flags), list(m.tmpfs_flags))],
        read_only=m.read_only,
        cap_add=list(m.cap_add), cap_drop=list(m.cap_drop),
        ulimits=[Ulimit(u.name, u.soft, u.hard) for u in m.ulimits], dns=list(m.dns), dns_search=list(m.dns_search),
        dns_options=list(m.dns_options), extra_hosts=list(m.extra_hosts), sysctls=dict(m.sysctls),
        shm_size=m.shm_size, group_add=list(m.group_add),
        healthcheck=HealthCheck(list(m.healthcheck.test), m.healthcheck.interval, m.healthcheck.timeout,
                                m.healthcheck.retries, m.healthcheck.start_period, m.healthcheck.start_interval)
        if m.HasField("healthcheck") else None,
        log_config=LogConfig(m.log_config.type, dict(m.log_config.config)),
        task_files=[TaskFile(f.kind, f.name, f.target, f.uid, f.gid, f.mode) for f in m.task_files],
        cgroupns_mode=m.cgroupns_mode, uts_mode=m.uts_mode, device_cgroup_rules=list(m.device_cgroup_rules),
    )


def mount_from_pb(m: pb.Mount) -> Mount:
    return Mount(type=m.type or "volume", source=m.source, target=m.target, readonly=m.readonly,
                 propagation=m.propagation, selinux=m.selinux, nocopy=m.nocopy, create_source=m.create_source,
                 anonymous=m.anonymous, tmpfs_options=list(m.tmpfs_options), volume_driver=m.volume_driver,
                 volume_labels=dict(m.volume_labels), volume_options=dict(m.volume_options), external=m.external,
                 origin=m.origin, spec=m.spec)


def mount_to_pb(m: Mount) -> pb.Mount:
    return pb.Mount(type=m.type, source=m.source, target=m.target, readonly=m.readonly, propagation=m.propagation,
                    selinux=m.selinux, nocopy=m.nocopy, create_source=m.create_source, anonymous=m.anonymous,
                    tmpfs_options=m.tmpfs_options, volume_driver=m.volume_driver, volume_labels=m.volume_labels,
                    volume_options=m.volume_options, external=m.external, origin=m.origin, spec=m.spec)


def restart_policy_from_pb(p: pb.RestartPolicy) -> RestartPolicy:
    return RestartPolicy(p.name or "no", p.max_retries)


def config_to_pb(c: ContainerConfig) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        name=c.name, image=c.image, cmd=c.cmd, entrypoint=c.entrypoint, entrypoint_set=c.entrypoint_set,
        env=c.env, workdir=c.workdir, user=c.user, hostname=c.hostname, tty=c.tty,
        open_stdin=c.open_stdin, labels=c.labels, ports=[port_to_pb(p) for p in c.ports],
        resources=resources_to_pb(c.resources),
        network_mode=c.network_mode, pid_mode=c.pid_mode, ipc_mode=c.ipc_mode, userns_mode=c.userns_mode,
        restart_policy=pb.RestartPolicy(name=c.restart_policy.name, max_retries=c.restart_policy.max_retries),
        auto_remove=c.auto_remove, init=c.init, stop_timeout=c.stop_timeout, stop_signal=c.stop_signal,
        security_opt=c.security_opt,
        devices=[pb.DeviceMapping(path_on_host=d.path_on_host, path_in_container=d.path_in_container,
                                  permissions=d.permissions) for d in c.devices],
        privileged=c.privileged,
        overlays=[pb.OverlayAttachment(network=o.network, vni=o.vni, subnet=o.subnet, ip=o.ip, mac=o.mac, mtu=o.mtu,
                                       internal=o.internal) for o in c.overlays],
        mounts=[mount_to_pb(x) for x in c.mounts], read_only=c.read_only,
        cap_add=c.cap_add, cap_drop=c.cap_drop,
        ulimits=[pb.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in c.ulimits], dns=c.dns,
        dns_search=c.dns_search, dns_options=c.dns_options, extra_hosts=c.extra_hosts, sysctls=c.sysctls,
        shm_size=c.shm_size, group_add=c.group_add,
        healthcheck=pb.HealthCheck(test=c.healthcheck.test, interval=c.healthcheck.interval,
                                   timeout=c.healthcheck.timeout, retries=c.healthcheck.retries,
                                   start_period=c.healthcheck.start_period,
                                   start_interval=c.healthcheck.start_interval) if c.healthcheck else None,
        log_config=pb.LogConfig(type=c.log_config.type, config=c.log_config.config),
        task_files=[pb.TaskFile(kind=f.kind, name=f.name, target=f.target, uid=f.uid, gid=f.gid, mode=f.mode)
                    for f in c.task_files],
        cgroupns_mode=c.cgroupns_mode, uts_mode=c.uts_mode, device_cgroup_rules=c.device_cgroup_rules,
    )


def port_to_pb(p: Port) -> pb.PortMapping:
    return pb.PortMapping(host_ip=p.host_ip, host_port=p.host_port, container_port=p.container_port,
                          protocol=p.protocol)


def summary(c: Container) -> pb.ContainerSummary:
    s = c.state
    return pb.ContainerSummary(
        id=c.id, name=c.name, image=c.image_ref, image_id=c.image_id, command=" ".join(c.args),
        created=c.created, state=s.status, exit_code=s.exit_code,
        ports=[port_to_pb(p) for p in c.ports] if s.status in ("running", "paused") else [],
        started_at=s.started_at, finished_at=s.finished_at, pid=s.pid, oom_killed=s.oom_killed,
        labels=c.config.labels, ip_address=c.ip_address, error=s.error, restart_count=s.restart_count,
        health=s.health if s.status in ("running", "paused") else "",
    )


def _iso(t: float) -> str:
    import datetime

    if not t:
        return "0001-01-01T00:00:00Z"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def inspect(c: Container, extra: dict[str, Any]) -> dict[str, Any]:
    """The shape of `docker inspect`, for the fields dockyard has."""
    s, cfg = c.state, c.config
    r = cfg.resources
    ports: dict[str, list[dict[str, str]] | None] = {}
    for p in c.ports:
        ports.setdefault(f"{p.container_port}/{p.protocol}", []).append(  # type: ignore[union-attr]
            {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
    return {
        "Id": c.id,
        "Created": _iso(c.created),
        "Path": c.args[0] if c.args else "",
        "Args": c.args[1:],
        "State": {
            "Status": s.status, "Running": s.status in ("running", "paused"), "Paused": s.status == "paused",
            "Restarting": s.status == "restarting", "OOMKilled": s.oom_killed, "Dead": s.status == "dead",
            "Pid": s.pid, "ExitCode": s.exit_code, "Error": s.error, "StartedAt": _iso(s.started_at),
            "FinishedAt": _iso(s.finished_at),
            **({"Health": {"Status": s.health, "FailingStreak": s.health_failing,
                           "Log": [{"Start": _iso(e["Start"]), "End": _iso(e["End"]), "ExitCode": e["ExitCode"],
                                    "Output": e["Output"]} for e in s.health_log]}}
               if s.health and s.status in ("running", "paused") else {}),
        },
        "Image": c.image_id,
        "Name": "/" + c.name,
        "RestartCount": s.restart_count,
        "HostConfig": {
            "Memory": r.memory, "MemorySwap": r.memory_swap, "NanoCpus": r.nano_cpus, "CpuShares": r.cpu_shares,
            "PidsLimit": r.pids_limit or None, "BlkioWeight": r.blkio_weight,
            "CpusetCpus": r.cpuset_cpus, "CpusetMems": r.cpuset_mems,
            "MemorySwappiness": None if r.memory_swappiness == -1 else r.memory_swappiness,
            "CgroupnsMode": cfg.cgroupns_mode or "host", "UTSMode": cfg.uts_mode,
            "DeviceCgroupRules": list(cfg.device_cgroup_rules) or None,
            "NetworkMode": cfg.network_mode, "PidMode": cfg.pid_mode, "IpcMode": cfg.ipc_mode or "private",
            "UsernsMode": cfg.userns_mode, "AutoRemove": cfg.auto_remove, "Init": cfg.init,
            "SecurityOpt": list(cfg.security_opt) or None,
            "ReadonlyRootfs": cfg.read_only,
            "LogConfig": {"Type": cfg.log_config.type or "json-file", "Config": dict(cfg.log_config.config)},
            "CapAdd": list(cfg.cap_add) or None, "CapDrop": list(cfg.cap_drop) or None,
            "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in cfg.ulimits] or None,
            "Dns": list(cfg.dns), "DnsSearch": list(cfg.dns_search), "DnsOptions": list(cfg.dns_options),
            "ExtraHosts": list(cfg.extra_hosts) or None, "Sysctls": dict(cfg.sysctls) or None,
            "ShmSize": cfg.shm_size or 64 << 20, "GroupAdd": list(cfg.group_add) or None,
            **docker_spelling(cfg.mounts),
            "Privileged": cfg.privileged,
            "Devices": [{"PathOnHost": d.path_on_host, "PathInContainer": d.path_in_container or d.path_on_host,
                         "CgroupPermissions": d.permissions} for d in cfg.devices] or None,
            "RestartPolicy": {"Name": cfg.restart_policy.name, "MaximumRetryCount": cfg.restart_policy.max_retries},
            "PortBindings": {f"{p.container_port}/{p.protocol}": [{"HostIp": p.host_ip, "HostPort": str(p.host_port or "")}]
                             for p in cfg.ports},
        },
        "Config": {
            "Hostname": cfg.hostname or c.id[:12], "User": cfg.user, "Tty": cfg.tty, "OpenStdin": cfg.open_stdin,
            "Env": cfg.env, "Cmd": cfg.cmd or None, "Entrypoint": cfg.entrypoint or None, "Image": c.image_ref,
            "WorkingDir": cfg.workdir, "Labels": cfg.labels, "StopSignal": cfg.stop_signal or "SIGTERM",
            "StopTimeout": cfg.stop_timeout or 10,
        },
        "NetworkSettings": {
            "IPAddress": c.ip_address,
            "Gateway": (c.endpoint or {}).get("gateway", ""),
            "MacAddress": (c.endpoint or {}).get("mac", ""),
            "Ports": ports,
        },
        **extra,
    }


# --- attach and exec sessions (agent/attachsession.py) -----------------------------------------------


def session_size(o: pb.OpenStream) -> attachsession.Resize | None:
    return attachsession.Resize(o.size.rows, o.size.cols) if o.HasField("size") and o.size.rows else None


def attach_options(o: pb.OpenStream) -> attachsession.AttachOptions:
    return attachsession.AttachOptions(container=o.container, start=o.start, tty=o.tty, stdin=o.stdin,
                                  create=config_from_pb(o.create) if o.HasField("create") else None,
                                  size=session_size(o))


def exec_process(o: pb.OpenStream) -> ProcessSpec:
    return ProcessSpec(args=list(o.exec.cmd), env=list(o.exec.env), cwd=o.exec.workdir, user=o.exec.user,
                       tty=o.tty, stdin=o.stdin)


async def session_inputs(requests: AsyncIterator[pb.StreamInput]) -> AsyncIterator[attachsession.Input]:
    async for msg in requests:
        kind = msg.WhichOneof("kind")
        if kind == "stdin":
            yield attachsession.Stdin(msg.stdin)
        elif kind == "close_stdin":
            yield attachsession.CloseStdin()
        elif kind == "resize":
            yield attachsession.Resize(msg.resize.rows, msg.resize.cols)
        elif kind == "signal":
            yield attachsession.Signal(msg.signal)


def stream_output(ev: attachsession.Event) -> pb.StreamOutput:
    if isinstance(ev, attachsession.Output):
        return pb.StreamOutput(stdout=ev.data) if ev.stream == "stdout" else pb.StreamOutput(stderr=ev.data)
    if isinstance(ev, attachsession.Started):
        return pb.StreamOutput(started=ev.container)
    return pb.StreamOutput(exit=pb.ExitStatus(exit_code=ev.exit_code, oom_killed=ev.oom_killed, error=ev.error))
