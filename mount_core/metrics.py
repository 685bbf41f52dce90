"""Prometheus metrics of the core, for the daemons to serve.

Counts of mounts and consumers are read from the ledger at scrape time, so every
process serving metrics reports the node's truth, whatever changed it (a
FlexVolume call, another daemon). Operation counters and latencies are this
process's own. Imported only by daemons: FlexVolume calls stay lean.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mount_core.consumer import CONTAINER_KINDS
from mount_core.ledger import Ledger
from mount_core.status import collect

if TYPE_CHECKING:
    from mount_core.manager import MountManager

OPERATIONS = Counter(
    "hepvol_operations_total", "Core operations by kind and result", ["operation", "result"]
)
OPERATION_SECONDS = Histogram(
    "hepvol_operation_seconds",
    "Latency of core operations",
    ["operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)


def record_operation(operation: str, key: str, seconds: float, ok: bool) -> None:
    """A :data:`mount_core.manager.OperationObserver` feeding the metrics above."""
    OPERATIONS.labels(operation, "ok" if ok else "error").inc()
    OPERATION_SECONDS.labels(operation).observe(seconds)


class LedgerCollector(Collector):
    """Mounts, consumers and conditions, read from the ledger at each scrape."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mounts = GaugeMetricFamily(
            "hepvol_backing_mounts", "Backing mounts by backend and condition",
            labels=["backend", "condition"],
        )  # fmt: skip
        consumers = GaugeMetricFamily("hepvol_consumers", "Consumers by kind", labels=["kind"])
        stale = GaugeMetricFamily(
            "hepvol_stale_consumers",
            "Consumers whose container still holds a backing mount since replaced "
            "(a repair cannot reach it: restart the pod or container)",
            labels=["kind"],
        )
        mount_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        consumer_counts: collections.Counter[str] = collections.Counter()
        stale_counts = collections.Counter(dict.fromkeys(CONTAINER_KINDS, 0))
        for status in collect(self.ledger):
            mount_counts[(status.backend, status.condition)] += 1
            for consumer in status.consumers:
                consumer_counts[consumer.kind] += 1
                stale_counts[consumer.kind] += consumer.stale
        for (backend, condition), count in sorted(mount_counts.items()):
            mounts.add_metric([backend, condition], count)
        for kind, count in sorted(consumer_counts.items()):
            consumers.add_metric([kind], count)
        for kind, count in sorted(stale_counts.items()):
            stale.add_metric([kind], count)
        yield mounts
        yield consumers
        yield stale


def register(manager: MountManager, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve the node's mounts and consumers (read from the core's ledger at each scrape)."""
    registry.register(LedgerCollector(manager.ledger))
