"""Swarm placement constraints: `node.labels.zone == a`, `node.hostname != h1`, `node.role == manager`.

Same grammar and meaning as swarmkit's manager/constraint: `KEY == VALUE` or `KEY != VALUE`, values
compared case-insensitively, a missing label equals nothing (so `!=` holds and `==` does not).
Parse once per service; evaluate per node with no further parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from scheduler.model import Node


class ConstraintError(ValueError):
    """A constraint expression that cannot be parsed; the message names the expression and the problem."""


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9\-_.]*$")
_VALUE = re.compile(r"^[A-Za-z0-9:\-_\s.*()?+\[\]\\^$|/@=,]+$")

# Attributes a constraint may name, and how to read each from a Node.
_FIXED: dict[str, Callable[[Node], str]] = {
    "node.id": lambda n: n.name,
    "node.name": lambda n: n.name,
    "node.hostname": lambda n: n.hostname,
    "node.role": lambda n: n.role,
    "node.platform.os": lambda n: n.os,
    "node.platform.arch": lambda n: n.arch,
    "node.cgroup_version": lambda n: str(n.capabilities.cgroup_version),
    "node.criu": lambda n: "true" if n.capabilities.criu else "false",
}
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    equal: bool  # True for ==, False for !=
    value: str
    text: str  # as written, for reasons shown to people
    # Resolved once at parse time: evaluation runs for every node a task looks at.
    get: Callable[[Node], str | None] = field(default=lambda n: None, compare=False, repr=False)
    folded: str = field(default="", compare=False, repr=False)

    def matches(self, node: Node) -> bool:
        actual = self.get(node)
        same = actual is not None and (actual == self.value or actual.casefold() == self.folded)
        return same if self.equal else not same


@lru_cache(maxsize=1024)
def attribute_getter(key: str) -> Callable[[Node], str | None]:
    """A function reading the attribute `key` names (node.labels.zone, node.hostname ...) from a node."""
    if key.startswith("node.labels."):
        label = key[len("node.labels."):]
        return lambda n: n.labels.get(label)
    if key.startswith("engine.labels."):
        label = key[len("engine.labels."):]
        return lambda n: n.engine_labels.get(label)
    fixed = _FIXED.get(key)
    return fixed if fixed is not None else (lambda n: None)


def node_attribute(node: Node, key: str) -> str | None:
    """The value a constraint or spread preference key names on this node, or None if it has none."""
    return attribute_getter(key)(node)


def check_key(key: str, what: str = "key") -> None:
    if key in _FIXED:
        return
    for prefix in _LABEL_PREFIXES:
        if key.startswith(prefix):
            if len(key) > len(prefix) and _KEY.match(key[len(prefix):]):
                return
            raise ConstraintError(f"{what} {key!r}: empty or invalid label name after {prefix!r}")
    known = ", ".join([*_FIXED, "node.labels.<name>", "engine.labels.<name>"])
    raise ConstraintError(f"{what} {key!r} is not a node attribute (one of: {known})")


def parse(expr: str) -> Constraint:
    if not isinstance(expr, str):
        raise ConstraintError(f"constraint must be a string like 'node.labels.zone == a', got {expr!r}")
    for op, equal in (("==", True), ("!=", False)):
        left, sep, right = expr.partition(op)
        if not sep:
            continue
        key, value = left.strip(), right.strip()
        if not key:
            raise ConstraintError(f"constraint {expr!r}: nothing before {op}")
        if not value:
            raise ConstraintError(f"constraint {expr!r}: nothing after {op}")
        if not _KEY.match(key):
            raise ConstraintError(f"constraint {expr!r}: invalid key {key!r}")
        check_key(key, f"constraint {expr!r}: key")
        if not _VALUE.match(value):
            raise ConstraintError(f"constraint {expr!r}: invalid value {value!r}")
        return Constraint(key=key, equal=equal, value=value, text=f"{key} {op} {value}",
                          get=attribute_getter(key), folded=value.casefold())
    raise ConstraintError(f"constraint {expr!r}: needs == or != (as in 'node.labels.zone == a')")


def parse_all(exprs: Iterable[str]) -> tuple[Constraint, ...]:
    return tuple(parse(e) for e in exprs)


def first_unmet(constraints: Iterable[Constraint], node: Node) -> Constraint | None:
    for c in constraints:
        if not c.matches(node):
            return c
    return None
