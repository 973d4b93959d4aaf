"""A stack's volumes: the top-level `volumes:`, and each service's `volumes:` (short and long
syntax), `tmpfs:` and `read_only:`, checked at the boundary like the rest of the file
(deploy/stack.py calls these), and given to the scheduler as MountSpecs.

    volumes:                       # top level: named volumes, local to each node
      pgdata: {driver: local, driver_opts: {type: tmpfs, device: tmpfs, o: size=64m}, labels: {a: b}}
      shared: {external: true}     # must exist on the node; `name:` renames
    services:
      db:
        volumes: ["pgdata:/var/lib/data", "/srv/conf:/etc/app:ro", "/scratch",
                  {type: tmpfs, target: /cache, tmpfs: {size: 64m}}]
        tmpfs: /run

A named volume is called STACK_NAME on the nodes (as `docker stack deploy` names it) unless it is
external or has a `name:`. Host paths must be absolute (a stack runs on other hosts than the one
it is deployed from) and, as in Swarm, must exist on the node unless `bind.create_host_path: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.model import InvalidArgument, Mount
from agent.volumes import specs
from scheduler.model import MountSpec

if TYPE_CHECKING:
    from deploy.stack import _At

_TOP_VOLUME = frozenset({"driver", "driver_opts", "labels", "external", "name"})
_LONG = frozenset({"type", "source", "target", "read_only", "bind", "volume", "tmpfs"})
_LONG_BIND = frozenset({"propagation", "create_host_path"})
_LONG_VOLUME = frozenset({"nocopy"})
_LONG_TMPFS = frozenset({"size", "mode"})


@dataclass(frozen=True)
class TopVolume:
    name: str                       # on the nodes
    driver: str = ""
    options: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    external: bool = False


def top_volumes(at: _At | None, stack: str) -> dict[str, TopVolume]:
    from deploy.stack import _labels

    out: dict[str, TopVolume] = {}
    if at is None:
        return out
    for key, v in at.items():
        if v.value is None:
            out[key] = TopVolume(f"{stack}_{key}")
            continue
        v.mapping(_TOP_VOLUME)
        external = v.child("external")
        is_external = external.boolean() if external is not None else False
        name_at = v.child("name")
        name = name_at.string() if name_at is not None else (key if is_external else f"{stack}_{key}")
        driver_at = v.child("driver")
        driver = driver_at.string() if driver_at is not None else ""
        if driver not in ("", "local"):
            (driver_at or v).fail(f"volume driver {driver!r} not found: dockyard has only the local driver")
        opts_at = v.child("driver_opts")
        options = tuple(sorted((k, o.string()) for k, o in opts_at.items())) if opts_at is not None else ()
        labels = _labels(v.child("labels"))
        if is_external and (options or labels or driver):
            v.fail("an external volume is made elsewhere: it takes no driver, driver_opts or labels here")
        try:
            specs.check_volume_name(name)
        except InvalidArgument as e:
            (name_at or v).fail(str(e))
        if options:
            from agent.volumes.store import check_options

            try:
                check_options("local", dict(options))
            except InvalidArgument as e:
                (opts_at or v).fail(str(e))
        out[key] = TopVolume(name, driver, options, labels, is_external)
    return out


def _checked(at: _At, m: Mount) -> MountSpec:
    try:
        return _mount_spec(m)
    except InvalidArgument as e:
        at.fail(str(e))


def flag_mounts(texts: tuple[str, ...] | list[str]) -> tuple[MountSpec, ...]:
    """`service create --mount` (docker's --mount syntax): as Swarm, a named volume is made on each
    node that runs a task (its name as given: no stack prefix), a bind's source must exist there."""
    return tuple(_mount_spec(specs.parse_mount(t)) for t in texts)


def _mount_spec(m: Mount) -> MountSpec:
    specs.check(m)
    return MountSpec(type=m.type, source=m.source, target=m.target, read_only=m.readonly, nocopy=m.nocopy,
                     propagation=m.propagation, external=m.external, create_host_path=m.create_source,
                     tmpfs_options=tuple(m.tmpfs_options),
                     volume_driver=m.volume_driver, volume_options=tuple(sorted(m.volume_options.items())),
                     volume_labels=tuple(sorted(m.volume_labels.items())))


def _named(at: _At, m: Mount, top: dict[str, TopVolume], key: str) -> None:
    """A named volume must be declared at the top level, as Compose requires."""
    declared = top.get(key)
    if declared is None:
        at.fail(f"refers to undefined volume {key} (declare it under the top-level volumes:)")
    m.source, m.external = declared.name, declared.external
    m.volume_driver = declared.driver
    m.volume_options, m.volume_labels = dict(declared.options), dict(declared.labels)


def _short(at: _At, top: dict[str, TopVolume]) -> MountSpec:
    text = at.string()
    try:
        m = specs.parse_volume(text)
    except InvalidArgument as e:
        at.fail(str(e))
    if text.startswith("~"):
        at.fail(f"{text!r}: a host path must be absolute (a stack runs on other hosts)")
    if m.type == "bind":
        m.create_source = False  # Swarm's rule: the node must have the path
    elif not m.anonymous:
        _named(at, m, top, m.source)
    return _checked(at, m)


def _long(at: _At, top: dict[str, TopVolume]) -> MountSpec:
    at.mapping(_LONG)
    type_at = at.child("type")
    if type_at is None:
        at.fail("a long-syntax volume needs a type (volume, bind or tmpfs)")
    kind = type_at.choice(("volume", "bind", "tmpfs"))
    target_at = at.child("target")
    if target_at is None:
        at.fail("missing target (the path in the container)")
    source_at = at.child("source")
    m = Mount(type=kind, target=target_at.string(), source=source_at.string() if source_at is not None else "")
    ro = at.child("read_only")
    m.readonly = ro.boolean() if ro is not None else False
    for sub, allowed in (("bind", _LONG_BIND), ("volume", _LONG_VOLUME), ("tmpfs", _LONG_TMPFS)):
        sub_at = at.child(sub)
        if sub_at is not None and sub != kind:
            sub_at.fail(f"{sub} options on a {kind} mount")
        if sub_at is not None:
            sub_at.mapping(allowed)
    if kind == "bind":
        b = at.child("bind")
        if b is not None:
            prop = b.child("propagation")
            m.propagation = prop.string() if prop is not None else ""
            create = b.child("create_host_path")
            m.create_source = create.boolean() if create is not None else False
    elif kind == "volume":
        v = at.child("volume")
        nocopy = v.child("nocopy") if v is not None else None
        m.nocopy = nocopy.boolean() if nocopy is not None else False
        if m.source:
            _named(source_at or at, m, top, m.source)
        else:
            m.anonymous = True
    else:
        opts = list(specs.TMPFS_DEFAULT_FLAGS)
        t = at.child("tmpfs")
        if t is not None:
            size, mode = t.child("size"), t.child("mode")
            if size is not None:
                opts.append(f"size={size.string()}")
            if mode is not None:
                # YAML reads 1777 as a number: the digits are the octal mode
                opts.append(f"mode={mode.string()}")
        m.tmpfs_options = opts
    return _checked(at, m)


def service_mounts(svc: _At, top: dict[str, TopVolume]) -> tuple[MountSpec, ...]:
    out: list[MountSpec] = []
    vols = svc.child("volumes")
    for e in vols.elements() if vols is not None else []:
        out.append(_long(e, top) if isinstance(e.value, dict) else _short(e, top))
    tmpfs = svc.child("tmpfs")
    if tmpfs is not None:
        entries = [tmpfs] if isinstance(tmpfs.value, str) else tmpfs.elements()
        for e in entries:
            try:
                m = specs.parse_tmpfs(e.string())
            except InvalidArgument as err:
                e.fail(str(err))
            out.append(_checked(e, m))
    seen: set[str] = set()
    for ms in out:
        t = ms.target.rstrip("/") or "/"
        if t in seen:
            (vols or svc).fail(f"duplicate mount point: {t}")
        seen.add(t)
    return tuple(out)
