"""Shared measurement helpers for the benchmarks: timings, percentiles, tables, RSS."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mount_core import bind
from mount_core.config import Config, CvmfsConfig, LocalConfig, dumps


@dataclass
class Timing:
    """Latencies (seconds) of one measured operation and the wall time they took."""

    samples: list[float]
    wall: float

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def p50_ms(self) -> float:
        return self.percentile(50) * 1000

    @property
    def p99_ms(self) -> float:
        return self.percentile(99) * 1000

    @property
    def per_second(self) -> float:
        return len(self.samples) / self.wall if self.wall else 0.0


def measure(
    operation: Callable[[int], None], count: int, concurrency: int = 1, warmup: int = 20
) -> Timing:
    """Run ``operation(i)`` ``count`` times on ``concurrency`` threads; time each call."""
    for i in range(warmup):
        operation(-1 - i)

    def timed(i: int) -> float:
        start = time.perf_counter()
        operation(i)
        return time.perf_counter() - start

    start = time.perf_counter()
    if concurrency == 1:
        samples = [timed(i) for i in range(count)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            samples = list(pool.map(timed, range(count)))
    return Timing(samples, time.perf_counter() - start)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children of every thread)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as f:
                queue += [int(child) for child in f.read().split()]
    return found


def interleaved(
    sides: dict[str, Callable[[int], None]], rounds: int, per_round: int, concurrency: int
) -> dict[str, Timing]:
    """Time every side in ``rounds`` alternating rounds, so load changes hit all sides alike."""
    samples: dict[str, list[float]] = {name: [] for name in sides}
    walls = dict.fromkeys(sides, 0.0)
    names = list(sides)
    for number in range(rounds):
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            timing = measure(_shifted(sides[name], number * per_round), per_round, concurrency,
                             warmup=5 if number == 0 else 0)  # fmt: skip
            samples[name] += timing.samples
            walls[name] += timing.wall
    return {name: Timing(samples[name], walls[name]) for name in sides}


def _shifted(operation: Callable[[int], None], offset: int) -> Callable[[int], None]:
    """``operation`` numbered from ``offset`` on (each round uses fresh names)."""
    return lambda i: operation(offset + i)


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def rss_mb(pids: Sequence[int]) -> float:
    """Sum of VmRSS of the given processes, in MB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def machine() -> str:
    """The machine in one line: CPU model and count, memory, kernel, Python."""
    model, memory = platform.processor() or "unknown CPU", 0
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        memory = round(int(handle.readline().split()[1]) / (1024 * 1024))
    return (
        f"{model}, {os.cpu_count()} cores, {memory} GiB memory, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, so the output can be pasted into docs/performance.md as is."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


#: Rows of the one summary table ``make bench`` prints: (area, measurement, hepvol's
#: result, the peer's result in the same run, the physical floor measured in the same
#: run, the ratio, the goal and whether it is met). Each benchmark adds its own.
SUMMARY: list[tuple[str, str, str, str, str, str, str]] = []
SUMMARY_HEADER = ("area", "measurement", "hepvol", "peer (same run)", "floor (same run)",
                  "ratio", "goal")  # fmt: skip


def summarize(
    area: str,
    measurement: str,
    result: str,
    floor: str = "",
    ratio: float | str | None = None,
    *,
    peer: str = "",
    goal: str = "",
) -> None:
    """Add a row to the summary table (a float ratio is result / floor)."""
    shown = f"{ratio:.1f}x floor" if isinstance(ratio, float) else (ratio or "")
    SUMMARY.append((area, measurement, result, peer, floor, shown, goal))


def latency_text(timing: Timing, *, rate: bool = True) -> str:
    """A latency timing as the summary shows it (``rate``: with the throughput)."""
    text = f"p50 {timing.p50_ms:.2f} ms, p99 {timing.p99_ms:.2f} ms"
    return text + f", {timing.per_second:.0f}/s" if rate else text


SAMPLE = "bench.hepvol.org"


def bench_world(
    workdir: str, *, targets: str = "targets", log_level: str = "INFO", client: str = "local"
) -> Config:
    """A private hepvol world under ``workdir`` serving ``SAMPLE`` on the local backend.

    With ``client="cvmfs2"`` CVMFS volumes are served by the real client instead.
    Its configuration is also written to ``<workdir>/config.toml`` for child processes.
    """
    for name in ("state", "mounts", targets, f"repositories/{SAMPLE}"):
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
    with open(os.path.join(workdir, "repositories", SAMPLE, "README"), "w") as handle:
        handle.write("bench\n")
    config = Config(
        state_dir=os.path.join(workdir, "state"),
        mount_root=os.path.join(workdir, "mounts"),
        target_roots=(os.path.join(workdir, targets),),
        log_level=log_level,
        local=LocalConfig(root=os.path.join(workdir, "repositories")),
        # Private cvmfs2 mounts get their cache here, never in the node's shared cache root.
        cvmfs=CvmfsConfig(client=client, cache_root=os.path.join(workdir, "cvmfs-cache")),
    ).validate()
    with open(os.path.join(workdir, "config.toml"), "w") as handle:
        handle.write(dumps(config))
    return config


def raw_bind_pair(backing: str, targets_root: str) -> Callable[[int], None]:
    """The physical floor of a publish+unpublish: mount(2) MS_BIND + umount2(2)."""
    directories = [os.path.join(targets_root, f"raw-{i}") for i in range(16)]
    for directory in directories:
        os.makedirs(directory, exist_ok=True)

    def pair(i: int) -> None:
        target = directories[i % 16]
        bind.mount(backing, target, None, bind.MS_BIND)
        bind.unmount(target)

    return pair
