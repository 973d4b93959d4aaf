"""Dockerfile parser: text -> stages of instructions, each with the line it started on.

Follows docker's frontend (moby/buildkit frontend/dockerfile/parser and instructions):

* parser directives at the very top (``# escape=`` and ``# syntax=``, the latter ignored);
* a line ending in the escape character (``\\`` or, with ``# escape=```, a backtick) continues on the
  next; comment lines and empty lines inside a continuation are skipped;
* instruction keywords are case-insensitive; flags (``--from=``, ``--chown=``...) come first;
* variables (``$X``, ``${X}``, ``${X:-d}``, ``${X:+a}``) are expanded, as docker does, in FROM, COPY,
  ADD, ENV, ARG, LABEL, EXPOSE, USER, WORKDIR and STOPSIGNAL, never in RUN, CMD or ENTRYPOINT
  (the shell does that); single quotes stop expansion, the escape character escapes.

Every error is a ``DockerfileError`` that names the file and the line: "Dockerfile line 3: ...".
The parser knows nothing about images or containers; build.py executes what it returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.errors import InvalidArgument

from .errors import ImageError

# Instructions dockyard builds; the others docker knows are refused with a clear "not supported".
SUPPORTED = (
    "FROM", "COPY", "ADD", "RUN", "WORKDIR", "ENV", "ARG", "EXPOSE", "CMD", "ENTRYPOINT", "USER", "LABEL",
    "STOPSIGNAL", "SHELL", "MAINTAINER", "VOLUME", "HEALTHCHECK", "ONBUILD",
)
KNOWN_UNSUPPORTED: tuple[str, ...] = ()
# Flags each instruction accepts (docker rejects unknown flags the same way).
FLAGS: dict[str, tuple[str, ...]] = {
    "FROM": ("platform",),
    "COPY": ("from", "chown", "chmod", "link"),
    "ADD": ("chown", "chmod", "link", "checksum"),
    "RUN": ("network",),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
}
# Instructions whose arguments get variable expansion.
EXPANDED = ("FROM", "COPY", "ADD", "ENV", "ARG", "LABEL", "EXPOSE", "USER", "WORKDIR", "STOPSIGNAL", "VOLUME")


class DockerfileError(ImageError, InvalidArgument):
    """A Dockerfile that cannot be parsed or built; the message names the file and line."""

    def __init__(self, message: str, line: int = 0, filename: str = "Dockerfile", code: int = 0) -> None:
        self.line = line
        self.code = code  # a RUN's exit status (docker's errorDetail.code), 0 otherwise
        self.filename = filename
        self.reason = message
        super().__init__(f"{filename} line {line}: {message}" if line else f"{filename}: {message}")


@dataclass(frozen=True)
class Instruction:
    line: int                      # where the instruction starts (1-based)
    keyword: str                   # upper case: COPY
    args: str                      # the text after the keyword and its flags, continuations joined
    flags: Mapping[str, str] = field(default_factory=dict)
    original: str = ""             # as docker prints it in "Step 2/4 : COPY test /tmp/test"

    def json_args(self) -> list[str] | None:
        """The exec (JSON array) form of the arguments, or None for the shell form."""
        return json_array(self.args)


@dataclass
class Stage:
    index: int
    name: str                      # "" when the FROM had no AS
    base: str                      # the FROM argument as written (variables expanded later)
    line: int
    from_instruction: Instruction
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    stages: list[Stage]
    global_args: list[Instruction]   # ARGs before the first FROM: in scope for FROM lines only
    escape: str = "\\"
    filename: str = "Dockerfile"

    def stage(self, ref: str) -> Stage | None:
        """A stage by name (case-insensitive) or by index."""
        for s in self.stages:
            if s.name and s.name == ref.lower():
                return s
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    lines = text.splitlines()
    escape = "\\"
    first = 0
    # Parser directives: only at the very top, before any comment, blank line or instruction.
    seen: set[str] = set()
    for i, raw in enumerate(lines):
        m = _DIRECTIVE.match(raw.strip())
        if not m:
            break
        key = m.group(1).lower()
        if key not in ("escape", "syntax", "check"):
            break
        if key in seen:
            raise DockerfileError(f"only one {key} parser directive can be used", i + 1, filename)
        seen.add(key)
        if key == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid escape token {m.group(2)!r}: it must be \\ or `", i + 1, filename)
            escape = m.group(2)
        first = i + 1

    instructions: list[Instruction] = []
    i = first
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i + 1
        parts: list[str] = []
        text_line = raw.rstrip()
        while True:
            if text_line.endswith(escape) and not _escaped_escape(text_line, escape):
                parts.append(text_line[:-1])
                i += 1
                # Skip comments and blank lines inside a continuation, as docker does.
                while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    break
                text_line = lines[i].rstrip()
                continue
            parts.append(text_line)
            i += 1
            break
        joined = "".join(parts).strip()
        instructions.append(_instruction(joined, start, filename))

    stages: list[Stage] = []
    global_args: list[Instruction] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            base, name = _from_args(ins, filename)
            if name and any(s.name == name for s in stages):
                raise DockerfileError(f"duplicate stage name {name!r}", ins.line, filename)
            stages.append(Stage(len(stages), name, base, ins.line, ins))
        elif not stages:
            if ins.keyword != "ARG":
                raise DockerfileError(
                    f"{ins.keyword} before FROM: only ARG may come before the first FROM", ins.line, filename)
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("no FROM instruction: a Dockerfile must start with FROM", 0, filename)
    return Dockerfile(stages, global_args, escape, filename)


def _escaped_escape(line: str, escape: str) -> bool:
    """``foo \\\\`` ends in an escaped escape character, which does not continue the line."""
    n = len(line) - len(line.rstrip(escape))
    return n % 2 == 0


_FLAG = re.compile(r"^--([a-z][a-z-]*)(?:=(\S*))?(?:\s+|$)")


def _instruction(text: str, line: int, filename: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    upper = keyword.upper()
    if upper in KNOWN_UNSUPPORTED:
        raise DockerfileError(f"{upper} is not supported by dockyard's builder", line, filename)
    if upper not in SUPPORTED:
        raise DockerfileError(f"unknown instruction: {keyword}", line, filename)
    rest = rest.strip()
    flags: dict[str, str] = {}
    allowed = FLAGS.get(upper, ())
    while rest.startswith("--"):
        m = _FLAG.match(rest)
        if not m:
            break
        name = m.group(1)
        if name not in allowed:
            raise DockerfileError(f"{upper}: unknown flag: --{name}", line, filename)
        if m.group(2) is None and name not in ("link",):
            raise DockerfileError(f"{upper}: --{name} needs a value (--{name}=VALUE)", line, filename)
        flags[name] = m.group(2) or "true"
        rest = rest[m.end():]
    if not rest and upper not in ("CMD", "ENTRYPOINT"):
        raise DockerfileError(f"{upper} requires at least one argument", line, filename)
    if upper == "ONBUILD":
        # the trigger is an instruction of its own, checked now as docker checks it (run later,
        # by a build FROM this image)
        inner = _instruction(rest, line, filename)
        if inner.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileError(f"{inner.keyword} isn't allowed as an ONBUILD trigger", line, filename)
    return Instruction(line, upper, rest, flags, f"{upper} {text[len(keyword):].strip()}".strip())


def trigger(text: str, line: int, filename: str) -> Instruction:
    """One ONBUILD trigger of a base image, as an instruction of the build FROM it."""
    return _instruction(text, line, filename)


def _from_args(ins: Instruction, filename: str) -> tuple[str, str]:
    words = ins.args.split()
    if len(words) == 1:
        return words[0], ""
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _NAME.match(name):
            raise DockerfileError(f"invalid stage name {words[2]!r}", ins.line, filename)
        return words[0], name
    raise DockerfileError("FROM requires one argument, or three: FROM image AS name", ins.line, filename)


def json_array(args: str) -> list[str] | None:
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


# --- words and variables ----------------------------------------------------------------------------

_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_var(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Expand the variable starting at text[i] == "$"; returns (value, index after it)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end == -1:
            raise ValueError(f"missing '}}' in {text!r}")
        inner = text[i + 2:end]
        m = _VAR.match(inner)
        if not m:
            raise ValueError(f"bad substitution ${{{inner}}}")
        name, mod = m.group(0), inner[m.end():]
        value = env.get(name)
        if not mod:
            return value or "", end + 1
        if mod.startswith(":-"):
            return (value if value else expand(mod[2:], env)), end + 1
        if mod.startswith(":+"):
            return (expand(mod[2:], env) if value else ""), end + 1
        raise ValueError(f"unsupported modifier {mod!r} in ${{{inner}}}")
    m = _VAR.match(text, i + 1)
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand variables in one word, keeping quotes and escapes as they are (for FROM, WORKDIR...)."""
    out: list[str] = []
    i = 0
    quote = ""
    while i < len(text):
        c = text[i]
        if c == escape and i + 1 < len(text) and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if c == "'" and quote != '"':
            quote = "" if quote == "'" else "'"
        elif c == '"' and quote != "'":
            quote = "" if quote == '"' else '"'
        if c == "$" and quote != "'":
            value, i = _expand_var(text, i, env)
            out.append(value)
            continue
        out.append(c)
        i += 1
    return "".join(out)


