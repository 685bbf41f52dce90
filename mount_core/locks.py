"""Per-spec locks that hold across threads and processes.

A FlexVolume call, the CSI server and the Docker plugin may act on the same spec
at once. Each holder takes a process-local lock first (so threads queue with
proper wake-ups instead of polling) and then ``flock`` on
``<state dir>/locks/<key>.lock`` (so processes exclude each other; the kernel drops
the lock when a holder dies, even by ``kill -9``). Waits are bounded.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mount_core.errors import Busy

_local_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def _thread_lock(name: str) -> threading.Lock:
    with _guard:
        lock = _local_locks.get(name)
        if lock is None:
            lock = _local_locks[name] = threading.Lock()
        return lock


class LockDir:
    """The directory holding one lock file per spec key."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "locks")
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[None]:
        """Hold the lock of ``key`` or raise :class:`Busy` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        local = _thread_lock(os.path.join(self.path, key))
        if not local.acquire(timeout=timeout):
            raise Busy(f"another operation on {key} is in progress; try again")
        try:
            fd = os.open(
                os.path.join(self.path, key + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                delay = 0.001
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise Busy(
                                f"another process is operating on {key}; try again"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.02)
                yield
            finally:
                os.close(fd)
        finally:
            local.release()
