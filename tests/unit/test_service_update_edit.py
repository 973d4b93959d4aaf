"""`service update`'s flags applied to a spec (deploy/service_update.py), without a cluster: a table
of {flags, what changes}, and the flags that cannot apply."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.service_update import EditError, edit
from deploy.stack_files import parse_flag
from scheduler.model import (
    FailureAction,
    FileRef,
    PortSpec,
    ServiceMode,
    ServiceSpec,
    UpdateConfig,
    UpdateOrder,
)

BASE = ServiceSpec(name="web", image="busybox:1", env=(("A", "1"), ("B", "2")), labels=(("team", "x"),),
                   ports=(PortSpec(80, 8080), PortSpec(53, None, "udp")), secrets=(FileRef("pw", "/run/secrets/pw"),))


def _publish(text: str) -> list[PortSpec]:
    pub, _, target = text.partition(":")
    return [PortSpec(int(target), int(pub))] if target else [PortSpec(int(pub))]


def apply(spec: ServiceSpec = BASE, **o: Any) -> ServiceSpec:
    return edit(spec, o, publish=_publish, duration=lambda flag, v: float(v.rstrip("s")), file_ref=parse_flag)


@pytest.mark.parametrize("flags, field, want", [
    ({"image": "busybox:2"}, "image", "busybox:2"),
    ({"replicas": 5}, "replicas", 5),
    ({"env_add": ("C=3", "A=9"), "env_rm": ("B",)}, "env", (("A", "9"), ("C", "3"))),
    ({"label_add": ("tier=web",), "label_rm": ("team",)}, "labels", (("tier", "web"),)),
    ({"container_label_add": ("c=1",)}, "container_labels", (("c", "1"),)),
    ({"publish_rm": ("80",)}, "ports", (PortSpec(53, None, "udp"),)),
    ({"publish_rm": ("53/udp",), "publish_add": ("9090:90",)}, "ports", (PortSpec(80, 8080), PortSpec(90, 9090))),
    ({"publish_add": ("8081:80",)}, "ports", (PortSpec(53, None, "udp"), PortSpec(80, 8081))),  # same target: replaced
    ({"secret_rm": ("pw",), "secret_add": ("source=tok,target=/etc/tok,mode=0400",)}, "secrets",
     (FileRef("tok", "/etc/tok", mode=0o400),)),
    ({"config_add": ("app",)}, "configs", (FileRef("app", "/app"),)),
    ({"update_parallelism": 2, "update_delay": "5s", "update_order": "start-first", "update_failure_action": "rollback",
      "update_monitor": "1s", "update_max_failure_ratio": 0.5}, "update_config",
     UpdateConfig(2, 5.0, UpdateOrder.START_FIRST, FailureAction.ROLLBACK, 1.0, 0.5)),
    ({"rollback_parallelism": 0, "rollback_order": "start-first"}, "rollback_config",
     UpdateConfig(parallelism=0, order=UpdateOrder.START_FIRST)),
])
def test_flags(flags: dict[str, Any], field: str, want: Any) -> None:
    from dataclasses import replace

    got = apply(**flags)
    assert getattr(got, field) == want
    assert replace(got, **{field: getattr(BASE, field)}) == BASE  # nothing else changed


def test_no_flags_change_nothing() -> None:
    assert apply() == BASE
    assert apply(image="", env_add=(), replicas=None) is BASE


@pytest.mark.parametrize("flags, problem", [
    ({"image": "bad image"}, "invalid reference format"),
    ({"publish_rm": ("9999",)}, "publishes no such port"),
    ({"publish_rm": ("x:80",)}, "expected TARGET"),
    ({"publish_add": ("8080:81",)}, "host port 8080/tcp published twice"),
    ({"env_add": ("=x",)}, "expected KEY=VALUE"),
    ({"secret_rm": ("nope",)}, "has no such secret"),
    ({"secret_add": ("source=x,target=/run/secrets/pw",)}, None),  # same target: replaces pw
    ({"config_add": ("source=c,target=/run/secrets/pw",)}, "have the same target /run/secrets/pw"),
    ({"update_parallelism": -1}, "must be 0 or more"),
    ({"update_max_failure_ratio": 2.0}, "between 0 and 1"),
])
def test_bad_flags(flags: dict[str, Any], problem: str | None) -> None:
    if problem is None:
        assert apply(**flags).secrets == (FileRef("x", "/run/secrets/pw"),)
        return
    with pytest.raises(ValueError, match=problem):
        apply(**flags)


def test_replicas_of_a_global_service() -> None:
    from dataclasses import replace

    with pytest.raises(EditError, match="only be used with replicated mode"):
        apply(replace(BASE, mode=ServiceMode.GLOBAL), replicas=3)
