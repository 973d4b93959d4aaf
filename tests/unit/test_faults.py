"""The fault-injection hooks (common/faults.py) do nothing unless DOCKYARD_FAULT_INJECTION=1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from common.faults import PAUSE_AFTER_DUMP_FILE, Faults


def test_off_unless_the_environment_says_so(tmp_path: Path) -> None:
    assert not Faults.from_env({}).enabled and not Faults.from_env({"DOCKYARD_FAULT_INJECTION": "yes"}).enabled
    (tmp_path / PAUSE_AFTER_DUMP_FILE).write_text("5")
    off = Faults.from_env({})
    t0 = time.monotonic()
    asyncio.run(off.pause_after_dump(tmp_path))
    assert time.monotonic() - t0 < 1
    assert off.migration_pause({"dockyard.fault.pause": "running:9"}, "running") == 0


def test_on_pauses_where_asked(tmp_path: Path) -> None:
    on = Faults.from_env({"DOCKYARD_FAULT_INJECTION": "1"})
    assert on.migration_pause({"dockyard.fault.pause": "running:1.5"}, "running") == 1.5
    assert on.migration_pause({"dockyard.fault.pause": "running:1.5"}, "finishing") == 0
    assert on.migration_pause({}, "running") == 0
    (tmp_path / PAUSE_AFTER_DUMP_FILE).write_text("0.2")
    t0 = time.monotonic()
    asyncio.run(on.pause_after_dump(tmp_path))
    assert time.monotonic() - t0 >= 0.2
