"""`make bench` / `python -m tests.bench [NAME...]`: run the benchmarks (tests/bench/bench_*.py).

Each module has a main() that measures dockyard and its peer in the same run and prints a table.
Each main() parses its own options from sys.argv, so it is given an argv of its own (the names
given here are not its options). A bench that fails is reported and the others still run; the exit
status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from tests.bench.common import load, machine


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [w.replace("-", "_") for w in sys.argv[1:]]  # `sec-unpack` names bench_sec_unpack
    if wanted:
        names = [n for n in names if n in wanted or n.removeprefix("bench_") in wanted]
    failed = []
    print(f"machine: {machine()}", flush=True)
    for name in names:
        print(f"\n=== {name} ({time.strftime('%Y-%m-%d %H:%M:%S')}; load average {load()}) ===", flush=True)
        started = time.monotonic()
        sys.argv = [str(here / f"{name}.py")]
        try:
            rc = importlib.import_module(f"tests.bench.{name}").main()
        except (Exception, SystemExit) as e:
            if isinstance(e, SystemExit) and not e.code:
                rc = 0
            else:
                traceback.print_exc()
                rc = 1
        if rc:
            failed.append(name)
        print(f"=== {name}: {'FAILED' if rc else 'done'} in {time.monotonic() - started:.0f} s; "
              f"load average {load()} ===", flush=True)
    if failed:
        print(f"\nfailed: {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
