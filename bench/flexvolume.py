"""FlexVolume call latency, side by side with a bare interpreter start.

Each kubelet call is a fresh process, so what a pod waits for is interpreter
start + imports + the work. This runs the installed ``cern~cvmfs/cvmfs`` launcher
exactly as kubelet does, interleaved round by round with ``python -c pass`` (the
same interpreter) so that the ratio survives a noisy machine:

- ``init``;
- ``mount`` of a repository that is already mounted (another pod holds it), into
  a fresh pod dir created 0750 like kubelet does;
- ``unmount`` of that pod dir (the backing mount stays: the other pod holds it).

Run as root: ``python -m bench.flexvolume [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench.common import (
    SAMPLE,
    Timing,
    bench_world,
    latency_text,
    machine,
    measure,
    rss_mb,
    summarize,
    table,
)
from flexvolume import install
from mount_core.config import Config
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec

OPTIONS = {
    "repository": SAMPLE,
    "kubernetes.io/fsType": "",
    "kubernetes.io/readwrite": "ro",
    "kubernetes.io/pvOrVolumeName": "cvmfs",
    "kubernetes.io/pod.name": "bench",
    "kubernetes.io/pod.namespace": "default",
    "kubernetes.io/pod.uid": "00000000-0000-0000-0000-000000000000",
    "kubernetes.io/serviceAccount.name": "default",
}


def world(workdir: str) -> tuple[Config, str]:
    """A private hepvol world with a config file; returns it and the driver's path."""
    config = bench_world(workdir, targets="kubelet")
    os.makedirs(os.path.join(workdir, "kubelet", "pods"), exist_ok=True)
    config_path = os.path.join(workdir, "config.toml")
    plugins = os.path.join(workdir, "plugins")
    install.install(plugins, config_path)
    return config, install.driver_path(plugins, "cvmfs")


