"""The health loop of a daemon: probe every backing mount, repair the dead ones.

Probes are :mod:`mount_core.probe`'s (bounded, never blocking the loop). Autofs roots are never probed (a ``stat`` there resets autofs' idle timer); only
the FUSE mounts behind them are.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from mount_core.logs import event
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition, Prober, ProbeResult

if TYPE_CHECKING:
    from mount_core.manager import MountManager

log = logging.getLogger("hepvol.health")


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
            return ProbeResult(Condition.FAILED, "not mounted", dead=True)
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
                if result.condition != Condition.HEALTHY:
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
