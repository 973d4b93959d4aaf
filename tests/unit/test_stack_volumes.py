"""A stack's volumes, tmpfs and read_only: parsed to MountSpecs, checked with file:line: field, and
turned into the agent's container config by the dispatcher."""

from __future__ import annotations

import textwrap

import pytest

from deploy.stack import StackError, parse_stack
from scheduler.dispatch import container_config
from scheduler.model import MountSpec, ServiceSpec, Task

STACK = """\
services:
  db:
    image: busybox
    read_only: true
    volumes:
      - pgdata:/var/lib/data
      - /srv/conf:/etc/app:ro
      - /scratch
      - shared:/shared:nocopy
      - type: tmpfs
        target: /cache
        tmpfs: {size: 64m, mode: 1770}
      - type: bind
        source: /srv/logs
        target: /logs
        bind: {create_host_path: true, propagation: rprivate}
      - type: volume
        source: fast
        target: /fast
        read_only: true
    tmpfs: /run
volumes:
  pgdata:
  fast:
    driver: local
    driver_opts: {type: tmpfs, device: tmpfs, o: size=16m}
    labels: {tier: cache}
  shared:
    external: true
"""


def test_volumes_short_and_long_tmpfs_and_read_only() -> None:
    svc = parse_stack(STACK, "bar").service("db")
    assert svc.read_only
    assert svc.mounts == (
        MountSpec(type="volume", source="bar_pgdata", target="/var/lib/data"),
        MountSpec(type="bind", source="/srv/conf", target="/etc/app", read_only=True),
        MountSpec(type="volume", source="", target="/scratch"),
        MountSpec(type="volume", source="shared", target="/shared", nocopy=True, external=True),
        MountSpec(type="tmpfs", target="/cache", tmpfs_options=("noexec", "nosuid", "nodev", f"size={64 << 20}",
                                                                 "mode=1770")),
        MountSpec(type="bind", source="/srv/logs", target="/logs", propagation="rprivate", create_host_path=True),
        MountSpec(type="volume", source="bar_fast", target="/fast", read_only=True, volume_driver="local",
                  volume_options=(("device", "tmpfs"), ("o", "size=16m"), ("type", "tmpfs")),
                  volume_labels=(("tier", "cache"),)),
        MountSpec(type="tmpfs", target="/run", tmpfs_options=("noexec", "nosuid", "nodev")),
    )


def test_the_dispatcher_gives_the_agent_the_mounts() -> None:
    svc = parse_stack(STACK, "bar").service("db")
    cfg = container_config(Task(id="t1", service=svc.name, slot=1, spec_version=svc.digest), svc, "bar")
    assert cfg.read_only
    by_target = {m.target: m for m in cfg.mounts}
    assert by_target["/scratch"].anonymous and by_target["/scratch"].type == "volume"
    assert by_target["/var/lib/data"].source == "bar_pgdata" and not by_target["/var/lib/data"].anonymous
    assert by_target["/shared"].external and by_target["/shared"].nocopy
    assert by_target["/logs"].create_source and not by_target["/etc/app"].create_source
    assert dict(by_target["/fast"].volume_options) == {"type": "tmpfs", "device": "tmpfs", "o": "size=16m"}
    assert by_target["/cache"].tmpfs_options[-1] == "mode=1770"


def test_mounts_change_the_task_digest_and_old_specs_keep_theirs() -> None:
    plain = ServiceSpec(name="s", image="busybox")
    assert plain.digest == ServiceSpec(name="s", image="busybox", mounts=(), read_only=False).digest
    assert plain.digest != ServiceSpec(name="s", image="busybox", read_only=True).digest
    assert plain.digest != ServiceSpec(name="s", image="busybox", mounts=(MountSpec(target="/d"),)).digest


def test_shared_propagation_is_read_and_checked_on_the_node() -> None:
    svc = parse_stack('services:\n  web:\n    image: busybox\n    volumes: ["/a:/b:rshared"]\n', "s").service("web")
    assert [(m.source, m.propagation) for m in svc.mounts] == [("/a", "rshared")]


@pytest.mark.parametrize(("volumes", "top", "line", "error"), [
    ('["nope:/data"]', "", 4, "refers to undefined volume nope"),
    ('["./rel:/data"]', "", 4, "relative"),
    ('["~/x:/data"]', "", 4, "must be absolute"),
    ('["/data:ro"]', "", 4, "a mode needs SOURCE:TARGET:MODE"),
    ('["/a:/b:sideways"]', "", 4, "invalid mode 'sideways'"),
    ('["/a:/d", "/b:/d"]', "", 4, "duplicate mount point: /d"),
    ('[{type: volume, target: /d, tmpfs: {size: 1m}}]', "", 4, "tmpfs options on a volume mount"),
    ('[{type: nfs, target: /d}]', "", 4, "is not one of volume, bind, tmpfs"),
    ('[{type: bind, target: /d}]', "", 4, "must be an absolute host path"),
    ('[{type: volume, source: v1, target: /d, consistency: cached}]', "\nvolumes:\n  v1:\n", 4, "unknown field"),
    ('["v1:/d"]', "\nvolumes:\n  v1: {driver: flocker}\n", 6, "volume driver 'flocker' not found"),
    ('["v1:/d"]', "\nvolumes:\n  v1: {driver_opts: {colour: red}}\n", 6, "invalid option 'colour'"),
    ('["v1:/d"]', "\nvolumes:\n  v1: {external: true, labels: {a: b}}\n", 6, "an external volume"),
    ('["v1:/d"]', "\nvolumes:\n  v1: {name: x}\n", 6, "invalid volume name 'x'"),
])
def test_bad_volumes_name_file_line_and_field(volumes: str, top: str, line: int, error: str) -> None:
    text = textwrap.dedent(f"""\
        services:
          web:
            image: busybox
            volumes: {volumes}""") + top
    with pytest.raises(StackError, match=error) as e:
        parse_stack(text, "bar", file="s.yaml")
    assert e.value.line == line, str(e.value)


