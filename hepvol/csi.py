"""``hepvol csi``: the CSI driver (:mod:`csi_driver.server`) on the daemon scaffold.

The node modes (``node``, ``all``) mount, so they reconcile at start-up, run the
health loop and serve the FlexVolume relay (:mod:`flexvolume.relay`) beside the
CSI socket; ``controller`` only answers volume RPCs from the ledger.
"""

from __future__ import annotations

import argparse

from mount_core.config import Config
from mount_core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from csi_driver.server import add_arguments as add_csi_arguments
    from hepvol.daemon import add_metrics_arguments

    add_csi_arguments(parser)
    add_metrics_arguments(parser, 0)


def run(args: argparse.Namespace, config: Config) -> int:
    from csi_driver.server import cap_malloc_arenas

    cap_malloc_arenas()  # before the first worker thread

    from csi_driver import DRIVER_NAMES
    from csi_driver.server import CsiServer
    from hepvol.daemon import Daemon, Server, claim_socket, preflight, serve

    mounts = args.mode != "controller"
    preflight(config, clients=mounts, metrics_port=args.metrics_port,
              metrics_address=args.metrics_address)  # fmt: skip
    evictor_api = None
    if args.evict_stale_pods:
        from csi_driver.eviction import ApiServer

        if not mounts:
            raise ConfigError("--evict-stale-pods: only a node plugin (--mode node or all) "
                              "has pods to evict; remove it from the controller")  # fmt: skip
        evictor_api = ApiServer.in_cluster()
    daemon = Daemon(config, f"csi-{args.mode}", health=mounts, metrics_port=args.metrics_port,
                    metrics_address=args.metrics_address)  # fmt: skip
    server = CsiServer(
        daemon.manager, driver=args.driver, name=args.name or DRIVER_NAMES[args.driver],
        endpoint=args.endpoint, node_id=args.node_id, mode=args.mode, workers=args.workers,
    )  # fmt: skip
    # Before the reconcile: a second daemon on the same socket must not run a
    # second reconcile or health loop.
    claim_socket(server.path, "--endpoint")
    servers: list[Server] = [server]
    if mounts:
        # A node that serves CSI may also have FlexVolume pods: their launchers hand
        # calls to this daemon instead of importing the core per call.
        from flexvolume.relay import RelayServer

        servers.append(RelayServer(daemon.manager))
    if evictor_api is not None:
        from csi_driver.eviction import StalePodEvictor

        servers.append(StalePodEvictor(daemon.manager, evictor_api,
                                       config.health_interval_seconds))  # fmt: skip
    return serve(daemon, *servers, driver=server.identity.name, mode=args.mode,
                 endpoint=f"unix://{server.path}")  # fmt: skip
