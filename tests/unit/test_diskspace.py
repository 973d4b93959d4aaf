"""agent/diskspace.py: when the agent's disk is too full for new work, and the words it says."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent import diskspace, status
from scheduler import codec
from scheduler.model import Node

MiB = 1 << 20


def statvfs(total_mib: int, free_mib: int) -> Any:
    """A statvfs result for a filesystem of 4 KiB blocks."""
    return os.statvfs_result((4096, 4096, total_mib * 256, free_mib * 256, free_mib * 256, 0, 0, 0, 0, 255))


@pytest.mark.parametrize(("total", "free", "keep", "full"), [
    (1000, 30, 5.0, True),      # 3 % free, 5 % kept: full
    (1000, 50, 5.0, False),     # exactly 5 %: room
    (1000, 400, 5.0, False),
    (1000, 0, 0.0, False),      # 0 turns the check off
    (1000, 80, 10.0, True),
])
def test_pressure_says_when_and_why(monkeypatch: pytest.MonkeyPatch, total: int, free: int, keep: float,
                                    full: bool) -> None:
    monkeypatch.setattr(diskspace.os, "statvfs", lambda path: statvfs(total, free))
    why = diskspace.pressure(Path("/var/lib/dockyard"), keep)
    assert bool(why) is full
    if full:
        assert why.startswith("disk almost full: /var/lib/dockyard has ")
        assert f"{free * MiB / MiB:.1f} MiB free of" in why and f"({100 * free / total:.1f} %)" in why
        assert f"below the {keep:g} % this agent keeps free (--min-free-disk)" in why


def test_a_full_disk_refuses_with_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskspace.os, "statvfs", lambda path: statvfs(1000, 10))
    with pytest.raises(diskspace.DiskFull) as e:
        diskspace.refuse_if_full(Path("/r"), 5.0, "create a container")
    assert str(e.value).startswith("cannot create a container: disk almost full: /r has 10.0 MiB free of 1000.0 MiB")
    assert status.code(e.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    monkeypatch.setattr(diskspace.os, "statvfs", lambda path: statvfs(1000, 500))
    diskspace.refuse_if_full(Path("/r"), 5.0, "create a container")  # room again: no error


def test_the_real_filesystem_answers(tmp_path: Path) -> None:
    assert diskspace.pressure(tmp_path, 0.0) == ""
    assert diskspace.pressure(tmp_path, 99.9999) or os.statvfs(tmp_path).f_bavail == os.statvfs(tmp_path).f_blocks


def test_a_nodes_pressure_survives_etcd() -> None:
    n = Node("n1", pressure="disk almost full: /x has 1 MiB free")
    assert codec.decode(Node, codec.encode(n)).pressure == n.pressure
    assert codec.decode(Node, codec.encode(Node("n2"))).pressure == ""
