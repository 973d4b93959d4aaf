"""Compose's variable interpolation, as compose-go's template package does it, in linear time.

    interpolate("nginx:${TAG:-latest}", {"TAG": "1.25"}, warn)   -> "nginx:1.25"

    $$              a literal $
    $NAME ${NAME}   NAME's value; unset -> "" and warn(NAME) (Compose: `The "NAME" variable is not set.
                    Defaulting to a blank string.`)
    ${NAME:-word}   word when NAME is unset or empty     ${NAME-word}  word when NAME is unset
    ${NAME:?msg}    error when NAME is unset or empty    ${NAME?msg}   error when NAME is unset
    ${NAME:+word}   word when NAME is set and not empty  ${NAME+word}  word when NAME is set
    word may hold further ${...} (up to MAX_NESTING deep), read only when it is used.

Any other `$` is an error ("invalid interpolation format"), as in Compose: write `$$` for a `$`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

MAX_NESTING = 8
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A template that cannot be expanded; str() says why (without the file position)."""


def interpolate(text: str, environ: Mapping[str, str], warn: Callable[[str], None]) -> str:
    if "$" not in text:
        return text
    return _expand(text, environ, warn, 0, text)


def _expand(text: str, environ: Mapping[str, str], warn: Callable[[str], None], nesting: int, whole: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        nxt = text[j + 1] if j + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i = j + 2
            continue
        if nxt == "{":
            value, i = _braced(text, j + 2, environ, warn, nesting, whole)
            out.append(value)
            continue
        m = _NAME.match(text, j + 1)
        if m is None:
            raise _invalid(whole)
        out.append(_lookup(m.group(), environ, warn))
        i = m.end()


def _braced(text: str, start: int, environ: Mapping[str, str], warn: Callable[[str], None], nesting: int,
            whole: str) -> tuple[str, int]:
    """The value of `${...}` whose name starts at `start`, and the index after its `}`."""
    m = _NAME.match(text, start)
    if m is None:
        raise _invalid(whole)
    name, pos = m.group(), m.end()
    if text.startswith("}", pos):
        return _lookup(name, environ, warn), pos + 1
    op = next((o for o in _OPS if text.startswith(o, pos)), None)
    if op is None:
        raise _invalid(whole)
    word_start = pos + len(op)
    end = _closing(text, word_start, whole)
    word = text[word_start:end]
    got = environ.get(name)
    unset = got is None or (op.startswith(":") and got == "")

    def expand_word() -> str:
        if nesting + 1 > MAX_NESTING:
            raise InterpolationError(f"more than {MAX_NESTING} nested ${{...}} in {whole!r}")
        return _expand(word, environ, warn, nesting + 1, whole)

    kind = op[-1]
    if kind == "-":
        return (expand_word() if unset else got or ""), end + 1
    if kind == "?":
        if unset:
            raise InterpolationError(f"required variable {name} is missing a value"
                                     + (f": {expand_word()}" if word else ""))
        return got or "", end + 1
    return (expand_word() if not unset else ""), end + 1  # "+": the word when the variable is set


def _closing(text: str, i: int, whole: str) -> int:
    """Index of the `}` that closes a `${` whose word starts at i (nested ${...} and $$ skipped)."""
    depth, n = 1, len(text)
    while i < n:
        c = text[i]
        if c == "$" and i + 1 < n and text[i + 1] in "${":
            if text[i + 1] == "{":
                depth += 1
            i += 2
            continue
        if c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise _invalid(whole)


def _lookup(name: str, environ: Mapping[str, str], warn: Callable[[str], None]) -> str:
    got = environ.get(name)
    if got is None:
        warn(name)
        return ""
    return got


def _invalid(whole: str) -> InterpolationError:
    return InterpolationError(f"invalid interpolation format in {whole!r}: you may need to escape any $ with another $")
