"""v1 blkio: proportional weight and per-device byte rate throttles."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import DeviceRate, Resources, Stats

# Defaults the kernel gives a new cgroup: CFQ's blkio.weight 500, BFQ's blkio.bfq.weight 100.
_WEIGHT_FILES = (("blkio.weight", 500), ("blkio.bfq.weight", 100))


class Blkio:
    name = "blkio"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        for f, default in _WEIGHT_FILES:
            wf = os.path.join(path, f)
            if _fs.exists(wf):
                _fs.write(wf, str(r.blkio_weight or default))
                break
        _throttle(path, "blkio.throttle.read_bps_device", "device_read_bps", r.device_read_bps)
        _throttle(path, "blkio.throttle.write_bps_device", "device_write_bps", r.device_write_bps)

    def stat(self, path: str, s: Stats) -> None:
        # The throttle counters count every bio, whichever scheduler (or none) the device uses.
        text = _fs.read(os.path.join(path, "blkio.throttle.io_service_bytes_recursive"))
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Read":
                s.blkio_read_bytes += int(parts[2])
            elif len(parts) == 3 and parts[1] == "Write":
                s.blkio_write_bytes += int(parts[2])


def _throttle(path: str, file: str, field: str, rates: tuple[DeviceRate, ...]) -> None:
    f = os.path.join(path, file)
    wanted = {}
    for d in rates:
        major, minor = _fs.block_device(field, d.path)
        wanted[f"{major}:{minor}"] = d.rate
    # Lines are "MAJ:MIN RATE"; writing rate 0 removes a device's throttle.
    for line in _fs.read(f).splitlines():
        dev = line.split()[0] if line.split() else ""
        if dev and dev not in wanted:
            _fs.write(f, f"{dev} 0")
    for dev, rate in wanted.items():
        _fs.write(f, f"{dev} {rate}")
