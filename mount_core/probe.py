"""Probing a FUSE mount without ever blocking the caller on it: a leaf module.

A probe is ``statvfs`` on the mount (it always reaches the server; ``stat`` may be
answered from the kernel's cache). It runs in a worker thread joined with a
timeout: a dead server answers ENOTCONN at once, a hung one never answers, and
the caller learns that within the bound. At most one probe per path is ever in
flight, so a hung mount costs one parked thread, not one per caller or pass.

This module imports nothing of the core: backends, the backing-mount service,
reconcile, health and status all use it, and it uses none of them.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum


class Condition(StrEnum):
    """The condition of a backing mount, as the ledger, status and the fronts show it."""

    HEALTHY = "healthy"
    REPAIRING = "repairing"
    FAILED = "failed"
    #: A consumer (not a backing mount) that still holds a mount since replaced.
    STALE = "stale"


#: errnos after which remounting helps (the server is gone, not just slow).
DEAD_ERRNOS = frozenset((errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT))


@dataclass(frozen=True)
class ProbeResult:
    """What a probe saw. ``dead`` means remounting will help; a hang is not dead."""

    condition: Condition
    message: str
    dead: bool = False
    usage: os.statvfs_result | None = None


HEALTHY_RESULT = ProbeResult(Condition.HEALTHY, "")


class Prober:
    """Bounded ``statvfs`` probes, one in flight per path."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._inflight: dict[str, tuple[threading.Thread, float]] = {}
        self._lock = threading.Lock()

    def probe(self, path: str) -> ProbeResult:
        with self._lock:
            running = self._inflight.get(path)
            if running is not None and running[0].is_alive():
                age = time.monotonic() - running[1]
                return ProbeResult(
                    Condition.FAILED, f"not responding for {age:.0f} s (hung FUSE server?)"
                )
            box: list[ProbeResult] = []
            worker = threading.Thread(target=self._run, args=(path, box), daemon=True)
            self._inflight[path] = (worker, time.monotonic())
            worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return ProbeResult(
                Condition.FAILED, f"not responding within {self.timeout:g} s (hung FUSE server?)"
            )
        with self._lock:
            self._inflight.pop(path, None)
        return box[0]

    @staticmethod
    def _run(path: str, box: list[ProbeResult]) -> None:
        try:
            usage = os.statvfs(path)
        except OSError as exc:
            # A server killed mid-request answers ECONNABORTED first, then ENOTCONN.
            died = exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            reason = "the FUSE server died" if died else exc.strerror
            message = f"{reason} ({errno.errorcode.get(exc.errno or 0)})"
            box.append(ProbeResult(Condition.FAILED, message, dead=exc.errno in DEAD_ERRNOS))
            return
        box.append(ProbeResult(Condition.HEALTHY, "", usage=usage))
