"""v2 io: weight (BFQ's io.bfq.weight when present, else io.weight) and io.max byte rates."""

from __future__ import annotations

import os

from .. import _fs
from .._resources import Resources, Stats

DEFAULT_WEIGHT = 100


def blkio_to_io_weight(weight: int) -> int:
    """runc's ConvertBlkIOToIOWeightValue: blkio 10..1000 onto io.weight 1..10000."""
    if weight == 0:
        return DEFAULT_WEIGHT
    return 1 + (weight - 10) * 9999 // 990


class Io:
    name = "io"

    def prepare(self, path: str) -> None:
        pass

    def apply(self, path: str, r: Resources) -> None:
        bfq = os.path.join(path, "io.bfq.weight")
        if _fs.exists(bfq):
            # BFQ takes the blkio scale (1..1000) unchanged, as runc writes it.
            _fs.write(bfq, str(r.blkio_weight or DEFAULT_WEIGHT))
        else:
            _fs.write(os.path.join(path, "io.weight"), f"default {blkio_to_io_weight(r.blkio_weight)}")
        self._max(path, r)

    def _max(self, path: str, r: Resources) -> None:
        f = os.path.join(path, "io.max")
        wanted: dict[str, dict[str, str]] = {}
        for field, key, rates in (
            ("device_read_bps", "rbps", r.device_read_bps),
            ("device_write_bps", "wbps", r.device_write_bps),
        ):
            for d in rates:
                major, minor = _fs.block_device(field, d.path)
                wanted.setdefault(f"{major}:{minor}", {"rbps": "max", "wbps": "max"})[key] = str(d.rate)
        # One line per device; a device we no longer throttle is reset explicitly.
        for line in _fs.read(f).splitlines():
            dev = line.split()[0] if line.split() else ""
            if dev and dev not in wanted:
                _fs.write(f, f"{dev} rbps=max wbps=max")
        for dev, v in wanted.items():
            _fs.write(f, f"{dev} rbps={v['rbps']} wbps={v['wbps']}")

    def stat(self, path: str, s: Stats) -> None:
        for line in _fs.read(os.path.join(path, "io.stat")).splitlines():
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                if k == "rbytes":
                    s.blkio_read_bytes += int(v)
                elif k == "wbytes":
                    s.blkio_write_bytes += int(v)
