"""Every path hepvol keeps under its state directory, and the check before any is trusted.

The state dir decides what gets mounted where (the ledger, the locks) and holds
secrets (credentials): a state dir, or a directory in it, that a user other than
root could write, or a symlink planted in it, would let that user steer a root
daemon. :meth:`StateDir.ensure` creates it 0700 or refuses it with the command
that fixes it (:mod:`mount_core.rootdirs`); :meth:`StateDir.private` does the
same for each directory in it. Nothing else joins paths under ``state_dir``.

Layout::

    ledger.db              the ledger (SQLite WAL: also -wal, -shm)
    locks/<key>.lock       one per volume, while it has consumers (mount_core.locks)
    run/<name>.pid         the local backend's FUSE servers; <name>.starting while one starts
    logs/                  FUSE servers' logs (localfs-<name>.log) and flexvolume.log
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
        """Create the state dir 0700 if missing; refuse one that someone other than root can write."""
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
