"""Core benchmark: publish+unpublish of an already-mounted spec vs the raw bind+umount pair.

Run as root: ``python -m bench.core [--quick]`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import (
    SAMPLE,
    bench_world,
    latency_text,
    machine,
    measure,
    median,
    raw_bind_pair,
    summarize,
    table,
)
from mount_core import bind
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec


def world(workdir: str) -> MountManager:
    return MountManager(bench_world(workdir))


def teardown(manager: MountManager, workdir: str) -> None:
    for consumer in manager.ledger.consumers():
        if consumer.target:
            manager.unpublish(consumer.target)
        else:
            manager.release(Consumer(consumer.kind, consumer.consumer.split(":", 1)[1]))
    for entry in sorted(MountTable().under(workdir), key=lambda e: -len(e.mount_point)):
        bind.unmount(entry.mount_point, lazy=True)
    shutil.rmtree(workdir, ignore_errors=True)


def run(count: int) -> str:
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-")
    manager = world(workdir)
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)
    targets_root = manager.config.target_roots[0]
    rows = []
    try:
        start = time.perf_counter()
        backing = manager.acquire(spec, Consumer("cli", "bench-holder"))
        cold_ms = (time.perf_counter() - start) * 1000

        raw_pair = raw_bind_pair(backing, targets_root)

        def publish_pair(i: int) -> None:
            target = os.path.join(targets_root, f"pod-{i}")
            manager.publish(spec, Consumer("csi", target), target)
            manager.unpublish(target)

        for concurrency in (1, 16):
            raw = measure(raw_pair, count, 1)
            pair = measure(publish_pair, count, concurrency)
            summarize("core", f"publish+unpublish pair in-process, c={concurrency}",
                      latency_text(pair), f"bind+umount p50 {raw.p50_ms:.3f} ms",
                      pair.p50_ms / raw.p50_ms)  # fmt: skip
            rows.append((
                concurrency, pair.p50_ms, pair.p99_ms, round(pair.per_second),
                raw.p50_ms, round(pair.p50_ms / raw.p50_ms, 1),
            ))  # fmt: skip
    finally:
        teardown(manager, workdir)
    out = table(
        f"core: publish+unpublish of an already-mounted spec ({count} pairs; {machine()})",
        ["concurrency", "pair p50 ms", "pair p99 ms", "pairs/s", "raw bind+umount p50 ms",
         "ratio"],
        rows,
    )  # fmt: skip
    bare = _wall([sys.executable, "-c", "pass"], dict(os.environ), 10)
    summarize("core", "cold mount on the local backend (FUSE server start)", f"{cold_ms:.0f} ms",
              f"python -c pass {bare:.1f} ms", cold_ms / bare)  # fmt: skip
    return out + f"\ncold mount (local backend, first acquire): {cold_ms:.1f} ms\n"


def _wall(command: list[str], env: dict[str, str], rounds: int) -> float:
    """Median wall time of a command, in ms."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return median(times) * 1000


def run_scale(consumers: int) -> str:
    """reconcile() and `hepvol status` with many published consumers."""
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-")
    manager = world(workdir)
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)
    targets_root = manager.config.target_roots[0]
    try:
        for i in range(consumers):
            target = os.path.join(targets_root, f"pod-{i}")
            manager.publish(spec, Consumer("csi", target), target)
        reconcile = measure(lambda _i: manager.reconcile(), 5, warmup=1)
        env = dict(os.environ, HEPVOL_STATE_DIR=manager.config.state_dir,
                   HEPVOL_MOUNT_ROOT=manager.config.mount_root,
                   HEPVOL_TARGET_ROOTS=targets_root, HEPVOL_CONFIG=os.devnull)  # fmt: skip
        bare = _wall([sys.executable, "-c", "pass"], env, 10)
        status = _wall([sys.executable, "-m", "hepvol", "status"], env, 5)
        status_json = _wall([sys.executable, "-m", "hepvol", "status", "--json"], env, 5)
    finally:
        teardown(manager, workdir)
    summarize("core", f"reconcile() with {consumers} consumers", f"{reconcile.p50_ms:.0f} ms")
    summarize("CLI", f"hepvol status with {consumers} consumers", f"{status:.0f} ms",
              f"python -c pass {bare:.1f} ms", status / bare)  # fmt: skip
    return table(
        f"core at scale: {consumers} published consumers",
        ["measurement", "ms", "floor", "floor ms", "ratio"],
        [
            ("reconcile() (nothing to fix)", reconcile.p50_ms, "-", "-", "-"),
            ("hepvol status", status, "python -c pass", bare, round(status / bare, 1)),
            ("hepvol status --json", status_json, "python -c pass", bare,
             round(status_json / bare, 1)),
        ],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args(argv)
    print(run(200 if args.quick else 3000))
    print(run_scale(50 if args.quick else 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
