"""Prometheus metrics: the ledger's truth at scrape time, and operation latencies."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mount_core import metrics
from mount_core.consumer import Consumer
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv


def test_metrics_report_mounts_consumers_and_operations(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager(on_operation=metrics.record_operation)
    registry = CollectorRegistry()
    metrics.register(manager, registry)
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)
    for name in ("a", "b"):
        target = str(hepvol_env.targets / name)
        manager.publish(spec, Consumer("csi", target), target)
    manager.acquire(spec, Consumer("docker", "id1"))

    text = generate_latest(registry).decode()
    assert 'hepvol_backing_mounts{backend="local",condition="healthy"} 1.0' in text
    assert 'hepvol_consumers{kind="csi"} 2.0' in text
    assert 'hepvol_consumers{kind="docker"} 1.0' in text

    process_wide = generate_latest().decode()
    assert 'hepvol_operations_total{operation="publish",result="ok"}' in process_wide
    assert 'hepvol_operation_seconds_count{operation="acquire"}' in process_wide
