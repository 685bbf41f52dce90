"""``hepvol csi``: the CSI gRPC server on a Unix socket.

``--mode node`` serves Identity and Node (and runs reconcile at start-up plus the
one health/repair loop of this process), ``controller`` serves Identity and
Controller, ``all`` serves the three. Every RPC goes through
:class:`~csi_driver.interceptor.CsiInterceptor`. gRPC and the stubs are imported
inside :func:`run`, so building the ``hepvol`` parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import stat
import threading
from typing import TYPE_CHECKING, Any

from mount_core.config import Config
from mount_core.errors import ConfigError

if TYPE_CHECKING:
    import grpc

MODES = ("node", "controller", "all")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,61}[A-Za-z0-9]$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--driver", choices=("cvmfs", "eos"), default="cvmfs",
                        help="which backend this driver serves (default cvmfs)")  # fmt: skip
    parser.add_argument("--name", help="CSI driver name (default cvmfs.csi.cern.ch or "
                        "eos.csi.cern.ch)")  # fmt: skip
    parser.add_argument(
        "--endpoint", default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
        help="gRPC endpoint, unix:///path (default $CSI_ENDPOINT or unix:///csi/csi.sock)",
    )  # fmt: skip
    parser.add_argument("--node-id", default=os.environ.get("NODE_ID", ""),
                        help="this node's id, e.g. spec.nodeName (default $NODE_ID)")  # fmt: skip
    parser.add_argument("--mode", choices=MODES, default="node",
                        help="services to serve: node (DaemonSet), controller, all (default node)")  # fmt: skip
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics on this TCP port (0 = off)")  # fmt: skip
    parser.add_argument("--metrics-address", default="0.0.0.0",  # noqa: S104 - scraped from the pod IP
                        help="address of the metrics listener (default 0.0.0.0)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=32,
                        help="concurrent RPCs served (default 32)")  # fmt: skip


def socket_path(endpoint: str) -> str:
    """The filesystem path of a ``unix://`` endpoint (``unix:///p`` or ``unix:/p``)."""
    if not endpoint.startswith("unix:"):
        raise ConfigError(f"--endpoint {endpoint!r}: only unix:///path endpoints are supported")
    path = "/" + endpoint[len("unix:") :].lstrip("/")
    if path == "/" or "\x00" in path:
        raise ConfigError(f"--endpoint {endpoint!r}: give an absolute socket path")
    return path


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by a dead server; refuse to steal a live one."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(
                f"--endpoint: {path} exists and is not a socket; refusing to remove it"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
                return
        raise ConfigError(f"--endpoint: another process is serving {path}; stop it first")


class CsiServer:
    """The services of one ``hepvol csi`` process, started and stopped together."""

    def __init__(self, config: Config, *, driver: str, name: str, endpoint: str, node_id: str,
                 mode: str, workers: int = 32) -> None:  # fmt: skip
        from concurrent import futures

        import grpc

        from csi_driver.generated import csi_pb2_grpc, health_pb2_grpc
        from csi_driver.health import HealthService
        from csi_driver.identity import IdentityService
        from csi_driver.interceptor import CsiInterceptor
        from csi_driver.node import NodeService
        from mount_core import metrics
        from mount_core.health import HealthMonitor
        from mount_core.manager import MountManager

        if not _NAME.match(name):
            raise ConfigError(
                f"--name {name!r}: a CSI driver name is a domain-like name of at most 63 "
                "characters (letters, digits, '-', '.', '_'), e.g. cvmfs.csi.cern.ch"
            )
        if mode in ("node", "all") and not node_id:
            raise ConfigError("--node-id (or $NODE_ID) is required to serve the Node service")
        self.path = socket_path(endpoint)
        self.mode = mode
        self.manager = MountManager(config, on_operation=metrics.record_operation)
        self.monitor = HealthMonitor(self.manager) if mode != "controller" else None
        # A node that serves CSI may also have FlexVolume pods: their launchers hand
        # calls to this daemon instead of importing the core per call.
        self.relay = None
        if mode != "controller":
            from flexvolume.relay import RelayServer

            self.relay = RelayServer(self.manager)
        self.identity = IdentityService(name, driver, controller=mode != "node")
        self.server: grpc.Server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csi"),
            interceptors=[CsiInterceptor()],
        )
        csi_pb2_grpc.add_IdentityServicer_to_server(self.identity, self.server)
        services = ["csi.v1.Identity"]
        if mode != "controller":
            node = NodeService(self.manager, driver, node_id)
            csi_pb2_grpc.add_NodeServicer_to_server(node, self.server)
            services.append("csi.v1.Node")
        if mode != "node":
            from csi_driver.controller import ControllerService  # a node never needs it

            controller = ControllerService(self.manager, driver)
            csi_pb2_grpc.add_ControllerServicer_to_server(controller, self.server)
            services.append("csi.v1.Controller")
        self.health = HealthService(services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    def start(self) -> None:
        """Adopt existing mounts (node), bind the socket, start serving."""
        # A second daemon on the same socket must stop before it runs a second
        # reconcile or health loop.
        os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        _remove_stale_socket(self.path)
        if self.monitor is not None:
            self.manager.reconcile()
            self.monitor.start()
        umask = os.umask(0o077)  # the socket is root's only from its first moment
        try:
            if self.server.add_insecure_port(f"unix://{self.path}") == 0:
                raise ConfigError(f"cannot listen on unix://{self.path}")
        finally:
            os.umask(umask)
        self.server.start()
        if self.relay is not None:
            self.relay.start()
        self.identity.ready.set()

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving. Published volumes stay mounted: the next start adopts them."""
        self.identity.ready.clear()
        self.health.set_serving(False)
        self.server.stop(grace).wait()
        if self.relay is not None:
            self.relay.stop()
        if self.monitor is not None:
            self.monitor.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def cap_malloc_arenas(arenas: int = 2) -> None:
    """Let glibc keep at most ``arenas`` malloc arenas (default: 8 per core).

    Every gRPC worker thread would otherwise get an arena of its own, each holding
    freed memory: a few MB of RSS after a burst of calls, for no measurable speed.
    """
    import ctypes

    m_arena_max = -8  # <malloc.h>
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_arena_max, arenas)


def run(args: argparse.Namespace, config: Config) -> int:
    import logging

    cap_malloc_arenas()  # before the first worker thread

    from csi_driver import DRIVER_NAMES
    from mount_core import metrics
    from mount_core.logs import event

    server = CsiServer(
        config, driver=args.driver, name=args.name or DRIVER_NAMES[args.driver],
        endpoint=args.endpoint, node_id=args.node_id, mode=args.mode, workers=args.workers,
    )  # fmt: skip
    if args.metrics_port:
        from prometheus_client import start_http_server

        metrics.register(server.manager)
        start_http_server(args.metrics_port, addr=args.metrics_address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _setter(stop))
    server.start()
    event(logging.getLogger("hepvol.csi"), "serving", driver=server.identity.name,
          mode=args.mode, endpoint=f"unix://{server.path}")  # fmt: skip
    stop.wait()
    server.stop()
    return 0


def _setter(stop: threading.Event) -> Any:
    return lambda *_: stop.set()
