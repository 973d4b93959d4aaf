"""Regenerates the Python code for every protos/*.proto: `python -m protos.generate`.

The generated *_pb2.py, *_pb2_grpc.py and *.pyi files are committed; tests/unit/test_protos.py fails
when they are older than their .proto (run this, then commit).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def protos() -> list[Path]:
    return sorted((ROOT / "protos").glob("*.proto"))


def generate(out: Path = ROOT) -> None:
    from grpc_tools import protoc

    for proto in protos():
        rel = proto.relative_to(ROOT)
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--pyi_out={out}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {rel}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
