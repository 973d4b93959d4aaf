"""The one exception the cgroups package raises."""

from __future__ import annotations


class CgroupError(Exception):
    """A cgroup operation failed, or a Resources value is invalid.

    The message always names what was being done and where ("write '50000 100000' to
    /sys/fs/cgroup/x/cpu.max: Invalid argument") or, for validation, the field
    ("memory: 1024 is below the minimum of 6 MiB"). The parts are also kept as attributes so
    callers can map them (errno to a gRPC status, field to a CLI flag) without parsing text.
    """

    def __init__(
        self,
        message: str,
        *,
        op: str = "",
        path: str = "",
        errno: int | None = None,
        field: str = "",
    ) -> None:
        super().__init__(message)
        self.op = op
        self.path = path
        self.errno = errno
        self.field = field
