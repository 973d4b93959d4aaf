"""Regenerates docker-api-v1.45.json from moby's swagger (the schemas tests/kernel/test_dockerapi_swagger.py
checks our JSON against):  python tests/data/make_docker_swagger.py PATH/TO/moby/api/docs/v1.45.yaml

Only the GET responses we serve and the definitions they reach are kept, without descriptions
and examples (the full file is 430 kB; moby's is Apache-2.0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

PATHS = ["/containers/json", "/containers/{id}/json", "/images/json", "/images/{name}/json", "/volumes",
         "/volumes/{name}", "/networks", "/networks/{id}", "/info", "/version", "/system/df"]
DROP = {"description", "example", "x-go-name", "title"}


def strip(v: Any, refs: set[str]) -> Any:
    if isinstance(v, dict):
        if "$ref" in v:
            refs.add(v["$ref"].rsplit("/", 1)[1])
        return {k: strip(x, refs) for k, x in v.items()
                if k not in DROP or (k == "title" and not isinstance(x, str))}
    if isinstance(v, list):
        return [strip(x, refs) for x in v]
    return v


def main(src: str) -> None:
    doc = yaml.safe_load(Path(src).read_text())
    refs: set[str] = set()
    out: dict[str, Any] = {"source": "moby/moby api/docs/v1.45.yaml (b985e231)", "responses": {}, "definitions": {}}
    for p in PATHS:
        out["responses"][p] = strip(doc["paths"][p]["get"]["responses"][200]["schema"], refs)
    done: set[str] = set()
    while refs - done:
        name = sorted(refs - done)[0]
        done.add(name)
        out["definitions"][name] = strip(doc["definitions"][name], refs)
    Path(__file__).with_name("docker-api-v1.45.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
