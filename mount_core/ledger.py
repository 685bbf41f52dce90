"""The ledger: the persistent record of backing mounts, consumers and named volumes.

One SQLite database in WAL mode, shared by every hepvol process on the node (the
Docker and CSI daemons, each FlexVolume call, the CLI). Writes run in ``BEGIN
IMMEDIATE`` transactions; WAL with ``synchronous=NORMAL`` keeps every committed
transaction across a ``kill -9`` of any process (only a power cut can lose the
last few). The reference count of a backing mount is the number of its consumer
rows — it is never stored, so it cannot drift.

Consumer rows carry a state that records intent before the kernel is touched:
``binding`` (row written, bind not yet confirmed) → ``active``; ``releasing``
(unmount under way). ``reconcile`` finishes whatever a crash interrupted.

Generations: a backing mount's grows each time a dead one is replaced; a
consumer records the generation it was given. A container runtime gives each
container its own copy of a bind, which a repair cannot reach, so a consumer of
an older generation than its backing mount is *stale*: it still sees the dead
mount. A remount after a reboot (``boot_id`` changed) carries the consumers
along: nothing survived the reboot that could hold the old mount.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mount_core import ledger_file
from mount_core.errors import Busy, Conflict, StateError
from mount_core.ledger_file import RECOVERED as RECOVERED
from mount_core.ledger_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    BackingState,
    ConsumerState,
    backing_row,
    consumer_row,
)
from mount_core.ledger_schema import BackingRow as BackingRow
from mount_core.ledger_schema import ConsumerRow as ConsumerRow
from mount_core.ledger_schema import VolumeRow as VolumeRow
from mount_core.locks import flock_until, lock_file
from mount_core.logs import event

log = logging.getLogger("hepvol.ledger")


def _fd_identity(fd: int) -> ledger_file.FileId:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class Ledger:
    """Thread-safe access to ``<state dir>/ledger.db`` for one process."""

    def __init__(self, path: str, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._busy_timeout = busy_timeout
        #: True when this process found no ledger and made a new one (see ledger_file).
        self.created = False
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            # Writers of all processes queue on a lock file: SQLite's own busy handler
            # sleeps up to 100 ms between tries, which parallel FlexVolume calls feel.
            self._writers = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not os.path.exists(path):
                with self._writers_locked():
                    self.created = ledger_file.create_empty(path)
            self._db = ledger_file.connect(path, busy_timeout)
            self._file = ledger_file.identity(path)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the ledger {path}: {exc}") from None
        os.chmod(path, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._writers)

    def _migrate(self) -> None:
        if self._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the usual case, answered without taking the write lock
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the ledger {self.path} has schema {version}, newer than this hepvol "
                    f"({SCHEMA_VERSION}); upgrade hepvol rather than downgrade it"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={step}")

    @contextmanager
    def _writers_locked(self) -> Iterator[None]:
        """Hold the writers' lock of every process (its file replaced too: take the new one)."""
        deadline = time.monotonic() + self._busy_timeout
        flock_until(self._writers, fcntl.LOCK_EX, deadline, "the ledger")
        if ledger_file.identity(self.path + ".lock") != _fd_identity(self._writers):
            os.close(self._writers)
            self._writers = lock_file(self.path + ".lock", fcntl.LOCK_EX, deadline, "the ledger")
        try:
            yield
        finally:
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    def _follow_file(self) -> None:
        """With the writers' lock: if ``ledger.db`` was deleted or replaced, recover."""
        if ledger_file.identity(self.path) == self._file:
            return
        old = self._db
        restored = ledger_file.identity(self.path) is None and ledger_file.restore(old, self.path)
        new = ledger_file.connect(self.path, self._busy_timeout)
        merged = None if restored else ledger_file.merge(old, new)
        old.close()
        self._db, self._file = new, ledger_file.identity(self.path)
        how = "restored it from this process's open copy" if restored else (
            f"merged this process's records into the new one ({dict(merged or {})})"
        )  # fmt: skip
        event(log, f"the ledger {self.path} was deleted or replaced while hepvol ran; {how}",
              level=logging.ERROR)  # fmt: skip

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front (``BEGIN IMMEDIATE``) to avoid upgrade deadlocks."""
        with self._lock, self._writers_locked():
            try:
                self._follow_file()
                self._db.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, OSError) as exc:
                raise StateError(f"ledger {self.path} is unavailable: {exc}") from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"ledger {self.path}: {exc}; nothing was changed") from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                if ledger_file.identity(self.path) != self._file:
                    with self._writers_locked():
                        self._follow_file()
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise StateError(f"ledger {self.path}: {exc}") from None

    # Backing mounts -----------------------------------------------------------

    def backing(self, key: str) -> BackingRow | None:
        rows = self._query("SELECT * FROM backing_mounts WHERE key = ?", (key,))
        return backing_row(rows[0]) if rows else None

    def backings(self) -> list[BackingRow]:
        return [backing_row(r) for r in self._query("SELECT * FROM backing_mounts ORDER BY key")]

    def put_backing(
        self,
        key: str,
        backend: str,
        spec: dict[str, Any],
        path: str,
        state: BackingState,
        boot_id: str = "",
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO backing_mounts (key, backend, spec, path, state, created_at, boot_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "backend=excluded.backend, spec=excluded.spec, path=excluded.path, "
                "state=excluded.state, idle_since=NULL",
                (key, backend, json.dumps(spec, sort_keys=True), path, state, time.time(), boot_id),
            )

    def new_generation(self, key: str, boot_id: str) -> int:
        """A backing mount was replaced: the next generation (returned) starts.

        Its consumers keep theirs, and are stale from now on, unless the old mount
        belonged to another boot (then nobody can hold it, and they move along).
        """
        with self.transaction() as db:
            old = db.execute(
                "SELECT generation, boot_id FROM backing_mounts WHERE key = ?", (key,)
            ).fetchone()
            if old is None:
                return 0
            generation = int(old["generation"]) + 1
            db.execute(
                "UPDATE backing_mounts SET generation = ?, boot_id = ? WHERE key = ?",
                (generation, boot_id, key),
            )
            if old["boot_id"] != boot_id:
                db.execute("UPDATE consumers SET generation = ? WHERE key = ?", (generation, key))
            return generation

    def set_backing_state(self, key: str, state: BackingState) -> None:
        with self.transaction() as db:
            db.execute("UPDATE backing_mounts SET state = ? WHERE key = ?", (state, key))

    def set_idle(self, key: str, since: float | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE backing_mounts SET idle_since = ? WHERE key = ?", (since, key))

    def set_condition(self, key: str, condition: str, message: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE backing_mounts SET condition = ?, message = ?, checked_at = ? WHERE key = ?",
                (condition, message, time.time(), key),
            )

    def delete_backing(self, key: str) -> None:
        """Forget a backing mount; refused (StateError) while it has consumers."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM consumers WHERE key = ? LIMIT 1", (key,)).fetchone():
                raise StateError(f"backing mount {key} still has consumers")
            db.execute("DELETE FROM backing_mounts WHERE key = ?", (key,))

    # Consumers ----------------------------------------------------------------

    def add_consumer(
        self,
        key: str,
        consumer: str,
        kind: str,
        *,
        target: str | None = None,
        subpath: str = "",
        readonly: bool = True,
        state: ConsumerState = ConsumerState.ACTIVE,
        created_target: bool = False,
        info: dict[str, Any] | None = None,
    ) -> int:
        with self.transaction() as db:
            db.execute(
                "UPDATE backing_mounts SET idle_since = NULL WHERE key = ? AND idle_since IS NOT NULL",
                (key,),
            )
            try:
                cursor = db.execute(
                    "INSERT INTO consumers (key, consumer, kind, target, subpath, readonly, state,"
                    " created_target, info, created_at, generation) VALUES (?, ?, ?, ?, ?, ?, ?,"
                    " ?, ?, ?, (SELECT generation FROM backing_mounts WHERE key = ?))",
                    (
                        key,
                        consumer,
                        kind,
                        target,
                        subpath,
                        int(readonly),
                        state,
                        int(created_target),
                        json.dumps(info or {}, sort_keys=True),
                        time.time(),
                        key,
                    ),
                )
            except sqlite3.IntegrityError:
                holder = db.execute(
                    "SELECT consumer, key FROM consumers WHERE target = ?", (target,)
                ).fetchone()
                if holder is None:
                    raise
                if (holder["consumer"], holder["key"]) == (consumer, key):
                    raise Busy(f"another publish of {target} is in progress; try again") from None
                raise Conflict(f"{target} is already a target of {holder['consumer']}") from None
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def claim_consumer(self, row_id: int, consumer: str, kind: str, info: dict[str, Any]) -> None:
        """Give a consumer rebuilt from the mount table (kind ``recovered``) its real holder."""
        with self.transaction() as db:
            db.execute(
                "UPDATE consumers SET consumer = ?, kind = ?, info = ? WHERE id = ? AND kind = ?",
                (consumer, kind, json.dumps(info, sort_keys=True), row_id, RECOVERED),
            )

    def set_consumer_state(self, row_id: int, state: ConsumerState) -> None:
        with self.transaction() as db:
            db.execute("UPDATE consumers SET state = ? WHERE id = ?", (state, row_id))

    def delete_consumer(self, row_id: int) -> int:
        """Delete one consumer row; returns how many consumers its backing mount has left."""
        with self.transaction() as db:
            row = db.execute(
                "DELETE FROM consumers WHERE id = ? RETURNING key", (row_id,)
            ).fetchone()
            if row is None:
                return -1
            left = db.execute(
                "SELECT COUNT(*) FROM consumers WHERE key = ?", (row["key"],)
            ).fetchone()[0]
            return int(left)

    def consumers(self, key: str | None = None) -> list[ConsumerRow]:
        if key is None:
            rows = self._query("SELECT * FROM consumers ORDER BY id")
        else:
            rows = self._query("SELECT * FROM consumers WHERE key = ? ORDER BY id", (key,))
        return [consumer_row(r) for r in rows]

    def consumers_named(self, consumer: str) -> list[ConsumerRow]:
        rows = self._query("SELECT * FROM consumers WHERE consumer = ? ORDER BY id", (consumer,))
        return [consumer_row(r) for r in rows]

    def consumer_at(self, target: str) -> ConsumerRow | None:
        rows = self._query("SELECT * FROM consumers WHERE target = ?", (target,))
        return consumer_row(rows[0]) if rows else None

    def count(self, key: str) -> int:
        return int(self._query("SELECT COUNT(*) FROM consumers WHERE key = ?", (key,))[0][0])

    # Named volumes (Docker volume records, CSI controller volumes) --------------

    def put_volume(self, front: str, name: str, spec: dict[str, Any], created_at: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO volumes (front, name, spec, created_at) VALUES (?, ?, ?, ?)",
                (front, name, json.dumps(spec, sort_keys=True), created_at),
            )

    def volume(self, front: str, name: str) -> VolumeRow | None:
        rows = self._query("SELECT * FROM volumes WHERE front = ? AND name = ?", (front, name))
        if not rows:
            return None
        return VolumeRow(front, name, json.loads(rows[0]["spec"]), rows[0]["created_at"])

    def volumes(self, front: str) -> list[VolumeRow]:
        rows = self._query("SELECT * FROM volumes WHERE front = ? ORDER BY name", (front,))
        return [VolumeRow(front, r["name"], json.loads(r["spec"]), r["created_at"]) for r in rows]

    def delete_volume(self, front: str, name: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM volumes WHERE front = ? AND name = ?", (front, name))
            return cursor.rowcount > 0
