"""A service's spec between scheduler/model.py's frozen dataclasses and protos/service.proto's
messages: one generic conversion, driven by the dataclasses' type hints, for every type of the spec.

The messages mirror the dataclasses field for field (tests/unit/test_specpb.py checks it), so a
field added to a dataclass needs only its line in service.proto. The rules:
- a nested dataclass is a message; `X | None` is that message (or a proto3 `optional` scalar)
  left absent for None;
- a tuple of dataclasses is a repeated message; a tuple of tuples (pairs, ulimits) a repeated
  message filled by position, so the order is kept; a tuple of scalars a repeated scalar;
  `tuple[str, ...] | None` (a command) is an Args message, absent for None;
- an enum travels as its value, checked on the way in (an error names the field and the choices);
- a message left absent, or a string left empty, takes the dataclass's default: a client that
  sends a partial spec gets what a stack file leaving the key out gets.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

from google.protobuf.message import Message

from scheduler import codec

T = TypeVar("T")


_hints = codec.type_hints   # one cache of the dataclasses' resolved hints, the JSON codec's


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None was allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _elem(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[0] if args else Any


def to_message(obj: Any, msg: Message) -> Message:
    """Fills `msg` from the dataclass `obj`; returns it."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue   # absent
        tp, _ = _optional(_hints(type(obj))[f.name])
        fd = msg.DESCRIPTOR.fields_by_name[f.name]
        if _is_dataclass_type(tp):
            sub = getattr(msg, f.name)
            sub.SetInParent()   # present even when every field is its default
            to_message(value, sub)
        elif typing.get_origin(tp) is tuple:
            elem = _elem(tp)
            if fd.message_type is not None and not _repeated(fd):   # Args
                sub = getattr(msg, f.name)
                sub.SetInParent()
                sub.items.extend(value)
            elif _is_dataclass_type(elem):
                for x in value:
                    to_message(x, getattr(msg, f.name).add())
            elif typing.get_origin(elem) is tuple:
                for x in value:
                    m = getattr(msg, f.name).add()
                    for d, v in zip(m.DESCRIPTOR.fields, x, strict=True):
                        setattr(m, d.name, v)
            else:
                getattr(msg, f.name).extend(value)
        elif isinstance(value, enum.Enum):
            setattr(msg, f.name, value.value)
        else:
            setattr(msg, f.name, value)
    return msg


def from_message(msg: Message, cls: type[T], where: str = "") -> T:
    """The dataclass `cls` from `msg`; ValueError naming the field for a value it cannot take."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # (T is a dataclass)
        path = f"{where}.{f.name}" if where else f.name
        tp, optional = _optional(_hints(cls)[f.name])
        fd = msg.DESCRIPTOR.fields_by_name[f.name]
        present = not _repeated(fd) and fd.has_presence and msg.HasField(f.name)
        if not _repeated(fd) and fd.has_presence and not present:
            if optional:
                kwargs[f.name] = None
            elif f.default is not dataclasses.MISSING:
                kwargs[f.name] = f.default
            elif _is_dataclass_type(tp):
                kwargs[f.name] = from_message(getattr(msg, f.name), tp, path)
            continue
        value = getattr(msg, f.name)
        if _is_dataclass_type(tp):
            kwargs[f.name] = from_message(value, tp, path)
        elif typing.get_origin(tp) is tuple:
            elem = _elem(tp)
            if fd.message_type is not None and not _repeated(fd):   # Args
                kwargs[f.name] = tuple(value.items)
            elif _is_dataclass_type(elem):
                kwargs[f.name] = tuple(from_message(x, elem, f"{path}[{i}]") for i, x in enumerate(value))
            elif typing.get_origin(elem) is tuple:
                kwargs[f.name] = tuple(tuple(getattr(x, d.name) for d in x.DESCRIPTOR.fields) for x in value)
            else:
                kwargs[f.name] = tuple(value)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            if value == "" and isinstance(f.default, enum.Enum):
                kwargs[f.name] = f.default
                continue
            try:
                kwargs[f.name] = tp(value)
            except ValueError:
                choices = ", ".join(str(e.value) for e in tp)
                raise ValueError(f"{path}: {value!r} is not one of {choices}") from None
        elif tp is str and value == "" and isinstance(f.default, str):
            kwargs[f.name] = f.default
        elif tp is float:
            kwargs[f.name] = float(value)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def _repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)
