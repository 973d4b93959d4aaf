"""The committed generated code must match what protos/generate.py makes from the .proto files."""

import tempfile
from pathlib import Path

from protos import generate


def test_generated_code_is_fresh() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate.generate(Path(tmp))
        produced = sorted((Path(tmp) / "protos").iterdir())
        assert produced, "protoc produced nothing"
        for fresh in produced:
            committed = generate.ROOT / "protos" / fresh.name
            assert committed.exists(), f"{committed.name} is missing: run python -m protos.generate"
            assert committed.read_bytes() == fresh.read_bytes(), (
                f"protos/{fresh.name} is stale: run python -m protos.generate and commit"
            )