def call(argv: list[str]) -> float:
    """Run one process as kubelet would (clean environment); return its wall time."""
    start = time.perf_counter()
    result = subprocess.run(argv, env={}, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if argv[-1] != "pass" and (result.returncode != 0 or result.stderr):
        raise RuntimeError(f"{argv[1:3]} failed: {result.stdout!r} {result.stderr!r}")
    if argv[-1] != "pass" and json.loads(result.stdout)["status"] != "Success":
        raise RuntimeError(f"{argv[1:3]}: {result.stdout!r}")
    return seconds


def pod_dir(config: Config, n: int) -> str:
    path = os.path.join(config.target_roots[0], "pods", f"pod-{n}")
    os.mkdir(path, 0o750)
    return path


#: What a ``mount`` imports, in dependency order: stdlib modules the core needs,
#: then the core and this front. Each step's cost is what it adds to the ones before.
IMPORT_STEPS = (
    "re", "json", "typing", "dataclasses", "logging", "sqlite3", "ctypes", "tomllib",
    "mount_core.manager", "flexvolume.driver", "flexvolume.options",
)  # fmt: skip
_STEPPER = """
import sys, time
sys.path[:0] = [%r]
found = []
for name in %r:
    start = time.perf_counter()
    __import__(name)
    found.append((name, (time.perf_counter() - start) * 1000))
print(repr(found))
"""


def import_steps() -> dict[str, float]:
    """Milliseconds each step of a mount's imports adds, in one fresh ``-IS`` process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-IS", "-c", _STEPPER % (root, IMPORT_STEPS)],
                            capture_output=True, check=True, env={})  # fmt: skip
    return dict(ast.literal_eval(result.stdout.decode()))


def watch_rss(config: Config, workdir: str, consumers: int) -> tuple[float, float]:
    """RSS of ``hepvol watch`` idle and with ``consumers`` flex consumers (after a scrape)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, HEPVOL_CONFIG=os.path.join(workdir, "config.toml"))
    watch = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "--log-level", "WARNING", "watch",
         "--metrics-port", str(port), "--metrics-address", "127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    manager = MountManager(config)
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)
    targets = [pod_dir(config, 200000 + i) for i in range(consumers)]
    try:
        scrape = f"http://127.0.0.1:{port}/metrics"
        for _ in range(100):
            try:
                urllib.request.urlopen(scrape, timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        idle = rss_mb([watch.pid])
        for target in targets:
            manager.publish(spec, Consumer("flex", target), target)
        urllib.request.urlopen(scrape, timeout=30).read()
        loaded = rss_mb([watch.pid])
    finally:
        watch.terminate()
        watch.wait(30)
        for target in targets:
            manager.unpublish(target)
    return idle, loaded


def run(rounds: int, workdir: str) -> tuple[dict[str, Timing], list[tuple[str, float]]]:
    config, driver = world(workdir)
    options = json.dumps(OPTIONS)
    python = sys.executable
    keeper = pod_dir(config, -100)
    call([driver, "mount", keeper, options])
    names = ("python -c pass", "python -IS -c pass", "init", "mount (mounted repo)", "unmount")
    samples: dict[str, list[float]] = {name: [] for name in names}
    imports: dict[str, list[float]] = {}
    started = time.perf_counter()
    try:
        for n in range(-5, rounds):
            target = pod_dir(config, n)
            times = [
                call([python, "-c", "pass"]),
                call([python, "-IS", "-c", "pass"]),
                call([driver, "init"]),
                call([driver, "mount", target, options]),
                call([driver, "unmount", target]),
            ]
            os.rmdir(target)
            steps = import_steps()
            if n >= 0:  # the first rounds warm the page cache
                for name, seconds in zip(names, times, strict=True):
                    samples[name].append(seconds)
                for name, ms in steps.items():
                    imports.setdefault(name, []).append(ms)
        wall = time.perf_counter() - started

        def pair(i: int) -> None:
            target = pod_dir(config, 100000 + i)
            call([driver, "mount", target, options])
            call([driver, "unmount", target])
            os.rmdir(target)

        pairs = {c: measure(pair, rounds, c, warmup=0) for c in (1, 16)}
        consumers = 100 if rounds < 100 else 1000
        idle, loaded = watch_rss(config, workdir, consumers)
        summarize("hepvol watch", f"RSS idle / with {consumers} consumers (after a scrape)",
                  f"{idle:.1f} MB / {loaded:.1f} MB")  # fmt: skip
    finally:
        call([driver, "unmount", keeper])
        MountManager(config).gc_idle()
    for concurrency, timing in pairs.items():
        summarize("FlexVolume", f"mount+unmount pair (two processes), c={concurrency}",
                  latency_text(timing))  # fmt: skip
    costs = [(name, statistics.median(imports[name])) for name in IMPORT_STEPS]
    return {name: Timing(values, wall) for name, values in samples.items()}, costs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.flexvolume", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 rounds (CI smoke run)")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    rounds = 8 if args.quick else args.rounds
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-flex-")
    try:
        timings, costs = run(rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bare = timings["python -c pass"].p50_ms
    rows = [(name, t.p50_ms, t.p99_ms, f"{t.p50_ms / bare:.2f}x") for name, t in timings.items()]
    print(machine())
    print(
        table(
            f"FlexVolume calls as kubelet makes them ({rounds} interleaved rounds, ms)",
            ("process", "p50 ms", "p99 ms", "p50 / bare python"),
            rows,
        )
    )
    mount = timings["mount (mounted repo)"].p50_ms
    print(f"mount of an already-mounted repository: {mount / bare:.2f}x bare python (goal 1.30x)")
    for name in ("init", "mount (mounted repo)", "unmount"):
        summarize("FlexVolume", f"`{name}` call, one process", latency_text(timings[name], rate=False),
                  f"python -c pass p50 {bare:.1f} ms", timings[name].p50_ms / bare)  # fmt: skip
    print()
    rows = [
        *costs,
        ("all imports", sum(ms for _, ms in costs)),
        ("interpreter start (-IS)", timings["python -IS -c pass"].p50_ms),
    ]
    title = "Where a mount's time goes: imports in order (median ms each adds, -IS processes)"
    print(table(title, ("import", "ms"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
