"""Dataclasses <-> JSON-ready dicts, driven by the type hints, so the store never hand-writes fields.

Tasks are the hot path (100,000 of them in the benchmark), so they get a hand-written pair.
Fields named in _SKIP are etcd metadata or derived, never stored.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from typing import Any, TypeVar

from scheduler.model import (
    Availability,
    Capabilities,
    DesiredState,
    Node,
    NodeStatus,
    Resources,
    Task,
    TaskState,
)

T = TypeVar("T")

_SKIP = frozenset({"mod_revision", "allocated"})


class DecodeError(ValueError):
    """A stored value does not match the dataclass it should decode to."""


def encode(obj: Any) -> Any:
    if isinstance(obj, Task):
        return encode_task(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.name in _SKIP:
                continue
            out[f.name] = encode(getattr(obj, f.name))
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [encode(x) for x in obj]
    if isinstance(obj, frozenset | set):
        return sorted(encode(x) for x in obj)
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    return obj


_hints: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved type hints, cached (scheduler/specpb.py uses them too)."""
    hints = _hints.get(cls)
    if hints is None:
        hints = _hints[cls] = typing.get_type_hints(cls)
    return hints


def decode(cls: type[T], data: Any) -> T:
    result: T = _decode(cls, data, cls.__name__)
    return result


def _decode(tp: Any, data: Any, where: str) -> Any:
    if tp is Task:
        return decode_task(data)
    if tp is Node:
        return decode_node(data)
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _decode(rest[0], data, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise DecodeError(f"{where}: expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], x, f"{where}[{i}]") for i, x in enumerate(data))
        return tuple(_decode(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, data, strict=True)))
    if origin is frozenset:
        (arg,) = typing.get_args(tp)
        return frozenset(_decode(arg, x, where) for x in data)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(data, dict):
            raise DecodeError(f"{where}: expected a mapping")
        return {str(k): _decode(vt, v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise DecodeError(f"{where}: expected a mapping")
        hints = type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise DecodeError(f"{where}: {e}") from e
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError as e:
            raise DecodeError(f"{where}: {e}") from e
    if tp is float and isinstance(data, int | float):
        return float(data)
    if tp is typing.Any:
        return data
    if isinstance(tp, type) and not isinstance(data, tp):
        raise DecodeError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
    return data


def encode_task(t: Task) -> dict[str, Any]:
    return {
        "service": t.service, "slot": t.slot, "id": t.id, "spec_version": t.spec_version,
        "node": t.node, "desired_state": t.desired_state.value, "state": t.state.value,
        "state_at": t.state_at, "started_at": t.started_at, "created_at": t.created_at,
        "container_id": t.container_id, "exit_code": t.exit_code, "healthy": t.healthy,
        "attempt": t.attempt, "error": t.error,
    }


_q = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # the C string quoter json uses


def _num(x: float) -> str:
    if x != x or x in (math.inf, -math.inf):
        raise ValueError(f"{x} cannot be stored as JSON")
    return repr(float(x))


def task_json(t: Task) -> bytes:
    """encode_task + json, written out: the same JSON (json.loads gives encode_task's dict back)
    at a fraction of the cost, since every placement writes one."""
    node = "null" if t.node is None else _q(t.node)
    exit_code = "null" if t.exit_code is None else str(int(t.exit_code))
    healthy = "null" if t.healthy is None else ("true" if t.healthy else "false")
    return (
        f'{{"service":{_q(t.service)},"slot":{int(t.slot)},"id":{_q(t.id)},"spec_version":{_q(t.spec_version)},'
        f'"node":{node},"desired_state":"{t.desired_state.value}","state":"{t.state.value}",'
        f'"state_at":{_num(t.state_at)},"started_at":{_num(t.started_at)},"created_at":{_num(t.created_at)},'
        f'"container_id":{_q(t.container_id)},"exit_code":{exit_code},"healthy":{healthy},'
        f'"attempt":{int(t.attempt)},"error":{_q(t.error)}}}'
    ).encode()


def decode_task(d: Any, mod_revision: int = 0) -> Task:
    try:
        return Task(
            service=d["service"], slot=int(d["slot"]), id=d["id"], spec_version=d["spec_version"],
            node=d.get("node"), desired_state=DesiredState(d.get("desired_state", "running")),
            state=TaskState(d.get("state", "pending")), state_at=float(d.get("state_at", 0.0)),
            started_at=float(d.get("started_at", 0.0)), created_at=float(d.get("created_at", 0.0)),
            container_id=d.get("container_id", ""), exit_code=d.get("exit_code"),
            healthy=d.get("healthy"), attempt=int(d.get("attempt", 0)), error=d.get("error", ""),
            mod_revision=mod_revision,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DecodeError(f"Task: {e}") from e


def _str_map(d: Any, where: str) -> dict[str, str]:
    if not isinstance(d, dict):
        raise DecodeError(f"{where}: expected a mapping")
    return {str(k): str(v) for k, v in d.items()}


def decode_node(d: Any) -> Node:
    """Hand-written like decode_task: a new leader decodes every node at once."""
    try:
        cap = d.get("capacity") or {}
        caps = d.get("capabilities") or {}
        return Node(
            name=d["name"], address=d.get("address", ""), labels=_str_map(d.get("labels", {}), "Node.labels"),
            capacity=Resources(int(cap.get("nano_cpus", 0)), int(cap.get("memory_bytes", 0))),
            capabilities=Capabilities(criu=bool(caps.get("criu", False)),
                                      cgroup_version=int(caps.get("cgroup_version", 2)),
                                      lazy_pages=bool(caps.get("lazy_pages", False)),
                                      kernel=str(caps.get("kernel", "")),
                                      cpu_features=tuple(str(f) for f in caps.get("cpu_features", ()))),
            status=NodeStatus(d.get("status", "ready")), availability=Availability(d.get("availability", "active")),
            role=d.get("role", "worker"), hostname=d.get("hostname", ""), os=d.get("os", "linux"),
            arch=d.get("arch", "x86_64"), engine_labels=_str_map(d.get("engine_labels", {}), "Node.engine_labels"),
            images=frozenset(str(i) for i in d.get("images", ())),
            metrics_addr=str(d.get("metrics_addr", "")), agent_id=str(d.get("agent_id", "")),
            certified=bool(d.get("certified", False)),
            pressure=str(d.get("pressure", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DecodeError(f"Node: {e}") from e
