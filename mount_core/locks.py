"""Per-spec locks that hold across threads and processes.

A FlexVolume call, the CSI server and the Docker plugin may act on the same spec
at once. Each holder takes a process-local readers-writer lock first (so threads
queue with proper wake-ups instead of polling) and then ``flock`` on
``<state dir>/locks/<key>.lock`` (so processes exclude each other; the kernel drops
the lock when a holder dies, even by ``kill -9``). Waits are bounded.

Consumers arriving at or leaving a mounted volume hold the lock shared and run in
parallel; mounting, unmounting and repairing hold it exclusive.

If the lock directory is removed under running daemons, the next caller locks a
fresh file and no longer excludes a holder of the old one. So a holder checks
(:func:`check_held`) that the path still names its file before each act on the
kernel, and a call that fails while its lock is gone raises :class:`LockLost`
(retryable): the caller starts over under the fresh lock, deciding anew.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mount_core import rootdirs
from mount_core.errors import Busy, HepvolError, LockLost, StateError
from mount_core.statedir import StateDir


class _SharedLock:
    """A readers-writer lock for the threads of one process; writers are preferred,
    so a steady stream of publishes cannot starve an unmount."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire(self, shared: bool, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            if shared:
                while self._writer or self._writers_waiting:
                    if not self._cond.wait(deadline - time.monotonic()):
                        return False
                self._readers += 1
                return True
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    if not self._cond.wait(deadline - time.monotonic()):
                        return False
                self._writer = True
                return True
            finally:
                self._writers_waiting -= 1

    def release(self, shared: bool) -> None:
        with self._cond:
            if shared:
                self._readers -= 1
            else:
                self._writer = False
            self._cond.notify_all()


_local_locks: dict[str, _SharedLock] = {}
_guard = threading.Lock()
#: The lock files this thread holds: key -> (descriptor, path; "" once discarded).
_held = threading.local()


def _held_here() -> dict[str, tuple[int, str]]:
    held: dict[str, tuple[int, str]] | None = getattr(_held, "files", None)
    if held is None:
        held = _held.files = {}
    return held


def _intact(key: str) -> bool:
    """True unless the lock file this thread holds for ``key`` is no longer its path's
    (a file the holder discarded itself is not lost)."""
    fd, path = _held_here()[key]
    return not path or _same_file(fd, path)


def _lost(key: str) -> LockLost:
    return LockLost(
        f"the lock file of {key} was removed while held (the state dir's lock directory "
        "was damaged), so another call may have run alongside; nothing more was done, "
        "try again"
    )


def check_held() -> None:
    """Raise :class:`LockLost` unless every lock this thread holds is still its path's file.

    Called before acting on the kernel: past this point, a holder of the old file
    and one of a fresh file would both act on the same target or mount.
    """
    for key in _held_here():
        if not _intact(key):
            raise _lost(key)


def _thread_lock(name: str) -> _SharedLock:
    with _guard:
        lock = _local_locks.get(name)
        if lock is None:
            lock = _local_locks[name] = _SharedLock()
        return lock


def flock_until(fd: int, mode: int, deadline: float, what: str) -> None:
    """``flock(fd, mode)``, polled without blocking until ``deadline`` (then :class:`Busy`).

    Polling keeps the wait bounded (a blocking flock cannot time out) and wakes
    within milliseconds of the holder letting go.
    """
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Busy(f"another process is operating on {what}; try again") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.005)


def _same_file(fd: int, path: str) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


def lock_file(path: str, mode: int, deadline: float, what: str) -> int:
    """Open (creating) and ``flock`` the lock file at ``path``; return its descriptor.

    Lock files go with their volume (:meth:`LockDir.discard`). A holder that
    opened the file just before it was removed would lock a file nobody else
    sees, so after each lock the path must still name the locked file; if not,
    the lock is taken again on the path's current file.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            # The lock directory was removed under a running daemon (an admin's
            # clean-up): every later call would fail until a restart. Make it again.
            rootdirs.ensure(os.path.dirname(path), "lock directory", 0o700)
            continue
        except OSError as exc:
            raise StateError(f"cannot open the lock file of {what}: {exc.strerror}") from None
        try:
            flock_until(fd, mode, deadline, what)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


class LockDir:
    """The directory holding one lock file per spec key."""

    def __init__(self, state_dir: str) -> None:
        self.state = StateDir(state_dir)
        self.path = self.state.locks
        rootdirs.ensure(self.path, "lock directory", 0o700)

    @contextmanager
    def hold(self, key: str, timeout: float, *, shared: bool = False) -> Iterator[None]:
        """Hold the lock of ``key`` or raise :class:`Busy` after ``timeout`` seconds.

        Shared holders (consumers coming and going on a mounted volume) run side by
        side; an exclusive holder (mounting, unmounting, repairing) runs alone.
        """
        deadline = time.monotonic() + timeout
        local = _thread_lock(os.path.join(self.path, key))
        if not local.acquire(shared, timeout):
            raise Busy(f"another operation on {key} is in progress; try again")
        try:
            path = self.state.lock_file(key)
            fd = lock_file(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, deadline, key)
            held = _held_here()
            held[key] = (fd, path)
            try:
                yield
            except HepvolError:
                if not _intact(key):
                    raise _lost(key) from None
                raise
            except OSError as exc:
                # An ENOENT or the like of a call that ran alongside another: retryable.
                if not _intact(key):
                    raise _lost(key) from exc
                raise
            finally:
                held.pop(key, None)
                os.close(fd)
        finally:
            local.release(shared)

    def discard(self, key: str) -> None:
        """Remove the lock file of ``key`` once its volume is gone (lock held exclusively).

        Otherwise every volume ever mounted leaves a file behind; a waiter that
        opened the old file notices and locks the new one (:func:`lock_file`). A
        file that is not the one held (made anew after the lock directory was
        removed) is another holder's: it stays.
        """
        path = self.state.lock_file(key)
        held = _held_here()
        if key in held:
            if not _intact(key):
                return
            held[key] = (held[key][0], "")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
