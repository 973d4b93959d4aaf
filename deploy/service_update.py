"""`dockyard service update` with Swarm's flags: the edit of a service's spec, done here, pure.

The CLI reads the service (its spec and version), `edit` applies the flags to the spec, and the
scheduler writes it only if the version is still the one read (UpdateServiceRequest.expect_version),
so two updates at once cannot lose one another's change. The rolling update itself is the
scheduler's (scheduler/reconcile.py `update`): `parallelism` tasks at a time, `delay` apart, each
batch running (and healthy, with a health check) for `monitor` before the next; a failed batch
pauses, continues or rolls back as `failure_action` says.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from scheduler.model import (
    FailureAction,
    ServiceMode,
    ServiceSpec,
    UpdateConfig,
    UpdateOrder,
)


class EditError(ValueError):
    """A flag that cannot apply; the message names it."""


def _pairs_add(current: tuple[tuple[str, str], ...], add: tuple[str, ...], rm: tuple[str, ...],
               flag: str) -> tuple[tuple[str, str], ...]:
    out = dict(current)
    for k in rm:
        out.pop(k.partition("=")[0], None)
    for item in add:
        k, sep, v = item.partition("=")
        if not k:
            raise EditError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v if sep else ""
    return tuple(sorted(out.items()))


def _port_key(text: str) -> tuple[int | None, int, str]:
    """--publish-rm: TARGET[/PROTO] or PUBLISHED:TARGET[/PROTO] (docker's removes by target)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    pub, sep, target = spec.rpartition(":")
    if not target.isdigit() or (sep and not pub.isdigit()) or proto not in ("tcp", "udp"):
        raise EditError(f"--publish-rm {text!r}: expected TARGET[/tcp|udp] or PUBLISHED:TARGET[/tcp|udp]")
    return (int(pub) if sep else None), int(target), proto


def _policy(cfg: UpdateConfig, o: dict[str, Any], prefix: str, duration: Any) -> UpdateConfig:
    changes: dict[str, Any] = {}
    if o.get(f"{prefix}_parallelism") is not None:
        if o[f"{prefix}_parallelism"] < 0:
            raise EditError(f"--{prefix}-parallelism must be 0 or more")
        changes["parallelism"] = o[f"{prefix}_parallelism"]
    for key in ("delay", "monitor"):
        if o.get(f"{prefix}_{key}"):
            changes[key] = duration(f"--{prefix}-{key}", o[f"{prefix}_{key}"])
    if o.get(f"{prefix}_order"):
        changes["order"] = UpdateOrder(o[f"{prefix}_order"])
    if o.get(f"{prefix}_failure_action"):
        changes["failure_action"] = FailureAction(o[f"{prefix}_failure_action"])
    if o.get(f"{prefix}_max_failure_ratio") is not None:
        ratio = o[f"{prefix}_max_failure_ratio"]
        if not 0 <= ratio <= 1:
            raise EditError(f"--{prefix}-max-failure-ratio must be between 0 and 1")
        changes["max_failure_ratio"] = ratio
    return replace(cfg, **changes) if changes else cfg


def edit(spec: ServiceSpec, o: dict[str, Any], *, publish: Any, duration: Any, file_ref: Any) -> ServiceSpec:
    """The spec with `service update`'s flags applied (`publish`, `duration` and `file_ref` parse a
    -p value, a duration and a --secret/--config value, as `service create` does)."""
    from scheduler.objects import check_refs

    changes: dict[str, Any] = {}
    if o.get("image"):
        image = o["image"].strip()
        if not image or any(c.isspace() for c in image):
            raise EditError(f"--image: invalid reference format: {o['image']!r}")
        changes["image"] = image
    if o.get("replicas") is not None:
        if spec.mode is ServiceMode.GLOBAL:
            raise EditError(f"{spec.name}: --replicas can only be used with replicated mode")
        changes["replicas"] = o["replicas"]
    if o.get("env_add") or o.get("env_rm"):
        changes["env"] = _pairs_add(spec.env, o.get("env_add", ()), o.get("env_rm", ()), "--env-add")
    if o.get("label_add") or o.get("label_rm"):
        changes["labels"] = _pairs_add(spec.labels, o.get("label_add", ()), o.get("label_rm", ()), "--label-add")
    if o.get("container_label_add") or o.get("container_label_rm"):
        changes["container_labels"] = _pairs_add(spec.container_labels, o.get("container_label_add", ()),
                                                 o.get("container_label_rm", ()), "--container-label-add")
    if o.get("publish_add") or o.get("publish_rm"):
        ports = list(spec.ports)
        for text in o.get("publish_rm", ()):
            pub, target, proto = _port_key(text)
            keep = [p for p in ports if not (p.target == target and p.protocol == proto
                                             and (pub is None or p.published == pub))]
            if len(keep) == len(ports):
                raise EditError(f"--publish-rm {text}: {spec.name} publishes no such port")
            ports = keep
        for text in o.get("publish_add", ()):
            for p in publish(text):
                ports = [q for q in ports if not (q.target == p.target and q.protocol == p.protocol)] + [p]
        seen: set[tuple[int, str]] = set()
        for p in ports:
            if p.published is not None:
                if (p.published, p.protocol) in seen:
                    raise EditError(f"--publish-add: host port {p.published}/{p.protocol} published twice")
                seen.add((p.published, p.protocol))
        changes["ports"] = tuple(ports)
    for kind in ("secret", "config"):
        refs = list(getattr(spec, f"{kind}s"))
        for name in o.get(f"{kind}_rm", ()):
            keep = [r for r in refs if r.source != name and r.target != name]
            if len(keep) == len(refs):
                raise EditError(f"--{kind}-rm {name}: {spec.name} has no such {kind}")
            refs = keep
        for text in o.get(f"{kind}_add", ()):
            new = file_ref(kind, text)
            refs = [r for r in refs if r.target != new.target] + [new]
        if o.get(f"{kind}_rm") or o.get(f"{kind}_add"):
            changes[f"{kind}s"] = tuple(refs)
    update = _policy(spec.update_config, o, "update", duration)
    if update != spec.update_config:
        changes["update_config"] = update
    rollback = _policy(spec.rollback_config, o, "rollback", duration)
    if rollback != spec.rollback_config:
        changes["rollback_config"] = rollback
    out = replace(spec, **changes) if changes else spec
    check_refs(out)
    return out
