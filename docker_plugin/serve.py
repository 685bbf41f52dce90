"""Serving the plugin app with gunicorn on a Unix socket.

Two gunicorn worker processes with a pool of threads each (``gthread``): one
worker's Python holds the GIL while it parses a call, so a second one lets a
two-core node serve calls on both cores (+50% pairs/s at 16 concurrent calls;
one worker per core is enough, Mount mostly waits on locks, SQLite and mount(2)).
The daemon's background work — the scaffold's start-up reconcile, health loop and
metrics (:class:`Background`, given by ``hepvol docker-plugin``), then the
start-up contact with the engine (announcing the driver, dropping stale Docker
consumers; itself run in a short-lived child, so the ``docker`` package never
weighs on the daemon) — runs in the worker that holds the driver's lead lock
(``<state dir>/run/docker-<driver>.lead``), taken in its ``post_worker_init``
hook: exactly one health loop per daemon, and if gunicorn replaces that worker
after a crash, the replacement takes the lead. The other worker lets
Mount/Unmount in once the lead has written that this daemon (its master's PID)
has reconciled. The master never loads the app, so nothing with threads or
SQLite connections is ever forked.

The socket is created mode 0660, owned by root, once the scaffold has removed
a stale one (a live plugin's socket is never taken over).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
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

#: Seconds a connection may take to send the rest of a request (or to read a reply)
#: before it is dropped: dockerd sends a whole call at once.
READ_TIMEOUT = 2.0


class Background(Protocol):
    """The daemon's own work beside the app: reconcile, health loop, metrics."""

    manager: MountManager

    def start(self, ready: threading.Event | None = None) -> None: ...

    def stop(self) -> None: ...

    def take_lead(self) -> bool:
        """True in the one process of this daemon that is to run :meth:`start`."""
        ...


class _BoundedConnection(socket.socket):
    """An accepted connection whose reads and writes give up after :data:`READ_TIMEOUT`.

    The timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``), so gunicorn's
    blocking reads keep working unchanged. A read that runs out shuts the read
    side: the client is stuck, and gunicorn's graceful close, which lingers in
    its main loop until the client closes, then finds end-of-file at once instead
    of stalling every other connection.
    """

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            return super().recv(size, flags)
        except BlockingIOError:
            self._give_up()
            raise ConnectionResetError(
                errno.ECONNRESET, f"no data from the client within {READ_TIMEOUT:g} s"
            ) from None

    def _give_up(self) -> None:
        with contextlib.suppress(OSError):
            self.shutdown(socket.SHUT_RD)


def limit_io(listener: Any) -> None:
    """Make every connection accepted on ``listener`` a :class:`_BoundedConnection`.

    A client that sends part of a request and then nothing (or never reads its
    reply) held one of the worker's threads for as long as it stayed connected;
    16 such clients wedged the plugin and dockerd with it. (Unix sockets do not
    inherit socket timeouts from the listener: each accepted socket gets its own.)
    """
    seconds = int(READ_TIMEOUT)
    value = struct.pack("ll", seconds, int((READ_TIMEOUT - seconds) * 1e6))
    accept = listener.accept

    def accept_bounded() -> tuple[socket.socket, Any]:
        client, address = accept()
        bounded = _BoundedConnection(client.family, client.type, client.proto,
                                     fileno=client.detach())  # fmt: skip
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            bounded.setsockopt(socket.SOL_SOCKET, option, value)
        return bounded, address

    listener.accept = accept_bounded


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


def _run_file(config: Config, driver: str, kind: str) -> str:
    from mount_core.statedir import StateDir

    return os.path.join(StateDir(config.state_dir).private("run"), f"docker-{driver}.{kind}")


def _mark_reconciled(path: str) -> None:
    """Tell the other workers that this daemon (its master's PID) has reconciled."""
    from mount_core.atomicfile import write_atomically

    write_atomically(path, str(os.getppid()), 0o600, sync=False)


def _await_reconciled(path: str, ready: threading.Event) -> None:
    """Set ``ready`` once the lead worker of this daemon has reconciled."""

    def wait() -> None:
        master = str(os.getppid())
        while True:
            with contextlib.suppress(OSError), open(path) as handle:
                if handle.read() == master:
                    ready.set()
                    return
            time.sleep(0.1)

    threading.Thread(target=wait, name="hepvol-docker-await", daemon=True).start()


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
        _mark_reconciled(_run_file(config, settings.driver, "reconciled"))
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
        self.lead = False
        self.ready = threading.Event()
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"unix:{self.settings.socket_path}",
            "workers": self.settings.workers,
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
        assert self.background is not None  # load() ran first, in this worker
        self.lead = self.background.take_lead()
        event(log, "serving", driver=self.settings.driver, socket=self.settings.socket_path,
              pid=os.getpid(), lead=self.lead)  # fmt: skip
        for listener in worker.sockets:
            limit_io(listener)
        if not self.lead:
            reconciled = _run_file(self.hepvol_config, self.settings.driver, "reconciled")
            _await_reconciled(reconciled, self.ready)
            return
        _start_background(self.background, self.ready, self.hepvol_config, self.settings)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.background is not None and self.lead:
            self.background.stop()
