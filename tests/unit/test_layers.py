"""What may import what (common/README.md): the scheduler never imports the agent, the agent never
the scheduler or the CLI, common/ nothing of ours but protos. Imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "scheduler": ("agent", "deploy"),
    "agent": ("scheduler", "deploy"),
    "common": ("agent", "scheduler", "deploy"),
}


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = [f"{path.relative_to(REPO)}:{line}: imports {name}"
           for path in sorted((REPO / package).rglob("*.py")) if "_pb2" not in path.name
           for line, name in imports(path) if name.split(".")[0] in FORBIDDEN[package]]
    assert not bad, f"{package}/ may not import {', '.join(FORBIDDEN[package])}:\n" + "\n".join(bad)
