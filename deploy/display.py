"""How the CLI prints: docker's tables, human durations and sizes, and --format json (without click:
the fast commands of deploy/cli_local.py print through it too)."""

from __future__ import annotations

import sys
import time

from common.humanize import human_duration as human_duration

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_SIZE_RE = r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*$"  # re and json are imported where used: `ps` needs neither
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str, flag: str) -> int:
    """docker's RAMInBytes: 64m, 1g, 512k, 1024 (bytes). Errors (ValueError) name the flag and the value."""
    import re

    m = re.match(_SIZE_RE, value, re.IGNORECASE)
    if not m:
        raise ValueError(f'invalid argument "{value}" for "{flag}" flag: invalid size: \'{value}\'')
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def human_bytes_binary(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n}B"


def ago(t: float) -> str:
    return f"{human_duration(time.time() - t)} ago" if t else ""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """docker's tabwriter look: columns padded to the widest cell, three spaces apart."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        echo("   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


def emit_json(obj: Any) -> None:
    import json

    echo(json.dumps(obj, indent=2))


def echo(line: str) -> None:
    """A line to stdout, flushed (as click.echo does; this module must not import click: the
    fast commands print through it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def trunc_command(cmd: str, width: int = 20) -> str:
    from _json import encode_basestring  # json.dumps(s, ensure_ascii=False) of a str, without json

    return str(encode_basestring(cmd if len(cmd) <= width else cmd[: width - 1] + "…"))
