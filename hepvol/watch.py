"""``hepvol watch``: the node daemon for nodes where FlexVolume is the only front.

FlexVolume calls are short-lived processes, so nobody else would notice a dead
FUSE mount, repair it, or unmount a backing mount idle for too long. This daemon
is the scaffold (:mod:`hepvol.daemon`: start-up reconcile, the health loop,
exactly one per process, and Prometheus metrics) plus the FlexVolume relay that
the drivers hand their calls to when it answers (:mod:`flexvolume.relay`). SIGTERM stops it and leaves every mount up.
"""

from __future__ import annotations

import argparse

from mount_core.config import Config

DEFAULT_METRICS_PORT = 9792


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hepvol.daemon import add_metrics_arguments

    add_metrics_arguments(parser, DEFAULT_METRICS_PORT)


def run(args: argparse.Namespace, config: Config) -> int:
    from flexvolume.relay import RelayServer
    from hepvol.daemon import Daemon, preflight, serve

    preflight(config, metrics_port=args.metrics_port, metrics_address=args.metrics_address)
    daemon = Daemon(config, "watch", metrics_port=args.metrics_port,
                    metrics_address=args.metrics_address)  # fmt: skip
    # FlexVolume launchers hand their calls to this daemon (a call is then an
    # interpreter start and a round trip instead of importing the core).
    return serve(daemon, RelayServer(daemon.manager))
