"""Fault injection for tests, in one object: production code calls a hook, which does nothing unless
the process was started with DOCKYARD_FAULT_INJECTION=1 (read once, at its start).

- ``pause_after_dump(root)``: the agent, after a migration's CRIU dump and before the archive goes,
  sleeps the seconds written in ``<root>/fault-pause-after-dump`` (tests kill the agent there).
- ``migration_pause(labels, phase)``: the scheduler, at a migration's phase (``running``: before the
  agent is called; ``finishing``: after the agent moved it, before the task moves in etcd), the
  seconds of the service label ``dockyard.fault.pause=<phase>:<seconds>``, else 0.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PAUSE_AFTER_DUMP_FILE = "fault-pause-after-dump"
PAUSE_LABEL = "dockyard.fault.pause"


@dataclass(frozen=True)
class Faults:
    enabled: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Faults:
        return cls(enabled=env.get("DOCKYARD_FAULT_INJECTION") == "1")

    async def pause_after_dump(self, root: Path) -> None:
        path = root / PAUSE_AFTER_DUMP_FILE
        if self.enabled and path.exists():
            await asyncio.sleep(float(path.read_text() or 0))

    def migration_pause(self, labels: Mapping[str, str], phase: str) -> float:
        if not self.enabled:
            return 0.0
        at, _, secs = labels.get(PAUSE_LABEL, "").partition(":")
        return float(secs or 0) if at == phase else 0.0


FAULTS = Faults.from_env()
