"""FlexVolume calls as kubelet makes them, hepvol next to CERN's Go driver.

Each call is a fresh process with an empty environment (the Go driver gets a
``PATH``: it forks ``mount``). hepvol's installed launchers are timed twice: handing
the call to a running node daemon (``hepvol watch``), and in-process (launchers
installed without the daemon's socket, what a node without the daemon runs). The
Go driver's ``mount DIR DEVICE JSON`` (the pre-1.6 attach API) binds hepvol's own
backing mount, so both sides bind the same FUSE mount of the real client. Its
``unmount`` unmounts ``<root>/<dir>/trunk``, not the pod dir, so only its
``mount`` is compared. Rounds are interleaved with ``python -I -S -c pass``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import Timing, bench_world
from bench.peers import ANCHORS, REPO, Row, met, teardown_world, wait_for
from flexvolume import install
from flexvolume.relay import socket_path
from mount_core import bind

OPTIONS = json.dumps({
    "repository": REPO, "kubernetes.io/readwrite": "ro", "kubernetes.io/pod.name": "bench",
    "kubernetes.io/pod.namespace": "default", "kubernetes.io/pvOrVolumeName": "cvmfs",
})  # fmt: skip
GOAL = 1.5


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env or {}, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if argv[-1] != "pass" and b'"Success"' not in result.stdout:
        raise RuntimeError(f"{argv[1:3]}: {result.stdout!r} {result.stderr!r}")
    return seconds


def flex_rows(workdir: str, rounds: int) -> list[Row]:
    world = os.path.join(workdir, "hepvol-flex")
    config = bench_world(world, targets="kubelet", log_level="WARNING", client="cvmfs2")
    pods = os.path.join(world, "kubelet", "pods")
    os.makedirs(pods)
    config_path = os.path.join(world, "config.toml")
    relay = socket_path(config.state_dir)
    handed = install.install(os.path.join(world, "plugins"), config_path, relay)[0]
    alone = install.install(os.path.join(world, "plugins-alone"), config_path)[0]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "watch", "--metrics-port", "0"],
        env=dict(os.environ, HEPVOL_CONFIG=config_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    go = [str(ANCHORS / "docker-volume-cvmfs"), "mount"]
    go_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    names = ("python -I -S -c pass", "mount (daemon)", "unmount (daemon)",
             "mount (in-process)", "unmount (in-process)", "Go driver mount")  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        wait_for(lambda: relay and os.path.exists(relay), "hepvol watch")
        keeper = os.path.join(pods, "keeper")
        os.mkdir(keeper, 0o750)
        _timed([handed, "mount", keeper, OPTIONS])
        backing = os.path.join(config.mount_root, f"cvmfs-{REPO}")
        for n in range(-3, rounds):
            pod, other, peer = (os.path.join(pods, f"{kind}-{n}") for kind in "aby")
            for path in (pod, other):
                os.mkdir(path, 0o750)
            times = [
                _timed([sys.executable, "-I", "-S", "-c", "pass"]),
                _timed([handed, "mount", pod, OPTIONS]),
                _timed([handed, "unmount", pod]),
                _timed([alone, "mount", other, OPTIONS]),
                _timed([alone, "unmount", other]),
                _timed([*go, peer, backing, OPTIONS], go_env),
            ]
            bind.unmount(peer)
            for path in (pod, other, peer):
                os.rmdir(path)
            if n >= 0:  # the first rounds warm the page cache
                for name, seconds in zip(names, times, strict=True):
                    samples[name].append(seconds)
        _timed([handed, "unmount", keeper])
    finally:
        daemon.terminate()
        daemon.wait(30)
        teardown_world(world)
    timings = {name: Timing(values, 1.0) for name, values in samples.items()}
    floor = timings["python -I -S -c pass"].p50_ms
    go_mount = timings["Go driver mount"]
    rows: list[Row] = []
    floor_text = f"python -I -S -c pass, empty environment: p50 {floor:.2f} ms"
    for name in names[1:5]:
        ours = timings[name]
        ratio = ours.p50_ms / floor
        goal = f"<= {GOAL}x floor: " + met(ratio <= GOAL, "flex")
        if "in-process" in name:
            goal = "the fallback (no goal)"
        theirs = f"p50 {go_mount.p50_ms:.2f} ms (Go driver)" if name.startswith("mount") else ""
        rows.append(("FlexVolume", f"`{name}` call, repository mounted",
                     f"p50 {ours.p50_ms:.2f} ms, p99 {ours.p99_ms:.2f} ms", theirs, floor_text,
                     f"{ratio:.2f}x floor", goal))  # fmt: skip
    return rows
