"""The CSI gRPC server on a Unix socket (run by ``hepvol csi``, :mod:`hepvol.csi`).

``--mode node`` serves Identity and Node, ``controller`` serves Identity and
Controller, ``all`` serves the three. Every RPC goes through
:class:`~csi_driver.interceptor.CsiInterceptor`. The daemon around it (start-up
checks, reconcile, health loop, metrics, signals, the stale socket) is the app's
scaffold. gRPC and the stubs are imported inside :class:`CsiServer`, so building
the ``hepvol`` parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from typing import TYPE_CHECKING

from mount_core.errors import ConfigError

if TYPE_CHECKING:
    import grpc

    from mount_core.manager import MountManager

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
    parser.add_argument("--evict-stale-pods", action="store_true",
                        help="evict pods whose volume was repaired under them (they hold the "
                        "dead mount until restarted); needs the pod's service account with "
                        "create on pods/eviction")  # fmt: skip
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


class CsiServer:
    """The services of one ``hepvol csi`` process, started and stopped together."""

    def __init__(self, manager: MountManager, *, driver: str, name: str, endpoint: str,
                 node_id: str, mode: str, workers: int = 32) -> None:  # fmt: skip
        from concurrent import futures

        import grpc

        from csi_driver.generated import csi_pb2_grpc, health_pb2_grpc
        from csi_driver.health import HealthService
        from csi_driver.identity import IdentityService
        from csi_driver.interceptor import CsiInterceptor
        from csi_driver.node import NodeService

        if not _NAME.match(name):
            raise ConfigError(
                f"--name {name!r}: a CSI driver name is a domain-like name of at most 63 "
                "characters (letters, digits, '-', '.', '_'), e.g. cvmfs.csi.cern.ch"
            )
        if mode in ("node", "all") and not node_id:
            raise ConfigError("--node-id (or $NODE_ID) is required to serve the Node service")
        self.path = socket_path(endpoint)
        self.mode = mode
        self.manager = manager
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
        """Bind the socket (the scaffold has cleared a stale one) and start serving."""
        os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        umask = os.umask(0o077)  # the socket is root's only from its first moment
        try:
            if self.server.add_insecure_port(f"unix://{self.path}") == 0:
                raise ConfigError(f"cannot listen on unix://{self.path}")
        finally:
            os.umask(umask)
        self.server.start()
        self.identity.ready.set()

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving. Published volumes stay mounted: the next start adopts them."""
        self.identity.ready.clear()
        self.health.set_serving(False)
        self.server.stop(grace).wait()
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
