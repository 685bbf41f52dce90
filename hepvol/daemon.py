"""The one scaffold of every hepvol daemon: ``hepvol csi``, ``docker-plugin`` and ``watch``.

A daemon's life, in order:

1. :func:`preflight`: root, a private state dir, the configured clients installed,
   the metrics port free. Each failure is one line naming the fix (the CLI prints
   it and exits 2) before anything is started or written.
2. :func:`claim_socket`: a socket left by a dead daemon is removed; one another
   process serves is never taken over (one line naming that process and the fix).
3. :meth:`Daemon.start`: the start-up reconcile (adopt what survived the last
   run), then the health loop, then the metrics endpoint. A failed reconcile is
   logged and never keeps the health loop from starting: that loop is what
   repairs a dead mount afterwards.
4. :func:`serve`: until SIGTERM or SIGINT (:func:`stop_event`); then the front's server stops and
   :meth:`Daemon.stop` ends the loop. Mounts stay up; the next start adopts them.

Logs are JSON lines (:mod:`mount_core.logs`, configured by the CLI). The Docker
plugin runs steps 1-2 in the ``hepvol`` process and step 3 in its gunicorn
worker (see :mod:`hepvol.docker`); gunicorn handles its signals.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import struct
import threading
import time
from typing import Any, Protocol

from mount_core.backends import Backends
from mount_core.config import Config
from mount_core.errors import Busy, ConfigError
from mount_core.health import HealthMonitor
from mount_core.locks import lock_file
from mount_core.logs import event
from mount_core.manager import MountManager
from mount_core.statedir import StateDir

log = logging.getLogger("hepvol.daemon")

ROOT_REFUSAL = (
    "hepvol must run as root (it starts FUSE servers and makes bind mounts, which need "
    "CAP_SYS_ADMIN and /dev/fuse): run it as root, e.g. from its systemd unit or with sudo"
)


class Server(Protocol):
    """What a front serves in the daemon's process (the CSI gRPC server, the FlexVolume relay)."""

    def start(self) -> object: ...

    def stop(self) -> None: ...


def add_metrics_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """``--metrics-port``/``--metrics-address``, the same for every daemon."""
    parser.add_argument(
        "--metrics-port", type=int, default=default_port,
        help=f"serve Prometheus metrics on this TCP port (default {default_port}; 0 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-address", default="0.0.0.0",  # noqa: S104 - scraped from other hosts
        help="address of the metrics listener (default all interfaces)",
    )  # fmt: skip


def _metrics_refusal(address: str, port: int, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}; "
        "choose another --metrics-port (0 turns metrics off)"
    )


def preflight(
    config: Config, *, clients: bool = True, metrics_port: int = 0, metrics_address: str = ""
) -> None:
    """Refuse to start, with one line naming the fix, what could not run correctly."""
    if os.geteuid() != 0:
        raise ConfigError(ROOT_REFUSAL)
    StateDir(config.state_dir).ensure()
    if clients:
        Backends(config).check_available()
    if metrics_port:
        if not 0 < metrics_port < 65536:
            raise ConfigError(f"--metrics-port {metrics_port}: give 1-65535 (0 turns metrics off)")
        family = socket.AF_INET6 if ":" in metrics_address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((metrics_address, metrics_port))
            except OSError as exc:
                raise _metrics_refusal(metrics_address, metrics_port, exc) from None


