"""Read-only access to a merged stack of layer directories (top first), by overlay's rules, without
mounting: the build context (one directory) and images' filesystems (COPY --from, /etc/passwd for
--chown, the parents a COPY writes into) are both read through it.

Paths are lists of components relative to the root. ``resolve`` follows symlinks inside the root the
way a chroot would (``..`` stops at the root), or, with ``strict``, refuses any path or link that
leads out of the root (the build context's rule: "forbidden path outside the build context").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from agent.errors import InvalidArgument

from .errors import ImageError
from .layers import OPAQUE_XATTR

MAX_LINKS = 40


class OutsideRoot(ImageError, InvalidArgument):
    """A path or symlink that leads outside the tree's root (the build context)."""


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class MergedTree:
    def __init__(self, layers: Sequence[Path]) -> None:
        self.layers = [Path(p) for p in layers]

    def _in_layer(self, d: Path, parts: Sequence[str]) -> tuple[str, Path, os.stat_result | None, bool]:
        """How layer ``d`` sees ``parts``: ("found"|"hidden"|"absent", path, stat, stops_lower)."""
        p = d
        stops = False
        for comp in parts[:-1]:
            p = p / comp
            st = _lstat(p)
            if st is None:
                return "absent", p, None, stops
            if not stat.S_ISDIR(st.st_mode):
                return "hidden", p, None, True
            if _opaque(p):
                stops = True
        p = d.joinpath(*parts) if parts else d
        st = _lstat(p)
        if st is None:
            return "absent", p, None, stops
        if _is_whiteout(st):
            return "hidden", p, None, True
        return "found", p, st, stops

    def lookup(self, parts: Sequence[str]) -> tuple[Path, os.stat_result] | None:
        """The top-most entry at ``parts`` (not following a final symlink), or None."""
        for d in self.layers:
            state, p, st, stops = self._in_layer(d, parts)
            if state == "found" and st is not None:
                return p, st
            if state == "hidden" or stops:
                return None
        return None

    def listdir(self, parts: Sequence[str]) -> list[str]:
        names: dict[str, bool] = {}  # name -> visible
        for d in self.layers:
            state, p, st, stops = self._in_layer(d, parts)
            if state == "hidden":
                break
            if state == "found" and st is not None:
                if not stat.S_ISDIR(st.st_mode):
                    break
                for name in os.listdir(p):
                    if name in names:
                        continue
                    est = _lstat(p / name)
                    names[name] = est is not None and not _is_whiteout(est)
                if _opaque(p):
                    break
            if stops:
                break
        return sorted(n for n, visible in names.items() if visible)

    def resolve(self, parts: Sequence[str], strict: bool = False, follow_final: bool = True) -> list[str]:
        """Follow symlinks in ``parts`` inside the root; returns the resolved components."""
        todo = list(parts)
        done: list[str] = []
        links = 0
        while todo:
            comp = todo.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if not done:
                    if strict:
                        raise OutsideRoot("path leads outside the root")
                    continue
                done.pop()
                continue
            found = self.lookup([*done, comp])
            if found is not None and stat.S_ISLNK(found[1].st_mode) and (todo or follow_final):
                links += 1
                if links > MAX_LINKS:
                    raise ImageError(f"too many levels of symbolic links at /{'/'.join([*done, comp])}")
                target = os.readlink(found[0])
                if target.startswith("/"):
                    if strict:
                        raise OutsideRoot(f"symlink /{'/'.join([*done, comp])} -> {target} leads outside the root")
                    done = []
                todo = [*target.split("/"), *todo]
                continue
            done.append(comp)
        return done


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def clean(path: str) -> str:
    """Lexically clean an absolute path ("/a/../b/" -> "/b"), as Go's path.Clean does."""
    out: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
            continue
        out.append(p)
    return "/" + "/".join(out)
