"""Health of backing mounts: probes that never block the caller, and the repair loop.

A probe is ``statvfs`` on the FUSE mount (it always reaches the server; ``stat``
may be answered from the kernel's cache). It runs in a worker thread joined with a
timeout: a dead server answers ENOTCONN at once, a hung one never answers, and
the caller learns that within the bound. At most one probe per mount is ever in
flight, so a hung mount costs one parked thread, not one per pass.

Autofs roots are never probed (a ``stat`` there resets autofs' idle timer); only
the FUSE mounts behind them are.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mount_core.logs import event
from mount_core.mountinfo import MountTable

if TYPE_CHECKING:
    from mount_core.manager import MountManager

log = logging.getLogger("hepvol.health")

HEALTHY, REPAIRING, FAILED = "healthy", "repairing", "failed"


@dataclass(frozen=True)
class ProbeResult:
    """What a probe saw. ``dead`` means remounting will help; a hang is not dead."""

    condition: str
    message: str
    dead: bool = False
    usage: os.statvfs_result | None = None


class Prober:
    """Bounded ``statvfs`` probes, one in flight per path."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._inflight: dict[str, tuple[threading.Thread, float]] = {}
        self._lock = threading.Lock()

    def probe(self, path: str) -> ProbeResult:
        with self._lock:
            running = self._inflight.get(path)
            if running is not None and running[0].is_alive():
                age = time.monotonic() - running[1]
                return ProbeResult(FAILED, f"not responding for {age:.0f} s (hung FUSE server?)")
            box: list[ProbeResult] = []
            worker = threading.Thread(target=self._run, args=(path, box), daemon=True)
            self._inflight[path] = (worker, time.monotonic())
            worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return ProbeResult(
                FAILED, f"not responding within {self.timeout:g} s (hung FUSE server?)"
            )
        with self._lock:
            self._inflight.pop(path, None)
        return box[0]

    @staticmethod
    def _run(path: str, box: list[ProbeResult]) -> None:
        try:
            usage = os.statvfs(path)
        except OSError as exc:
            dead = exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT)
            # A server killed mid-request answers ECONNABORTED first, then ENOTCONN.
            died = exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            reason = "the FUSE server died" if died else exc.strerror
            box.append(ProbeResult(FAILED, f"{reason} ({errno.errorcode.get(exc.errno or 0)})",
                                   dead=dead))  # fmt: skip
            return
        box.append(ProbeResult(HEALTHY, "", usage=usage))


class HealthMonitor:
    """The periodic health, repair and idle-unmount loop of one daemon."""

    def __init__(self, manager: MountManager, interval: float | None = None) -> None:
        self.manager = manager
        self.interval = manager.config.health_interval_seconds if interval is None else interval
        self.prober = Prober(manager.config.probe_timeout_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, key: str, path: str, table: MountTable) -> ProbeResult:
        """Probe one backing mount, treating a missing mount as dead."""
        entry = table.at(path)
        row = self.manager.ledger.backing(key)
        backend = self.manager.backends.named(row.backend) if row else None
        if entry is None or backend is None or not backend.owns(entry):
            return ProbeResult(FAILED, "not mounted", dead=True)
        own = backend.check_health(path, self.prober)
        return self.prober.probe(path) if own is None else own

    def run_once(self) -> dict[str, ProbeResult]:
        """One pass: probe every mount, repair the dead, unmount the long idle."""
        from mount_core.reconcile import repair

        table = MountTable()
        results = {}
        for row in self.manager.ledger.backings():
            if row.state != "mounted":
                continue
            result = self.check(row.key, row.path, table)
            results[row.key] = result
            if result.dead and self.manager.ledger.count(row.key) > 0:
                event(log, f"backing mount is dead: {result.message}; repairing", volume=row.key,
                      level=logging.WARNING)  # fmt: skip
                repair(self.manager, row.key, result.message)
            elif (row.condition, row.message) != (result.condition, result.message):
                self.manager.ledger.set_condition(row.key, result.condition, result.message)
                if result.condition != HEALTHY:
                    event(log, f"backing mount unhealthy: {result.message}", volume=row.key,
                          level=logging.WARNING)  # fmt: skip
        self.manager.gc_idle()
        return results

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("health pass failed", extra={"volume": None, "consumer": None})

    def start(self) -> None:
        """Start the loop in a daemon thread (exactly one per process should)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hepvol-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