def words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Split into words as the Dockerfile shell-ish lexer does: quotes removed, variables expanded
    outside single quotes, the escape character taking the next character literally."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    quote = ""
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                cur.append(c)
            i += 1
            continue
        if c == escape and i + 1 < len(text):
            nxt = text[i + 1]
            if quote == '"' and nxt not in ('"', "$", escape):
                cur.append(c)
            else:
                cur.append(nxt)
            have = True
            i += 2
            continue
        if c == "$":
            value, i = _expand_var(text, i, env)
            cur.append(value)
            have = True
            continue
        if quote == '"':
            if c == '"':
                quote = ""
            else:
                cur.append(c)
            i += 1
            continue
        if c in ("'", '"'):
            quote = c
            have = True
            i += 1
            continue
        if c.isspace():
            if cur or have:
                out.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        cur.append(c)
        i += 1
    if quote:
        raise ValueError(f"unterminated {quote} quote in {text!r}")
    if cur or have:
        out.append("".join(cur))
    return out


def key_values(keyword: str, args: str, env: Mapping[str, str], escape: str = "\\") -> list[tuple[str, str]]:
    """ENV/LABEL/ARG pairs: ``k=v k2="v 2"``, or the legacy ``ENV k v w`` (one pair, rest is the value)."""
    ws = words(args, env, escape)
    if not ws:
        raise ValueError(f"{keyword} requires at least one argument")
    if "=" not in ws[0] and keyword in ("ENV", "LABEL"):
        key, _, value = args.strip().partition(" ")
        if not value.strip():
            raise ValueError(f"{keyword} {key} needs a value ({keyword} {key}=VALUE)")
        return [(key, " ".join(words(value.strip(), env, escape)))]
    pairs: list[tuple[str, str]] = []
    for w in ws:
        key, eq, value = w.partition("=")
        if not key:
            raise ValueError(f"{keyword} names can not be blank: {w!r}")
        if not eq and keyword != "ARG":
            raise ValueError(f"{keyword}: {w!r} must be key=value")
        pairs.append((key, value if eq else "\0"))  # "\0": an ARG declared without a default
    return pairs
