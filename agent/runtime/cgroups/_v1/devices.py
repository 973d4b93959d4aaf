"""v1 devices: deny every device, then allow the container's rules (devices.deny, devices.allow).

A new cgroup inherits its parent's list (all allowed, under the host's root). Writing "a" to
devices.deny empties the list and makes it deny by default; each rule then goes to devices.allow.
An update that changes nothing writes nothing: the deny-all step would refuse a running
container's opens for an instant.
"""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats


class Devices:
    name = "devices"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        wanted = [str(rule) for rule in r.devices]
        if "a *:* rwm" in wanted:
            wanted = ["a *:* rwm"]
        current = _fs.read(os.path.join(path, "devices.list")).split("\n")
        if sorted(x for x in current if x) == sorted(set(wanted)):
            return
        if wanted == ["a *:* rwm"]:
            _fs.write(os.path.join(path, "devices.allow"), "a")
            return
        _fs.write(os.path.join(path, "devices.deny"), "a")
        allow = os.path.join(path, "devices.allow")
        for rule in wanted:
            _fs.write(allow, rule)

    def stat(self, path: str, s: Stats) -> None:
        pass


def rules(path: str) -> list[str]:
    """devices.list of a cgroup: what its processes may open now."""
    return [x for x in _fs.read(os.path.join(path, "devices.list")).split("\n") if x]
