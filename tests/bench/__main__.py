"""`make bench` / `python -m tests.bench [NAME...]`: run the benchmarks (tests/bench/bench_*.py).

Each module has a main() that measures dockyard and its peer in the same run and prints a table.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> None:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = sys.argv[1:]
    if wanted:
        names = [n for n in names if n in wanted or n.removeprefix("bench_") in wanted]
    for name in names:
        print(f"\n=== {name} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ===", flush=True)
        importlib.import_module(f"tests.bench.{name}").main()


if __name__ == "__main__":
    main()
