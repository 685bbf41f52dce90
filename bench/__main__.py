"""Run every benchmark: ``python -m bench [--quick]`` (as root; ``make bench``).

Each module under ``bench/`` with a ``main(argv)`` is run in turn and prints its
own table; ``--quick`` uses small sizes so CI keeps them from rotting.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

SKIP = {"common", "__main__"}


def main(argv: list[str]) -> int:
    failed = []
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
    for name in names:
        if name in SKIP:
            continue
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"## bench.{name}\n", flush=True)
        if module.main(list(argv)) != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
