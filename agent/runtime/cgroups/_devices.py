"""Which device nodes a container may open: one rule type for both drivers.

A container's root holds CAP_MKNOD (as with docker), so it can make a node for any device; the
devices cgroup (v1: devices.deny/devices.allow; v2: a BPF_PROG_TYPE_CGROUP_DEVICE program, see
_v2/devices.py) is what refuses the open. Everything is denied but what a rule allows: rules only
allow, as docker's --device and --device-cgroup-rule do, so both drivers mean the same by them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import CgroupError

ANY = -1
_ACCESS_ORDER = "rwm"


@dataclass(frozen=True)
class DeviceRule:
    """Allow `access` (a subset of "rwm": read, write, mknod) on devices of `type` "c" (character)
    or "b" (block) with this major and minor number (ANY = every one). Type "a" is every device,
    with every access (--privileged)."""

    type: str
    major: int = ANY
    minor: int = ANY
    access: str = "rwm"

    def validate(self, field: str = "devices") -> None:
        if self.type not in ("a", "b", "c"):
            _bad(field, f"device type {self.type!r} must be 'a', 'b' or 'c'")
        for what, n in (("major", self.major), ("minor", self.minor)):
            if n < ANY or n > 0xFFFFF:
                _bad(field, f"{self}: {what} {n} is not a device number (0..1048575, or * for any)")
        if not self.access or set(self.access) - set(_ACCESS_ORDER) or len(set(self.access)) != len(self.access):
            _bad(field, f"device access {self.access!r} must be a combination of r, w and m")
        if self.type == "a" and (self.major, self.minor, self.canonical_access()) != (ANY, ANY, "rwm"):
            _bad(field, "a rule for all devices ('a') takes no numbers and all of rwm")

    def canonical_access(self) -> str:
        return "".join(c for c in _ACCESS_ORDER if c in self.access)

    def __str__(self) -> str:
        """devices.allow's syntax ("c 1:3 rwm", "b *:* m", "a *:* rwm"), as devices.list prints it."""
        def n(x: int) -> str:
            return "*" if x == ANY else str(x)

        return f"{self.type} {n(self.major)}:{n(self.minor)} {self.canonical_access()}"

    @classmethod
    def parse(cls, text: str, field: str = "devices") -> DeviceRule:
        """The syntax of __str__ (docker's --device-cgroup-rule); "a" alone means all."""
        parts = text.split()
        if parts == ["a"]:
            parts = ["a", "*:*", "rwm"]
        if len(parts) != 3 or ":" not in parts[1]:
            _bad(field, f"{text!r} is not a device rule ('TYPE MAJOR:MINOR ACCESS', e.g. 'c 1:3 rwm')")
        major_s, _, minor_s = parts[1].partition(":")
        try:
            major = ANY if major_s == "*" else int(major_s)
            minor = ANY if minor_s == "*" else int(minor_s)
        except ValueError:
            _bad(field, f"{text!r}: {parts[1]!r} must be MAJOR:MINOR numbers or *")
        rule = cls(parts[0], major, minor, parts[2])
        rule.validate(field)
        return rule

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, "major": self.major, "minor": self.minor, "access": self.access}


def _bad(field: str, why: str) -> None:
    raise CgroupError(f"{field}: {why}", op="validate", field=field)


# Docker's default (runc's AllowedDevices without tun/tap): mknod of any node; read and write of
# null, zero, full, random, urandom, tty, console, ptmx and the pty slaves (/dev/pts/*).
DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", ANY, ANY, "m"),
    DeviceRule("b", ANY, ANY, "m"),
    DeviceRule("c", 1, 3),    # null
    DeviceRule("c", 1, 5),    # zero
    DeviceRule("c", 1, 7),    # full
    DeviceRule("c", 1, 8),    # random
    DeviceRule("c", 1, 9),    # urandom
    DeviceRule("c", 5, 0),    # tty
    DeviceRule("c", 5, 1),    # console
    DeviceRule("c", 5, 2),    # ptmx
    DeviceRule("c", 136, ANY),  # pts
)
ALL_DEVICES: tuple[DeviceRule, ...] = (DeviceRule("a"),)
