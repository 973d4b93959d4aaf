"""A service's spec on the wire (protos/service.proto, scheduler/specpb.py): every dataclass of the
spec has its message with the same fields, a spec with every field set comes back equal (and with
the same digest, which tasks record) after the wire, absent and None stay apart, a partial message
takes the dataclass's defaults, and a bad enum value names its field."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from protos import service_pb2 as spb
from scheduler import convert, model
from scheduler.model import (
    FailureAction,
    FileRef,
    HealthCheck,
    MountSpec,
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


def _dataclasses_of(cls: type, seen: set[type]) -> set[type]:
    if cls in seen:
        return seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        stack = [tp]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                _dataclasses_of(t, seen)
            stack.extend(typing.get_args(t))
    return seen


@pytest.mark.parametrize("cls", sorted(_dataclasses_of(ServiceSpec, set()), key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_each_dataclass_of_the_spec_has_its_message_field_for_field(cls: type) -> None:
    msg = getattr(spb, cls.__name__)
    assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in msg.DESCRIPTOR.fields], \
        f"protos/service.proto's {cls.__name__} must list scheduler/model.py's fields, in order"


FULL = ServiceSpec(
    name="shop_web", image="registry.local/web:2", command=("serve", "--port", "80"), entrypoint=(),
    env=(("A", "1"), ("B", "")), ports=(PortSpec(80, 8080, "tcp", "ingress"), PortSpec(53, None, "udp", "host")),
    replicas=0, resources=ResourceSpec(Resources(1_500_000_000, 256 << 20), Resources(250_000_000, 64 << 20)),
    placement=PlacementSpec(("node.role==worker", "node.labels.ssd==1"), ("node.labels.zone",), 2),
    update_config=UpdateConfig(2, 1.5, UpdateOrder.START_FIRST, FailureAction.ROLLBACK, 3.25, 0.5),
    rollback_config=UpdateConfig(0, 0.0, UpdateOrder.STOP_FIRST, FailureAction.CONTINUE, 0.0, 0.0),
    restart_policy=RestartPolicy(RestartCondition.ON_FAILURE, 0.5, 3, 60.0),
    healthcheck=HealthCheck(("CMD", "true"), 1.0, 2.0, 5, 0.25, False),
    labels=(("com.docker.stack.namespace", "shop"), ("tier", "front")), strategy="binpack",
    mode=ServiceMode.GLOBAL, hostname="h", user="1000:1000", workdir="/srv", stop_signal="SIGINT",
    stop_grace_period=0.0, tty=True, stdin_open=True, init=True, pids_limit=100,
    container_labels=(("x", "y"),), devices=("/dev/fuse",), privileged=True,
    mounts=(MountSpec("volume", "data", "/data", True, True, "", False, False, (), "local",
                      (("type", "tmpfs"), ("device", "tmpfs")), (("l", "v"),)),
            MountSpec("tmpfs", "", "/run", False, False, "", False, False, ("size=64m", "mode=1777"))),
    read_only=True, cap_add=("NET_ADMIN",), cap_drop=("ALL",), security_opt=("no-new-privileges",),
    ulimits=(("nofile", 1024, 2048),), dns=("10.0.0.2",), dns_search=("svc",), dns_options=("ndots:2",),
    extra_hosts=("db:10.0.0.9",), sysctls=(("net.core.somaxconn", "1024"),), shm_size=1 << 26,
    group_add=("audio",), log_driver="json-file", log_options=(("max-size", "1m"),),
    networks=(NetworkAttachment("shop_default", ("web", "www")),), endpoint_mode="dnsrr",
    secrets=(FileRef("db_pw", "db_pw", 0, 0, 0o400),), configs=(FileRef("conf", "/etc/app.conf", 1, 2, 0o444),),
)


def _wire(spec: ServiceSpec) -> ServiceSpec:
    data = convert.spec_to_pb(spec).SerializeToString()
    return convert.spec_from_pb(spb.ServiceSpec.FromString(data))


def test_a_spec_with_every_field_set_comes_back_equal_with_its_digest() -> None:
    assert all(getattr(FULL, f.name) != f.default for f in dataclasses.fields(ServiceSpec)
               if f.default is not dataclasses.MISSING and f.name not in ("stop_grace_period",)), \
        "FULL must set every field away from its default, or the test proves less than it says"
    back = _wire(FULL)
    assert back == FULL
    assert back.digest == FULL.digest


def test_absent_and_empty_stay_apart() -> None:
    """command None is the image's own, () is none; healthcheck None is the image's, a HealthCheck
    of defaults is not; a port without a published one, a grace period of None (the default)."""
    plain = ServiceSpec(name="s_a", image="busybox")
    assert _wire(plain) == plain
    assert _wire(plain).command is None and _wire(plain).healthcheck is None
    assert _wire(plain).stop_grace_period is None
    empty = dataclasses.replace(plain, command=(), healthcheck=HealthCheck())
    assert _wire(empty).command == () and _wire(empty).healthcheck == HealthCheck()
    assert _wire(FULL).stop_grace_period == 0.0
    assert _wire(FULL).ports[1].published is None


def test_a_partial_message_takes_the_dataclass_defaults() -> None:
    got = convert.spec_from_pb(spb.ServiceSpec(name="s_b", image="busybox", replicas=1))
    assert got == ServiceSpec(name="s_b", image="busybox")
    port = convert.spec_from_pb(spb.ServiceSpec(name="s_b", image="busybox", replicas=1,
                                                ports=[spb.PortSpec(target=80)]))
    assert port.ports == (PortSpec(80),)


def test_bad_values_are_refused_by_field() -> None:
    msg = convert.spec_to_pb(FULL)
    msg.update_config.order = "sideways"
    with pytest.raises(ValueError, match=r"service shop_web: update_config.order: 'sideways' is not one of "
                                         r"stop-first, start-first"):
        convert.spec_from_pb(msg)
    with pytest.raises(ValueError, match="a service needs a name and an image"):
        convert.spec_from_pb(spb.ServiceSpec(name="x"))
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        convert.spec_from_pb(spb.ServiceSpec(name="x", image="busybox", replicas=-1))


def test_the_cluster_messages_carry_the_spec_typed() -> None:
    """ServiceInfo and UpdateServiceRequest hold a ServiceSpec, not a JSON string."""
    from protos import cluster_pb2 as cpb

    assert cpb.ServiceInfo.DESCRIPTOR.fields_by_name["spec"].message_type.full_name == "dockyard.cluster.ServiceSpec"
    assert "spec_json" not in cpb.ServiceInfo.DESCRIPTOR.fields_by_name
    assert "spec_json" not in cpb.UpdateServiceRequest.DESCRIPTOR.fields_by_name
    assert model.ServiceSpec is ServiceSpec
