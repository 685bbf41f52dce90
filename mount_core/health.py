"""The health loop of a daemon: probe every backing mount, repair the dead ones.

Probes are :mod:`mount_core.probe`'s (bounded, never blocking the loop). Autofs roots are never probed (a ``stat`` there resets autofs' idle timer); only
the FUSE mounts behind them are.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mount_core.ledger_schema import BackingState
from mount_core.logs import event
from mount_core.periodic import Periodic
from mount_core.probe import Condition, ProbeResult
from mount_core.reconcile import Reconciler

if TYPE_CHECKING:
    from mount_core.manager import MountManager

log = logging.getLogger("hepvol.health")


class HealthMonitor(Periodic):
    """The periodic health, repair and idle-unmount loop of one daemon."""

    thread_name = "hepvol-health"

    def __init__(self, manager: MountManager, interval: float | None = None) -> None:
        self.service = manager.service
        self.reconciler = Reconciler(self.service)
        config = self.service.config
        super().__init__(config.health_interval_seconds if interval is None else interval, log)

    def run_once(self) -> dict[str, ProbeResult]:
        """One pass: probe every mount, repair the dead, unmount the long idle."""
        ledger = self.service.ledger
        table = self.service.table()
        results = {}
        for row in ledger.backings():
            held = ledger.count(row.key) > 0
            # A held row still "mounting" is one whose repair failed: try again.
            if row.state != BackingState.MOUNTED and not (
                row.state == BackingState.MOUNTING and held
            ):
                continue
            result = self.service.probe(row, table)
            results[row.key] = result
            if result.dead and held:
                event(log, f"backing mount is dead: {result.message}; repairing", volume=row.key,
                      level=logging.WARNING)  # fmt: skip
                self.reconciler.repair(row.key, result.message)
            elif (row.condition, row.message) != (result.condition, result.message):
                ledger.set_condition(row.key, result.condition, result.message)
                if result.condition != Condition.HEALTHY:
                    event(log, f"backing mount unhealthy: {result.message}", volume=row.key,
                          level=logging.WARNING)  # fmt: skip
        self.service.gc_idle()
        return results
