"""Run every benchmark and print one summary table: ``python -m bench [--quick]`` (root).

Each module under ``bench/`` with a ``main(argv)`` runs in turn and prints its own
detailed tables; every measurement also goes into the summary, next to the
physical floor measured in the same run. ``--quick`` uses small sizes so that CI
keeps the benchmarks from rotting; a full run (``make bench``) also writes the
summary and the details to ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import pkgutil
import sys
import time
from pathlib import Path

from bench.common import SUMMARY, SUMMARY_HEADER, loadavg, machine, table

SKIP = {"common", "__main__", "isolation"}
ROOT = Path(__file__).resolve().parent.parent


class _Tee(io.StringIO):
    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        return super().write(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--output", help="markdown file to write (default: docs/performance.md "
                        "for a full run, nothing for --quick)")  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    forwarded = [*rest, *(["--quick"] if args.quick else [])]
    failed, details = [], _Tee()
    started, load_before = time.monotonic(), loadavg()
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if name in SKIP or not hasattr(module, "main"):
            continue
        began = time.monotonic()
        with contextlib.redirect_stdout(details):
            print(f"## bench.{name}\n", flush=True)
            if module.main(list(forwarded)) != 0:
                failed.append(name)
            print(f"(bench.{name}: {time.monotonic() - began:.0f} s)\n")
    summary = table("hepvol benchmark summary", SUMMARY_HEADER, SUMMARY)
    load = (f"Load average (1, 5, 15 min) {load_before} before the run and {loadavg()} after "
            "it: other sessions use this machine too, so every comparison runs in interleaved "
            "rounds and floors and peers are measured in the same run; read the ratios.\n\n")  # fmt: skip
    print("\n" + summary + "\n" + load)
    output = args.output or (None if args.quick else str(ROOT / "docs" / "performance.md"))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(
            "# Performance\n\n"
            f"Measured by `make bench` on {machine()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"in {time.monotonic() - started:.0f} s. {load}"
            + summary
            + "\n## Details\n\n"
            + details.getvalue()
        )
        print(f"written to {output}")
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
