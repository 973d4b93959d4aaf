"""docker's --device syntax, shared by the CLI, the stack files (scheduler) and the agent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DeviceMapping:
    """--device HOST[:CONTAINER][:PERMISSIONS], as docker's HostConfig.Devices."""

    path_on_host: str
    path_in_container: str = ""   # "" = path_on_host
    permissions: str = "rwm"

    @classmethod
    def parse(cls, text: str) -> DeviceMapping:
        """docker's --device syntax (opts.ParseDevice), also a stack file's `devices:` entries;
        ValueError with docker's words. Where the host's node is, is checked on the node."""
        def mode(x: str) -> bool:
            return bool(x) and not set(x) - set("rwm") and len(set(x)) == len(x)

        parts = text.split(":")
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ValueError(f"invalid device specification: {text}")
        src, dst, perms = parts[0], "", "rwm"
        if len(parts) == 3:
            dst, perms = parts[1], parts[2]
            if not mode(perms):
                raise ValueError(f"invalid device mode {perms!r} in {text} (a combination of r, w and m)")
        elif len(parts) == 2:
            if mode(parts[1]):
                perms = parts[1]
            else:
                dst = parts[1]
        for path in (src, dst or src):
            if not path.startswith("/"):
                raise ValueError(f"bad format for path: {path}")
        return cls(src, dst or src, perms)
