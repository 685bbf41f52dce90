"""Serving the plugin app with gunicorn on a Unix socket.

One gunicorn worker process with a pool of threads (``gthread``). The daemon's
background work — ``reconcile()`` at start, the one :class:`HealthMonitor`, the
start-up contact with the engine (announcing the driver, dropping stale Docker
consumers; itself run in a short-lived child, so
the ``docker`` package never weighs on the daemon) — is started from that
worker's ``post_worker_init`` hook. With a single worker there is exactly one
health loop per daemon, and if gunicorn replaces a crashed worker the loop comes
back with it. The master never loads the app, so nothing with threads or SQLite
connections is ever forked. One process also keeps memory low; concurrency
comes from threads (Mount waits on locks, SQLite and mount(2), all outside the
GIL).

The socket is created mode 0660, owned by root; a stale socket (nobody
answering) is removed, but a live plugin's socket is never taken over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from gunicorn.app.base import BaseApplication

from docker_plugin.settings import HANDOVER, PLUGIN_DIR, Settings, handover, take_handover
from mount_core.config import Config
from mount_core.errors import ConfigError, Conflict
from mount_core.logs import event

log = logging.getLogger("hepvol.docker")


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def prepare_socket(path: str, wait: float = 5.0) -> None:
    """Create the socket's directory (0755) and clear a stale socket at ``path``."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.normpath(directory) == PLUGIN_DIR:
        os.chmod(directory, 0o755)  # noqa: S103 - the protocol wants it world-listable
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"{path} exists and is not a socket; move it away or pick another --socket"
        )
    # A plugin killed a moment ago may leave a worker finishing its last calls.
    deadline = time.monotonic() + wait
    while _answers(path):
        if time.monotonic() > deadline:
            raise Conflict(f"another plugin is serving {path}; stop it first")
        time.sleep(0.2)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _contact_engine_in_child(config: Config, settings: Settings) -> bool:
    """Announce the driver to the engine and run the stale-consumer check, in a
    short-lived child (:func:`docker_plugin.stale.main`); True once the engine answered.

    A child, so that the ``docker`` package (requests, urllib3, …) never weighs
    on the daemon's memory.
    """
    env = dict(os.environ, **{HANDOVER: handover(config, settings)})
    result = subprocess.run(
        [sys.executable, "-m", "docker_plugin.stale"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip
    if result.returncode not in (0, 3):
        event(log, "stale-consumer check failed", level=logging.WARNING,
              detail=(result.stderr.strip().splitlines() or [""])[-1])  # fmt: skip
    return result.returncode == 0


def _start_background(
    manager: Any, monitor: Any, ready: threading.Event, config: Config, settings: Settings
) -> None:
    """Reconcile (then let mounts in), start the health loop, drop stale consumers once."""

    def work() -> None:
        try:
            report = manager.reconcile()
            event(log, "reconciled at start-up", driver=settings.driver, counts=report.counts())
        finally:
            ready.set()
        monitor.start()
        # dockerd usually starts after the plugin: keep asking for a while.
        deadline = time.monotonic() + settings.engine_wait_seconds
        while not _contact_engine_in_child(config, settings) and time.monotonic() < deadline:
            time.sleep(5)

    threading.Thread(target=work, name="hepvol-docker-start", daemon=True).start()


class PluginServer(BaseApplication):  # type: ignore[misc]
    """gunicorn serving the plugin app of one driver."""

    def __init__(self, config: Config, settings: Settings) -> None:
        self.hepvol_config = config
        self.settings = settings
        self.manager: Any = None
        self.monitor: Any = None
        self.ready = threading.Event()
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"unix:{self.settings.socket_path}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.threads,
            "umask": 0o117,
            # Mount may legitimately take mount_timeout_seconds; the gthread main
            # loop keeps beating meanwhile, so this only catches a wedged worker.
            "timeout": 120,
            "graceful_timeout": 10,
            "keepalive": 5,
            "backlog": 256,
            "accesslog": None,
            "loglevel": "warning",
            "proc_name": f"hepvol-docker-{self.settings.driver}",
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app in the worker (the master never imports Flask or the core)."""
        from docker_plugin.app import create_app
        from docker_plugin.volumes import DockerVolumes
        from mount_core.manager import MountManager

        self.manager = MountManager(self.hepvol_config)
        volumes = DockerVolumes(
            self.manager, self.settings.driver, self.settings.backend, ready=self.ready
        )
        return create_app(volumes)

    def _post_worker_init(self, worker: Any) -> None:
        event(log, "serving", driver=self.settings.driver, socket=self.settings.socket_path,
              pid=os.getpid())  # fmt: skip
        from mount_core.health import HealthMonitor

        self.monitor = HealthMonitor(self.manager)
        _start_background(self.manager, self.monitor, self.ready, self.hepvol_config, self.settings)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.monitor is not None:
            self.monitor.stop()


def serve(config: Config, settings: Settings) -> int:
    """Run the plugin until SIGTERM/SIGINT."""
    prepare_socket(settings.socket_path)
    PluginServer(config, settings).run()
    return 0


def exec_lean(config: Config, settings: Settings) -> None:
    """Replace this process by a fresh interpreter that only serves the plugin.

    The ``hepvol`` command has imported every front to build its parser; the
    gunicorn master does not need any of that, and every page it holds is also
    counted in its worker.
    """
    env = dict(os.environ, **{HANDOVER: handover(config, settings)})
    # glibc gives each thread its own malloc arena; two are plenty for this daemon
    # and keep a worker full of threads from growing its RSS arena by arena.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    os.execve(sys.executable, [sys.executable, "-m", "docker_plugin.serve"], env)  # noqa: S606


def main() -> int:
    """Entry point of the re-executed daemon (see :func:`exec_lean`)."""
    from mount_core import logs

    config, settings = take_handover()
    logs.configure(config.log_level)
    return serve(config, settings)


if __name__ == "__main__":
    sys.exit(main())
