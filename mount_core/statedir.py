"""Every path hepvol keeps under its state directory, and the check before any is trusted.

The state dir decides what gets mounted where (the ledger, the locks) and holds
secrets (credentials): a state dir, or a directory in it, that a user other than
root could write, or a symlink planted in it, would let that user steer a root
daemon. :meth:`StateDir.ensure` creates it 0700 or refuses it with the command
that fixes it (:mod:`mount_core.rootdirs`); :meth:`StateDir.private` does the
same for each directory in it. Nothing else joins paths under ``state_dir``.

Layout::

    ledger.db              the ledger (SQLite WAL: also -wal, -shm)
    locks/<key>.lock       one per volume (and target), removed with it (mount_core.locks)
    run/<name>.pid         the local backend's FUSE servers; <name>.starting while one starts
                           (removed with their mount); docker-<driver>.lead, .reconciled
    logs/                  FUSE servers' logs (localfs-<name>.log, removed with their
                           mount) and flexvolume.log (rotated: mount_core.logs)
    credentials/           named volumes' credentials (mount_core.credentials) and the
                           credential stores of private eosxd mounts (<key>/)
    eos/<key>/             eosxd caches
    autofs/                the automount master and program maps
    flexvolume.sock        the node daemon's FlexVolume relay
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mount_core import rootdirs
from mount_core.errors import StateError


def _ensure(path: str, what: str) -> None:
    try:
        rootdirs.ensure(path, what, 0o700)
    except OSError as exc:  # mkdir failed: a read-only or full file system, a file in the way
        raise StateError(
            f"cannot create {what} {path}: {exc.strerror}; check state_dir in the hepvol config"
        ) from None


@dataclass(frozen=True)
class StateDir:
    """The state directory at ``path``."""

    path: str

    def ensure(self) -> StateDir:
        """Create the state dir 0700 if missing; refuse one that others than root can write."""
        _ensure(self.path, "state directory")
        return self

    def private(self, directory: str) -> str:
        """``<state>/<directory>``, created 0700 and checked like the state dir."""
        path = os.path.join(self.path, directory)
        _ensure(path, f"{directory} directory")
        return path

    @property
    def ledger(self) -> str:
        return os.path.join(self.path, "ledger.db")

    @property
    def locks(self) -> str:
        return os.path.join(self.path, "locks")

    @property
    def run(self) -> str:
        return os.path.join(self.path, "run")

    @property
    def logs(self) -> str:
        return os.path.join(self.path, "logs")

    @property
    def credentials(self) -> str:
        return os.path.join(self.path, "credentials")

    @property
    def eos(self) -> str:
        return os.path.join(self.path, "eos")

    @property
    def autofs(self) -> str:
        return os.path.join(self.path, "autofs")

    @property
    def relay_socket(self) -> str:
        return os.path.join(self.path, "flexvolume.sock")

    # The files of one volume: made and removed by their one owner, named only here.

    def lock_file(self, key: str) -> str:
        """``locks/<key>.lock``: held while the volume is changed; removed with the volume
        (:meth:`mount_core.locks.LockDir.discard`)."""
        return os.path.join(self.locks, f"{key}.lock")

    def server_pidfile(self, name: str) -> str:
        """``run/<name>.pid``: the embedded FUSE server of mount point ``name``; written by
        the server once it serves, removed when it is stopped (``backends/local.py``)."""
        return os.path.join(self.run, f"{name}.pid")

    def server_starting(self, name: str) -> str:
        """``run/<name>.starting``: locked while that server starts; removed with its mount."""
        return os.path.join(self.run, f"{name}.starting")

    def server_log(self, name: str) -> str:
        """``logs/localfs-<name>.log``: that server's log; removed with its mount."""
        return os.path.join(self.logs, f"localfs-{name}.log")