def test_bad_tmpfs_and_read_only() -> None:
    for body, error in [("tmpfs: /run:size=huge", "invalid size 'huge'"), ("tmpfs: run", "not an absolute path"),
                        ("read_only: maybe", "expected true or false")]:
        with pytest.raises(StackError, match=error):
            parse_stack(f"services:\n  web:\n    image: busybox\n    {body}\n", "bar", file="s.yaml")


HOST_STACK = """\
services:
  web:
    image: busybox
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    ulimits:
      nproc: 512
      nofile: {soft: 1024, hard: 2048}
    dns: 10.0.0.53
    dns_search: [example.com]
    dns_opt: ["ndots:2"]
    extra_hosts: ["db:10.1.2.3", "gw=host-gateway"]
    sysctls: {net.core.somaxconn: 1024}
    shm_size: 128m
    group_add: [audio]
"""


def test_docker_run_keys_of_a_service_reach_the_container() -> None:
    svc = parse_stack(HOST_STACK, "bar").service("web")
    assert (svc.cap_add, svc.cap_drop, svc.security_opt) == (("NET_ADMIN",), ("ALL",), ("no-new-privileges=true",))
    assert svc.ulimits == (("nproc", 512, 512), ("nofile", 1024, 2048))
    assert (svc.dns, svc.dns_search, svc.dns_options) == (("10.0.0.53",), ("example.com",), ("ndots:2",))
    assert svc.extra_hosts == ("db:10.1.2.3", "gw:host-gateway")
    assert (svc.sysctls, svc.shm_size, svc.group_add) == ((("net.core.somaxconn", "1024"),), 128 << 20, ("audio",))
    cfg = container_config(Task(id="t1", service=svc.name, slot=1, spec_version=svc.digest), svc, "bar")
    assert list(cfg.cap_add) == ["NET_ADMIN"] and [(u.name, u.soft, u.hard) for u in cfg.ulimits][1] == \
        ("nofile", 1024, 2048)
    assert dict(cfg.sysctls) == {"net.core.somaxconn": "1024"} and cfg.shm_size == 128 << 20
    assert list(cfg.extra_hosts) == ["db:10.1.2.3", "gw:host-gateway"] and list(cfg.dns_options) == ["ndots:2"]


@pytest.mark.parametrize(("body", "error"), [
    ("cap_add: [WIZARDRY]", "unknown capability"),
    ("ulimits: {nofile: {soft: 5, hard: 1}}", "soft limit is above the hard limit"),
    ("ulimits: {wishes: 3}", "unknown limit"),
    ("sysctls: [vm.swappiness=1]", "not a namespaced sysctl"),
    ("dns: resolver", "not an IP address"),
    ("extra_hosts: [db]", "expected NAME:IP"),
    ("security_opt: [seccomp=rel.json]", "give an absolute path"),
    ("security_opt: [apparmor=x]", "not supported"),
    ("shm_size: lots", "invalid size"),
])
def test_bad_docker_run_keys_are_refused_at_their_line(body: str, error: str) -> None:
    with pytest.raises(StackError, match=error) as e:
        parse_stack(f"services:\n  web:\n    image: busybox\n    {body}\n", "bar", file="s.yaml")
    assert e.value.line == 4, str(e.value)


def test_service_create_mount_flag_gives_the_same_mount_specs() -> None:
    import click

    from deploy.cli_stack import service_create
    from deploy.service_flags import build_service_spec

    def spec_of(*args: str) -> ServiceSpec:
        ctx = service_create.make_context("create", list(args))
        p = dict(ctx.params)
        return build_service_spec(p.pop("image"), p.pop("command"), p)

    s = spec_of("--name", "db", "--mount", "type=volume,src=pgdata,dst=/var/lib/data", "--mount",
                "type=bind,src=/srv/conf,dst=/etc/app,readonly", "--mount", "type=tmpfs,dst=/run,tmpfs-size=1m",
                "busybox")
    assert [(m.type, m.source, m.target, m.read_only) for m in s.mounts] == [
        ("volume", "pgdata", "/var/lib/data", False), ("bind", "/srv/conf", "/etc/app", True), ("tmpfs", "", "/run", False)]
    assert not s.mounts[1].create_host_path   # Swarm's rule: the node must have the path
    for bad, why in [("type=bind,src=rel,dst=/a", "must be an absolute host path"),
                     ("type=volume,src=vv,dst=/a,volume-driver=nfs", "volume driver 'nfs'"),
                     ("type=volume,dst=a", "not an absolute path"),
                     ("type=weird,dst=/a", "weird")]:
        with pytest.raises(click.BadParameter, match=why):
            spec_of("--name", "db", "--mount", bad, "busybox")
