"""Checks a JSON value against a schema of Docker's swagger (tests/data/docker-api-v1.45.json):
types, enums, and keys the schema does not know. Swagger 2.0 is not quite JSON Schema, and Go
encodes a nil slice or map as null, so null is allowed wherever an array or object is (as every
Docker client must take it); a scalar may be null only when the schema says x-nullable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Go pointers in moby's structs: null when unset, though the schema says only "integer" (dockerd
# itself sends them so).
GO_POINTERS = {"MemorySwappiness", "OomKillDisable", "PidsLimit", "Init"}
SCHEMAS = json.loads((Path(__file__).parent / "data" / "docker-api-v1.45.json").read_text())


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema and len(schema["allOf"]) == 1 and "properties" not in schema:
        return _resolve(schema["allOf"][0])   # swagger's way to annotate a $ref
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}}
        for part in schema["allOf"]:
            part = _resolve(part)
            merged["properties"].update(part.get("properties", {}))
            if "additionalProperties" in part:
                merged["additionalProperties"] = part["additionalProperties"]
        merged["properties"].update(schema.get("properties", {}))
        return merged
    return schema


def problems(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every mismatch, each with its JSON path."""
    s = _resolve(schema)
    kind = s.get("type") or ("object" if "properties" in s or "additionalProperties" in s else None)
    if value is None:
        if kind in ("array", "object", None) or s.get("x-nullable") or where.rsplit(".", 1)[-1] in GO_POINTERS:
            return []
        return [f"{where}: null, want {kind}"]
    out: list[str] = []
    if "enum" in s and value not in s["enum"] and value != "":
        out.append(f"{where}: {value!r} is not one of {s['enum']}")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, want object"]
        props = s.get("properties", {})
        extra = s.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                out += problems(v, props[k], f"{where}.{k}")
            elif isinstance(extra, dict):
                out += problems(v, extra, f"{where}.{k}")
            elif extra is not True and props:
                out.append(f"{where}.{k}: not in Docker's schema")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, want array"]
        for i, v in enumerate(value):
            out += problems(v, s.get("items", {}), f"{where}[{i}]")
    elif kind == "string" and not isinstance(value, str):
        out.append(f"{where}: {value!r} is not a string")
    elif kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        out.append(f"{where}: {value!r} is not an integer")
    elif kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        out.append(f"{where}: {value!r} is not a number")
    elif kind == "boolean" and not isinstance(value, bool):
        out.append(f"{where}: {value!r} is not a boolean")
    return out


def response_problems(path: str, value: Any) -> list[str]:
    return problems(value, SCHEMAS["responses"][path], path)
