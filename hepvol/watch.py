"""``hepvol watch``: the node daemon for nodes where FlexVolume is the only front.

FlexVolume calls are short-lived processes, so nobody else would notice a dead
FUSE mount, repair it, or unmount a backing mount idle for too long. This daemon
reconciles once at start, then runs the core's health loop (exactly one per
process) and serves Prometheus metrics. FlexVolume calls never depend on it: they
share only the ledger. SIGTERM stops it and leaves every mount up.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any

from mount_core.config import Config
from mount_core.errors import ConfigError
from mount_core.logs import event

log = logging.getLogger("hepvol.watch")
DEFAULT_METRICS_PORT = 9792


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help=f"Prometheus metrics port (default {DEFAULT_METRICS_PORT}; 0 = off)")  # fmt: skip
    parser.add_argument("--metrics-address", default="0.0.0.0",  # noqa: S104 - scraped from other hosts
                        help="address to serve metrics on (default all interfaces)")  # fmt: skip


def run(args: argparse.Namespace, config: Config) -> int:
    from mount_core import metrics
    from mount_core.health import HealthMonitor
    from mount_core.manager import MountManager

    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    manager = MountManager(config, on_operation=metrics.record_operation)
    report = manager.reconcile()
    event(log, "reconciled", report=report.counts())
    if report.failed:
        event(log, f"reconcile left failures: {json.dumps(report.failed)}", level=logging.WARNING)
    server = None
    if args.metrics_port:
        from prometheus_client import start_http_server

        metrics.register(manager)
        try:
            server = start_http_server(args.metrics_port, addr=args.metrics_address)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {args.metrics_address}:{args.metrics_port}: "
                f"{exc.strerror}; choose another --metrics-port (0 turns metrics off)"
            ) from None
    monitor = HealthMonitor(manager)
    monitor.start()
    # FlexVolume launchers hand their calls to this daemon (a call is then an
    # interpreter start and a round trip instead of importing the core).
    from flexvolume.relay import RelayServer

    relay = RelayServer(manager)
    relay.start()
    event(log, "watching", interval=monitor.interval, metrics_port=args.metrics_port)
    stop.wait()
    relay.stop()
    monitor.stop()
    if server is not None:
        server[0].shutdown()
    event(log, "stopped; mounts stay up")
    return 0
