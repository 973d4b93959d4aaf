""".dockerignore, as docker's client applies it (moby/patternmatcher): one pattern a line, ``#``
comments, ``!`` exceptions, ``**`` for any number of directories, Go's filepath.Match otherwise; the
last matching pattern wins, and a pattern that matches a directory excludes everything below it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    text: str
    exclusion: bool          # a "!" line: re-include what matches
    regex: re.Pattern[str]
    dirs: tuple[str, ...]    # the pattern's components (for may_include_below)


def _clean(p: str) -> str:
    parts: list[str] = []
    for comp in p.split("/"):
        if comp in ("", "."):
            continue
        if comp == ".." and parts:
            parts.pop()
            continue
        parts.append(comp)
    return "/".join(parts)


def _compile(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":
                    out += "(.*/)?"
                    i += 1
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


class Matcher:
    def __init__(self, lines: list[str]) -> None:
        self.patterns: list[Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            text = _clean(line)
            if not text:
                continue
            self.patterns.append(Pattern(text, exclusion, _compile(text), tuple(text.split("/"))))

    @classmethod
    def from_file(cls, path: Path) -> Matcher:
        try:
            return cls(path.read_text().splitlines())
        except FileNotFoundError:
            return cls([])

    def excluded(self, rel: str) -> bool:
        rel = _clean(rel)
        parents = rel.split("/")
        result = False
        for p in self.patterns:
            match = bool(p.regex.match(rel))
            if not match:
                # A pattern that matches a parent directory matches everything below it.
                for n in range(1, len(parents)):
                    if p.regex.match("/".join(parents[:n])):
                        match = True
                        break
            if match:
                result = not p.exclusion
        return result

    def may_include_below(self, rel_dir: str) -> bool:
        """Whether an exception pattern could re-include something under an excluded directory."""
        prefix = _clean(rel_dir).split("/")
        for p in self.patterns:
            if not p.exclusion:
                continue
            if "**" in p.text:
                return True
            if len(p.dirs) > len(prefix) and all(
                _compile(pd).match(d) for pd, d in zip(p.dirs, prefix, strict=False)
            ):
                return True
        return False


def remove_ignored(root: Path, keep: tuple[str, ...] = ()) -> int:
    """Apply root/.dockerignore to an unpacked context on the daemon's side, as dockerd does for
    a client that sent more than it should: every excluded entry is removed (the .dockerignore and
    the Dockerfile too, when they are excluded; `keep` names paths to spare). Symlinks are removed,
    never followed. Returns how many entries went."""
    import os
    import shutil

    matcher = Matcher.from_file(root / ".dockerignore")
    if not matcher.patterns:
        return 0
    gone = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in list(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            path = os.path.join(dirpath, d)
            if matcher.excluded(rel) and not matcher.may_include_below(rel) and rel not in keep:
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path)
                dirnames.remove(d)
                gone += 1
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if rel not in keep and matcher.excluded(rel):
                os.unlink(os.path.join(dirpath, f))
                gone += 1
    return gone
