"""The `.env` file beside a stack file, and the environment interpolation reads, as Compose has them.

    environ = project_environment("stack.yaml", os.environ)   # .env beside it, the shell's env on top

A line is `NAME=value` (`export NAME=value` too); blank lines and `#` lines are skipped. A value in
single quotes is taken as written; in double quotes, `\\n`, `\\t`, `\\"` and `\\\\` are escapes and
`${...}` is interpolated; unquoted, a ` #` starts a comment, surrounding spaces are dropped, and
`${...}` is interpolated. Interpolation inside the file sees the shell's environment and the
lines above. The shell's variables win over the file's, as in Compose.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

from deploy.compose.interpolate import InterpolationError, interpolate

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# \$ stays a literal $ through the interpolation that follows
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$$"}
MAX_BYTES = 1 << 20


class DotEnvError(ValueError):
    """A bad line in a .env file: `file:line: problem`."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        self.file, self.line, self.problem = file, line, problem
        super().__init__(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")


def parse(text: str, file: str, shell: Mapping[str, str], warn: Callable[[str], None] | None = None
          ) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise DotEnvError(file, n, f"expected NAME=value, got {raw.strip()!r}")
        if not _NAME.match(name):
            raise DotEnvError(file, n, f"invalid variable name {name!r}")
        seen = {**out, **shell}

        def unset(var: str, n: int = n) -> None:
            if warn is not None:
                warn(f'{file}:{n}: the "{var}" variable is not set. Defaulting to a blank string.')

        try:
            out[name] = _value(value.strip(), seen, unset)
        except InterpolationError as e:
            raise DotEnvError(file, n, str(e)) from None
        except ValueError as e:
            raise DotEnvError(file, n, f"{name}: {e}") from None
    return out


def _value(v: str, seen: Mapping[str, str], unset: Callable[[str], None]) -> str:
    if v.startswith("'"):
        end = v.find("'", 1)
        if end < 0:
            raise ValueError("a single quote is not closed")
        _only_comment(v[end + 1:])
        return v[1:end]
    if v.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(v):
            c = v[i]
            if c == "\\" and i + 1 < len(v):
                chars.append(_ESCAPES.get(v[i + 1], "\\" + v[i + 1]))
                i += 2
                continue
            if c == '"':
                _only_comment(v[i + 1:])
                return interpolate("".join(chars), seen, unset)
            chars.append(c)
            i += 1
        raise ValueError("a double quote is not closed")
    hash_at = v.find(" #")
    if hash_at >= 0:
        v = v[:hash_at]
    return interpolate(v.strip(), seen, unset)


def _only_comment(rest: str) -> None:
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise ValueError(f"unexpected {rest!r} after the closing quote")


def read_env_file(path: str, environ: Mapping[str, str], warn: Callable[[str], None] | None = None
                  ) -> dict[str, str]:
    """A service's `env_file:` (the same format); FileNotFoundError when it is missing."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as e:
        raise DotEnvError(path, 0, f"not UTF-8 text: {e}") from None
    except OSError as e:
        raise DotEnvError(path, 0, f"cannot read: {e.strerror or e}") from None
    if len(text) > MAX_BYTES:
        raise DotEnvError(path, 0, f"larger than {MAX_BYTES >> 20} MiB")
    return parse(text, path, environ, warn)


def project_environment(stack_file: str, shell: Mapping[str, str],
                        warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """The variables a stack file's `${...}` see: `.env` beside the file, then the shell's on top."""
    path = os.path.join(os.path.dirname(os.path.abspath(stack_file)), ".env")
    try:
        from_file = read_env_file(path, shell, warn)
    except FileNotFoundError:
        return dict(shell)
    return {**from_file, **shell}
