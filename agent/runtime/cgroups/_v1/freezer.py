"""v1 freezer: FROZEN/THAWED through freezer.state, waiting out the FREEZING state."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats


class Freezer:
    name = "freezer"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        pass

    def stat(self, path: str, s: Stats) -> None:
        pass


def state(path: str) -> str:
    return _fs.read(os.path.join(path, "freezer.state")).strip()


def set_state(path: str, want: str, timeout: float) -> None:
    f = os.path.join(path, "freezer.state")

    def reached() -> bool:
        if state(path) == want:
            return True
        # A task that was forking or in an uninterruptible wait can leave the cgroup FREEZING;
        # writing again retries the tasks not yet frozen (runc's freezer does the same).
        _fs.write(f, want)
        return False

    _fs.write(f, want)
    _fs.poll(reached, timeout=timeout, what="freeze" if want == "FROZEN" else "thaw", path=f)
