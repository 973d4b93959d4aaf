"""v1 devices: joined so a container inherits its parent's device rules; the rules are set elsewhere."""

from __future__ import annotations

from .._resources import Resources, Stats


class Devices:
    name = "devices"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        pass

    def stat(self, path: str, s: Stats) -> None:
        pass
