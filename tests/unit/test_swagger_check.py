"""The swagger judge (tests/swagger.py) catches what it is for: a wrong type, an unknown key, a
value outside an enum, a null scalar; and takes Go's null slices and maps."""

from __future__ import annotations

from tests.swagger import problems, response_problems

VOLUME = {"Name": "v", "Driver": "local", "Mountpoint": "/x", "CreatedAt": "2026-01-01T00:00:00Z",
          "Labels": None, "Scope": "local", "Options": None}


def test_a_good_volume_passes_and_each_fault_is_named() -> None:
    assert response_problems("/volumes/{name}", VOLUME) == []
    assert response_problems("/volumes/{name}", {**VOLUME, "Scope": "galaxy"}) == [
        "/volumes/{name}.Scope: 'galaxy' is not one of ['local', 'global']"]
    assert response_problems("/volumes/{name}", {**VOLUME, "Driver": 3}) == ["/volumes/{name}.Driver: 3 is not a string"]
    assert response_problems("/volumes/{name}", {**VOLUME, "Bogus": 1}) == [
        "/volumes/{name}.Bogus: not in Docker's schema"]
    assert response_problems("/volumes/{name}", {**VOLUME, "Name": None}) == ["/volumes/{name}.Name: null, want string"]


def test_refs_arrays_and_maps() -> None:
    schema = {"type": "array", "items": {"$ref": "#/definitions/Volume"}}
    assert problems([VOLUME, {**VOLUME, "Labels": {"a": 1}}], schema) == ["$[1].Labels.a: 1 is not a string"]
    assert problems({"Volumes": "x"}, {"$ref": "#/definitions/VolumeListResponse"}) == [
        "$.Volumes: str, want array"]
