"""v1 devices: deny every device, then allow the container's rules (devices.deny, devices.allow).

A new cgroup inherits its parent's list (all allowed, under the host's root). Writing "a" to
devices.deny empties the list and makes it deny by default; each rule then goes to devices.allow.
A cgroup that already denies by default (a spare taken over, an update) is moved by the
difference instead, new rules allowed before old ones are denied: its processes (a pre-cloned
init making its /dev) never see an instant of deny-all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .. import _fs
from .._resources import Resources, Stats


class Devices:
    name = "devices"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        wanted = _merged(str(rule) for rule in r.devices)
        current = _merged(rules(path))
        if wanted == current:
            return
        allow = os.path.join(path, "devices.allow")
        deny = os.path.join(path, "devices.deny")
        if "a *:*" in wanted:
            if "a *:*" in current:
                return
            # Every device, as two wildcard rules: writing "a" to devices.allow empties the list
            # before it flips the default, and an open or mknod in between is refused.
            wanted = {"c *:*": "rwm", "b *:*": "rwm"}
            if wanted == current:
                return
        if "a *:*" in current:
            _fs.write(deny, "a")
            current = {}
        for key, access in wanted.items():
            if access != current.get(key, ""):
                _fs.write(allow, f"{key} {access}")
        for key, access in current.items():
            extra = "".join(c for c in access if c not in wanted.get(key, ""))
            if extra:
                _fs.write(deny, f"{key} {extra}")  # (the kernel takes just these bits off the entry)

    def stat(self, path: str, s: Stats) -> None:
        pass


def rules(path: str) -> list[str]:
    """devices.list of a cgroup: what its processes may open now."""
    return [x for x in _fs.read(os.path.join(path, "devices.list")).split("\n") if x]


def _merged(lines: Iterable[str]) -> dict[str, str]:
    """"TYPE MAJ:MIN" -> access, entries of one device merged as the kernel merges them."""
    out: dict[str, str] = {}
    for line in lines:
        key, _, access = line.rpartition(" ")
        have = out.get(key, "") + access
        out[key] = "".join(c for c in "rwm" if c in have)
    return out
