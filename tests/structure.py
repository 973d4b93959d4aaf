"""The structure figures issue 12 reports, measured the same way each time:
`python -m tests.structure` prints the largest classes, the longest functions, the import cycles
between the project's modules (imports at module level only, as those are what make a cycle bite
at start-up), imports made inside functions, and the `dict[str, Any]` and `Any`
counts of hand-written code (generated *_pb2* files left out). That only common/transport.py makes
gRPC channels and servers is a test: tests/unit/test_transport.py."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "scheduler", "deploy", "common", "protos")


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if "_pb2" not in p.name and "__pycache__" not in p.parts)


def module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(tree: ast.Module, mod: str, is_pkg: bool, mods: dict[str, Path]) -> set[str]:
    """What `mod` imports when it loads. `from pkg import sub` is an edge to pkg.sub when that is a
    module (as pylint's cyclic-import counts it), else to pkg."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If):     # `if TYPE_CHECKING:` imports do not run
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for a in node.names:
                out.add(f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    files = sources()
    mods = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    classes: list[tuple[int, str]] = []
    funcs: list[tuple[int, str]] = []
    text_all = ""
    inner: set[tuple[str, int]] = set()
    for mod, p in mods.items():
        text = p.read_text()
        text_all += text
        tree = ast.parse(text)
        graph[mod] = {m for m in top_level_imports(tree, mod, p.name == "__init__.py", mods) if m in mods and m != mod}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name}"))  # type: ignore[operator]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner.update((mod, x.lineno) for x in ast.walk(node) if isinstance(x, ast.Import | ast.ImportFrom))
                funcs.append((node.end_lineno - node.lineno + 1, f"{mod}:{node.name}"))  # type: ignore[operator]
    print(f"files: {len(files)}, lines: {text_all.count(chr(10))}")
    print("largest classes:")
    for n, name in sorted(classes, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")
    print("longest functions:")
    for n, name in sorted(funcs, reverse=True)[:10]:
        print(f"  {n:5d}  {name}")
    cyc = cycles(graph)
    print(f"import cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    print(f"imports inside functions: {len(inner)}")
    any_word = len(re.findall(r"\bAny\b", text_all))
    broad = len(re.findall(r"except Exception\b", text_all))
    print(f"dict[str, Any]: {text_all.count('dict[str, Any]')}")
    print(f"Any (as a word): {any_word}")
    print(f"except Exception: {broad}")


if __name__ == "__main__":
    main()
