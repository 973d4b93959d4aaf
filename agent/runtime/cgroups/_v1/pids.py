"""v1 pids: the process limit."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats


class Pids:
    name = "pids"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        _fs.write(os.path.join(path, "pids.max"), str(r.pids_limit) if r.pids_limit else "max")

    def stat(self, path: str, s: Stats) -> None:
        s.pids_current = _fs.read_int(os.path.join(path, "pids.current"))
        s.pids_limit = _fs.read_int(os.path.join(path, "pids.max"))
