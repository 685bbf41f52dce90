"""Serving the plugin app with gunicorn on a Unix socket.

One gunicorn worker process with a pool of threads (``gthread``). The daemon's
background work — the scaffold's start-up reconcile, health loop and metrics
(:class:`Background`, given by ``hepvol docker-plugin``), then the start-up
contact with the engine (announcing the driver, dropping stale Docker consumers;
itself run in a short-lived child, so the ``docker`` package never weighs on the
daemon) — is started from that worker's ``post_worker_init`` hook. With a single
worker there is exactly one
health loop per daemon, and if gunicorn replaces a crashed worker the loop comes
back with it. The master never loads the app, so nothing with threads or SQLite
connections is ever forked. One process also keeps memory low; concurrency
comes from threads (Mount waits on locks, SQLite and mount(2), all outside the
GIL).

The socket is created mode 0660, owned by root, once the scaffold has removed
a stale one (a live plugin's socket is never taken over).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gunicorn.app.base import BaseApplication

from docker_plugin.settings import HANDOVER, Settings, handover
from mount_core.config import Config
from mount_core.logs import event

if TYPE_CHECKING:
    from mount_core.manager import MountManager

log = logging.getLogger("hepvol.docker")


class Background(Protocol):
    """The daemon's own work beside the app: reconcile, health loop, metrics."""

    manager: MountManager

    def start(self, ready: threading.Event | None = None) -> None: ...

    def stop(self) -> None: ...


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
    background: Background, ready: threading.Event, config: Config, settings: Settings
) -> None:
    """Start the daemon's background work (mounts wait for ``ready``), drop stale consumers once."""

    def work() -> None:
        try:
            background.start(ready)
        except Exception as exc:
            # Only the metrics endpoint can fail here, after the health loop started.
            ready.set()
            event(log, f"background start failed: {exc}", level=logging.ERROR,
                  driver=settings.driver)  # fmt: skip
        # dockerd usually starts after the plugin: keep asking for a while.
        deadline = time.monotonic() + settings.engine_wait_seconds
        while not _contact_engine_in_child(config, settings) and time.monotonic() < deadline:
            time.sleep(5)

    threading.Thread(target=work, name="hepvol-docker-start", daemon=True).start()


class PluginServer(BaseApplication):  # type: ignore[misc]
    """gunicorn serving the plugin app of one driver."""

    def __init__(
        self, config: Config, settings: Settings, background: Callable[[], Background]
    ) -> None:
        self.hepvol_config = config
        self.settings = settings
        self.make_background = background
        self.background: Background | None = None
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

        self.background = self.make_background()
        volumes = DockerVolumes(
            self.background.manager, self.settings.driver, self.settings.backend, ready=self.ready
        )
        return create_app(volumes)

    def _post_worker_init(self, worker: Any) -> None:
        event(log, "serving", driver=self.settings.driver, socket=self.settings.socket_path,
              pid=os.getpid())  # fmt: skip
        assert self.background is not None  # load() ran first, in this worker
        _start_background(self.background, self.ready, self.hepvol_config, self.settings)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.background is not None:
            self.background.stop()
