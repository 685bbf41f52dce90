"""Cold mount and repair: the embedded backend next to the real CVMFS client (plain, pinned).

For each kind of volume — the embedded ``local`` server, ``demo.hepvol.org`` through
``mount.cvmfs`` (a system mount), ``demo.hepvol.org@v1`` through a private
``cvmfs2`` — this times, in-process through the core:

* cold mount: a publish with nothing mounted (the backing mount is made, then the
  target bound); unpublished again, the backing mount goes at once
  (``idle_unmount_seconds = 0``), so each repetition is cold. The first one of the
  real client also fills its (private) cache: it is shown apart;
* repair: the FUSE server is killed (``kill -9``), and the health pass runs back to
  back until the pod's target reads again; the time is from the kill.

The real client runs with a cache and ``/etc/cvmfs`` of its own (see
:mod:`bench.isolation`). Run as root in a private mount namespace:
``python -m bench.realclient [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench import isolation
from bench.common import SAMPLE, bench_world, summarize, table
from bench.peers import teardown_world
from mount_core import logs
from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec

REPO = "demo.hepvol.org"
KINDS = (
    ("embedded local server", "local", VolumeSpec(backend="cvmfs", repository=SAMPLE), "README"),
    ("real client, plain (mount.cvmfs)", "cvmfs2",
     VolumeSpec(backend="cvmfs", repository=REPO), "VERSION"),
    ("real client, pinned tag v1 (private cvmfs2)", "cvmfs2",
     VolumeSpec(backend="cvmfs", repository=REPO, tag="v1"), "VERSION"),
)  # fmt: skip


def serving_pids(path: str) -> list[int]:
    """FUSE servers (cvmfs2 or the embedded localfs) whose argv names ``path``."""
    wanted, found = os.fsencode(path), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        serves = any(b"cvmfs2" in arg or b"localfs" in arg for arg in argv[:4])
        if serves and wanted in argv and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def _reads(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except OSError:
        return False


REPAIR_BOUND = 20.0


def measure_kind(
    workdir: str, client: str, spec: VolumeSpec, probe: str, colds: int, repairs: int
) -> tuple[float, list[float], list[float], str]:
    """(first cold mount ms, later cold mounts ms, repairs ms, why a repair failed)."""
    config = bench_world(workdir, log_level="WARNING", client=client)
    manager = MountManager(config)
    target = os.path.join(config.target_roots[0], "pod")
    consumer = Consumer("csi", target)
    colds_ms: list[float] = []
    repairs_ms: list[float] = []
    failure = ""
    try:
        for _ in range(colds + 1):
            start = time.perf_counter()
            manager.publish(spec, consumer, target)
            colds_ms.append((time.perf_counter() - start) * 1000)
            manager.unpublish(target)
        manager.publish(spec, consumer, target)
        monitor = HealthMonitor(manager)
        for _ in range(repairs):
            backing = manager.backing_path(spec)
            pids = serving_pids(backing) if backing else []
            if not pids:
                raise RuntimeError(f"no FUSE server found serving {backing}")
            start = time.perf_counter()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + REPAIR_BOUND
            while not _reads(os.path.join(target, probe)):
                if time.monotonic() > deadline:
                    [status] = manager.status()
                    failure = (
                        f"not readable {REPAIR_BOUND:g} s after kill -9: "
                        + status.message.replace(workdir, "<world>")
                    )
                    break
                monitor.run_once()
                time.sleep(0.02)
            if failure:
                break
            repairs_ms.append((time.perf_counter() - start) * 1000)
        manager.unpublish(target)
    finally:
        teardown_world(workdir)
    return colds_ms[0], colds_ms[1:], repairs_ms, failure


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.realclient", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args(argv)
    colds, repairs = (1, 1) if args.quick else (5, 3)
    real = isolation.client_installed()
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-real-")
    # The repairs log warnings by design: keep them out of the tables.
    logs.configure("WARNING", path=os.path.join(workdir, "hepvol.log"))
    rows = []
    try:
        with isolation.private_cvmfs(workdir) if real else contextlib.nullcontext(""):
            for number, (label, client, spec, probe) in enumerate(KINDS):
                if client == "cvmfs2" and not real:
                    summarize("cold mount / repair", label, "not measured: no CVMFS client")
                    continue
                first, later, fixed, failure = measure_kind(
                    os.path.join(workdir, f"world-{number}"), client, spec, probe, colds, repairs
                )
                cold = statistics.median(later)
                repair = f"{statistics.median(fixed):.0f} ms" if fixed else "-"
                rows.append((label, first, cold, repair, len(fixed), failure or "-"))
                summarize("cold mount", label, f"{cold:.0f} ms (first, empty cache: {first:.0f} "
                          "ms)")  # fmt: skip
                summarize("repair after kill -9", label, f"FAILED: {failure}" if failure else
                          f"{repair} (median of {len(fixed)}; kill to readable)")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table("cold mount and repair through the core (ms)",
                ("volume", "first cold mount (empty cache)", "cold mount (median)",
                 "repair: kill -9 to readable (median)", "repairs", "failure"), rows))  # fmt: skip
    if not real:
        print("the real CVMFS client is not installed: only the embedded backend was measured\n")
    with contextlib.suppress(FileNotFoundError):
        version = subprocess.run(["cvmfs2", "--version"], capture_output=True, text=True)
        print(f"client: {version.stdout.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
