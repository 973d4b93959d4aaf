"""A YAML loader for files from strangers: safe types only, bounded, and every value keeps its line.

    doc = load(text)       # LineMap / LineSeq / str / int / float / bool / None

What it refuses, each as a YAMLLimitError naming file:line (checked while composing, before any
value is built, so a hostile file costs time linear in its size):
- more than MAX_DEPTH levels of nesting (PyYAML's composer and constructor recurse: a deep file
  would otherwise end in RecursionError), counted with aliases expanded;
- more than MAX_NODES values once aliases are expanded (a billion-laughs file is a few hundred
  bytes that expand to 10**9 values: every later walk of the tree would hang);
- an alias inside the anchor it refers to (a cycle);
- an integer of more than MAX_DIGITS digits (Python refuses to convert one over 4300 anyway).

What it reads as Compose does (go-yaml v3, YAML 1.2's core schema) rather than as YAML 1.1:
- `22:22` is the string "22:22", not the base-60 number 1342; `2024-01-01` is a string, not a date;
- `<<: *anchor` and `<<: [*a, *b]` merge keys, with the mapping's own keys overriding merged ones
  (and earlier sources in a list overriding later ones); a key written twice is still an error.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_DIGITS = 40
MAX_BYTES = 16 << 20

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class YAMLLimitError(ValueError):
    """A document beyond a bound; `line` is 1-based (0 when unknown)."""

    def __init__(self, line: int, problem: str) -> None:
        self.line, self.problem = line, problem
        super().__init__(problem)


class LineMap(dict[Any, Any]):
    """A mapping that remembers the line of each key (`lines`) and of itself (`line`)."""

    line: int = 0
    lines: dict[Any, int]


class LineSeq(list[Any]):
    """A sequence that remembers the line of each item (`lines`) and of itself (`line`)."""

    line: int = 0
    lines: list[int]


# YAML 1.2 core numbers: no sexagesimal ints or floats (base 60 turns ports "22:22" into 1342).
_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)


class _Bounded(yaml.composer.Composer):
    """PyYAML's composer with limits, YAML 1.2 numbers, Compose merge keys and line numbers; the
    scanner and parser under it are libyaml's (C) where PyYAML has it, else PyYAML's own."""

    yaml_implicit_resolvers = {
        first: [(tag, _INT if tag == _INT_TAG else _FLOAT if tag == _FLOAT_TAG else rx)
                for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def _init_bounds(self) -> None:
        self._depth = 0
        # per composed node (by id): (values once aliases are expanded, depth once expanded)
        self._sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):  # type: ignore[attr-defined]
            event = self.peek_event()  # type: ignore[attr-defined]
            node: Node = super().compose_node(parent, index)  # type: ignore[no-untyped-call,assignment]
            if id(node) not in self._sizes:
                raise YAMLLimitError(event.start_mark.line + 1,
                                     f"alias *{event.anchor} refers to the anchor it is in (a cycle)")
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[attr-defined]
            raise YAMLLimitError(mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)  # type: ignore[no-untyped-call,assignment]
        finally:
            self._depth -= 1
        self._measure(node)
        return node

    def _measure(self, node: Node) -> None:
        """The node's expanded size and depth, from its children's (all composed already)."""
        if isinstance(node, ScalarNode):
            if node.tag == _INT_TAG and len(node.value) > MAX_DIGITS:
                raise YAMLLimitError(node.start_mark.line + 1,
                                     f"number of {len(node.value)} digits is too long (at most {MAX_DIGITS})")
            self._sizes[id(node)] = (1, 1)
            return
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        size, depth = 1, 0
        for child in children:
            s, d = self._sizes[id(child)]
            size += s
            depth = max(depth, d)
        depth += 1
        line = node.start_mark.line + 1
        if size > MAX_NODES:
            raise YAMLLimitError(line, f"more than {MAX_NODES:,} values once aliases are expanded "
                                       "(a billion-laughs file?)")
        if depth > MAX_DEPTH:
            raise YAMLLimitError(line, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded")
        self._sizes[id(node)] = (size, depth)


def _construct_map(loader: Any, node: MappingNode) -> LineMap:
    out = LineMap()
    out.line = node.start_mark.line + 1
    out.lines = {}
    merged: list[tuple[Any, Any, int]] = []
    own: dict[str, tuple[Any, int]] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.extend(_merge_sources(loader, value_node))
            continue
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is not a string", key_node.start_mark)
        if key in own:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {own[key][1]})", key_node.start_mark)
        own[key] = (loader.construct_object(value_node, deep=True), line)  # type: ignore[no-untyped-call]
    for key, value, line in merged:
        if key not in out:  # the first source that has a key wins
            out[key], out.lines[key] = value, line
    for key, (value, line) in own.items():  # and the mapping's own keys win over every source
        out[key], out.lines[key] = value, line
    return out


def _merge_sources(loader: Any, node: Node) -> list[tuple[Any, Any, int]]:
    sources = node.value if isinstance(node, SequenceNode) else [node]
    out: list[tuple[Any, Any, int]] = []
    for src in sources:
        if not isinstance(src, MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a merge key (<<) takes a mapping or a list of mappings", src.start_mark)
        m = loader.construct_object(src, deep=True)  # type: ignore[no-untyped-call]
        out.extend((k, v, m.lines.get(k, m.line)) for k, v in m.items())
    return out


def _construct_seq(loader: Any, node: SequenceNode) -> LineSeq:
    out = LineSeq()
    out.line = node.start_mark.line + 1
    out.lines = []
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))  # type: ignore[no-untyped-call]
        out.lines.append(item.start_mark.line + 1)
    return out


class PyLoader(_Bounded, yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._init_bounds()


Loader: type[_Bounded] = PyLoader
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class CLoader(_Bounded, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's events (about 10x faster than PyYAML's scanner) through our composer above."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)  # type: ignore[no-untyped-call]
            yaml.constructor.SafeConstructor.__init__(self)  # type: ignore[no-untyped-call]
            yaml.resolver.Resolver.__init__(self)  # type: ignore[no-untyped-call]
            self._init_bounds()

    Loader = CLoader

for _cls in {PyLoader, Loader}:
    _cls.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)  # type: ignore[attr-defined]
    _cls.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)  # type: ignore[attr-defined]


class YAMLError(ValueError):
    """Not YAML, or beyond a bound: `line` (1-based, 0 when unknown) and `problem`."""

    def __init__(self, line: int, problem: str) -> None:
        self.line, self.problem = line, problem
        super().__init__(f"{line}: {problem}" if line else problem)


def load(text: str, loader_class: type[_Bounded] | None = None) -> Any:
    """One YAML document, bounded; raises YAMLError(line, problem) for anything else."""
    if len(text) > MAX_BYTES:
        raise YAMLError(0, f"larger than {MAX_BYTES >> 20} MiB")
    loader: Any = (loader_class or Loader)(text)  # type: ignore[call-arg]
    try:
        node = loader.get_single_node()  # type: ignore[no-untyped-call]
        if node is None:
            return None
        return loader.construct_document(node)  # type: ignore[no-untyped-call]
    except YAMLLimitError as e:
        raise YAMLError(e.line, e.problem) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        if "maximum nesting depth" in str(e.problem):  # libyaml's own bound, below ours in a flow
            raise YAMLError(line, f"nested more than {MAX_DEPTH} levels deep") from None
        raise YAMLError(line, f"not valid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise YAMLError(0, f"not valid YAML: {e}") from None
    except (ValueError, OverflowError) as e:  # a constructor's conversion (e.g. int of a huge literal)
        raise YAMLError(0, f"not valid YAML: {e}") from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
