"""One background pass repeated on an interval, for a daemon's duties.

The health loop and the stale-pod evictor both run this way: one daemon thread
per duty, a pass every ``interval`` seconds, and a failing pass logged rather
than ending the loop (a daemon's background duty must outlive one bad pass).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod


class Periodic(ABC):
    """Runs :meth:`run_once` every ``interval`` seconds in one daemon thread."""

    #: The thread's name, as ``ps -L`` and tracebacks show it.
    thread_name = "hepvol-periodic"

    def __init__(self, interval: float, log: logging.Logger) -> None:
        self.interval = interval
        self._log = log
        self._stop = threading.Event()
        # start() and stop() may race (a gunicorn worker told to exit while it starts).
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def run_once(self) -> object:
        """One pass of the duty."""

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                self._log.exception(
                    f"{self.thread_name} pass failed", extra={"volume": None, "consumer": None}
                )

    def start(self) -> None:
        """Start the thread (exactly one per process and duty should); not after stop()."""
        with self._guard:
            if self._thread is None and not self._stop.is_set():
                thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                thread.start()
                self._thread = thread

    def stop(self) -> None:
        self._stop.set()
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