def _serving_pid(path: str) -> int | None:
    """The pid of the process answering on the Unix socket ``path``, None if nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return None
        credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid: int = struct.unpack("3i", credentials)[0]
        return pid


def claim_socket(path: str, option: str, wait: float = 0.0) -> None:
    """Remove a stale socket at ``path``; refuse a live one or anything else.

    ``wait``: how long a socket may keep answering (a daemon killed a moment ago
    can leave a worker finishing its last calls).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"{option} {path}: exists and is not a socket; move it away or pick another {option}"
        )
    deadline = time.monotonic() + wait
    while (pid := _serving_pid(path)) is not None:
        if time.monotonic() >= deadline:
            who = f"another process (pid {pid})" if pid > 0 else "another process"
            raise ConfigError(
                f"{option} {path}: {who} is serving it; stop it first or pick another {option}"
            )
        time.sleep(0.2)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Daemon:
    """Start-up reconcile, the one health loop and the metrics endpoint of a daemon process."""

    def __init__(
        self,
        config: Config,
        name: str,
        *,
        health: bool = True,
        metrics_port: int = 0,
        metrics_address: str = "0.0.0.0",  # noqa: S104 - scraped from other hosts
    ) -> None:
        observer = None
        if metrics_port:
            from mount_core import metrics

            observer = metrics.record_operation
        self.name = name
        self.metrics_port = metrics_port
        self.metrics_address = metrics_address
        self.manager = MountManager(config, on_operation=observer)
        self.monitor = HealthMonitor(self.manager) if health else None
        self._metrics_server: Any = None
        self._lead: int | None = None

    def take_lead(self) -> bool:
        """Hold ``<state>/run/<name>.lead``: True in the one process of a daemon that runs
        the background work (the Docker plugin's gunicorn workers elect one with it).

        The lock goes with the process: a replacement of a crashed lead takes it.
        """
        if self._lead is None:
            path = os.path.join(StateDir(self.manager.config.state_dir).private("run"),
                                f"{self.name}.lead")  # fmt: skip
            try:
                self._lead = lock_file(path, fcntl.LOCK_EX, time.monotonic(), f"{self.name}'s lead")
            except Busy:
                return False
        return True

    def reconcile(self) -> bool:
        """The start-up reconcile; False (and logged) when it failed or left failures."""
        try:
            report = self.manager.reconcile()
        except Exception as exc:
            # Whatever broke here (a volume's lock held too long, a damaged row),
            # the health loop still starts: it is what repairs dead mounts.
            event(log, f"start-up reconcile failed: {exc}", level=logging.ERROR,
                  daemon=self.name, error=type(exc).__name__)  # fmt: skip
            return False
        event(log, "reconciled at start-up", daemon=self.name, counts=report.counts())
        if report.failed:
            event(log, "start-up reconcile left failures", level=logging.WARNING,
                  daemon=self.name, failed=report.failed)  # fmt: skip
        return not report.failed

    def start(self, ready: threading.Event | None = None) -> None:
        """Reconcile (then set ``ready``), start the health loop, serve metrics."""
        if self.monitor is not None:
            try:
                self.reconcile()
            finally:
                if ready is not None:
                    ready.set()
            self.monitor.start()
        elif ready is not None:
            ready.set()
        self._serve_metrics()

    def _serve_metrics(self) -> None:
        if not self.metrics_port:
            return
        from prometheus_client import start_http_server

        from mount_core import metrics

        metrics.register(self.manager)
        try:
            self._metrics_server = start_http_server(self.metrics_port, addr=self.metrics_address)
        except OSError as exc:
            raise _metrics_refusal(self.metrics_address, self.metrics_port, exc) from None

    def stop(self) -> None:
        """End the health loop and the metrics endpoint; every mount stays up."""
        if self.monitor is not None:
            self.monitor.stop()
        if self._metrics_server is not None:
            self._metrics_server[0].shutdown()
            self._metrics_server = None


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT (installed now, before anything starts)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def serve(daemon: Daemon, *servers: Server, **fields: Any) -> int:
    """Run ``daemon`` and the fronts' ``servers`` until SIGTERM/SIGINT; 0 on a clean stop."""
    stop = stop_event()
    daemon.start()
    started: list[Server] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
        event(log, "serving", daemon=daemon.name, metrics_port=daemon.metrics_port, **fields)
        stop.wait()
    finally:
        for server in reversed(started):
            server.stop()
        daemon.stop()
    event(log, "stopped; mounts stay up", daemon=daemon.name)
    return 0
