"""The ledger's database file, deleted or replaced while hepvol runs.

An operator's ``rm ledger.db`` (or a restored backup) must not make hepvol forget
what it mounted and then act on the empty record: unmount a backing mount that
live consumers still use, or unbind their targets at the next start-up. So:

- a process that still has the old database open notices (the path no longer
  names the file it opened) and, if no new file exists yet, writes its copy back
  (:func:`restore`); if another process already made a new one, it puts into it
  what the kernel could not tell that process (:func:`merge`);
- a process that finds no ledger at all clears the dead file's leftover WAL
  (:func:`clear_orphans`), and the core rebuilds the record from the kernel's
  mount table (:meth:`mount_core.reconcile.Reconciler.rebuild`).

Each step runs under the ledger's writers' lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import Counter

#: Kind of the consumer rows rebuilt from the mount table: their real holder is unknown.
RECOVERED = "recovered"

FileId = tuple[int, int] | None


def identity(path: str) -> FileId:
    """(device, inode) of the file at ``path``, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the ledger at ``path`` with the settings every process uses."""
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def clear_orphans(path: str) -> bool:
    """Remove the WAL and shared-memory files of a deleted database; True when there were any.

    They belong to the deleted file: SQLite would read the new, empty one through
    them and fail with "disk I/O error" (processes that have them open keep theirs).
    """
    found = False
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
            found = True
    return found


def create_empty(path: str) -> bool:
    """Make an empty ledger file at ``path`` (clearing a dead one's leftovers); True when made."""
    if os.path.exists(path):
        return False
    clear_orphans(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        return True
    return False


def restore(old: sqlite3.Connection, path: str) -> bool:
    """Write the database ``old`` still sees back to ``path``; False when a file is there already."""
    scratch = f"{path}.restore-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(scratch)
    copy = sqlite3.connect(scratch)
    try:
        old.backup(copy)
    finally:
        copy.close()
    try:
        if os.path.exists(path):
            return False
        clear_orphans(path)
        os.link(scratch, path)  # never replaces a file another process made meanwhile
        os.chmod(path, 0o600)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(scratch)


def merge(old: sqlite3.Connection, new: sqlite3.Connection) -> Counter[str]:
    """Put into ``new`` (rebuilt from the kernel by another process) what only ``old`` knew.

    The kernel shows backing mounts and targets but not their volumes' definitions,
    the consumers behind them, Docker holds or named volumes; those come from here.
    Targets the new ledger does not have are not brought back: the kernel (or a
    call since) says they are gone.
    """
    done: Counter[str] = Counter()
    new.execute("BEGIN IMMEDIATE")
    try:
        for row in old.execute("SELECT key, backend, spec FROM backing_mounts"):
            cursor = new.execute(
                "UPDATE backing_mounts SET backend = ?, spec = ? WHERE key = ? AND spec = '{}'",
                (row["backend"], row["spec"], row["key"]),
            )
            done["volume definitions"] += cursor.rowcount
            # This process knows the holders of this mount: no stand-in holder is needed.
            new.execute(
                "DELETE FROM consumers WHERE key = ? AND kind = ? AND target IS NULL",
                (row["key"], RECOVERED),
            )
        for row in old.execute("SELECT * FROM consumers ORDER BY id"):
            done[_merge_consumer(new, row)] += 1
        for row in old.execute("SELECT * FROM volumes"):
            cursor = new.execute(
                "INSERT OR IGNORE INTO volumes (front, name, spec, created_at) VALUES (?, ?, ?, ?)",
                (row["front"], row["name"], row["spec"], row["created_at"]),
            )
            done["named volumes"] += cursor.rowcount
        new.execute("COMMIT")
    except BaseException:
        new.execute("ROLLBACK")
        raise
    done.pop("", None)
    return done


def _merge_consumer(new: sqlite3.Connection, row: sqlite3.Row) -> str:
    values = (row["consumer"], row["kind"], row["subpath"], row["readonly"],
              row["created_target"], row["info"], row["created_at"])  # fmt: skip
    if row["target"] is not None:
        cursor = new.execute(
            "UPDATE consumers SET consumer = ?, kind = ?, subpath = ?, readonly = ?,"
            " created_target = ?, info = ?, created_at = ? WHERE target = ? AND kind = ?",
            (*values, row["target"], RECOVERED),
        )
        return "consumers" if cursor.rowcount else ""
    known = new.execute(
        "SELECT 1 FROM consumers WHERE key = ? AND consumer = ?", (row["key"], row["consumer"])
    ).fetchone()
    mounted = new.execute("SELECT 1 FROM backing_mounts WHERE key = ?", (row["key"],)).fetchone()
    if known or not mounted:
        return ""
    new.execute(
        "INSERT INTO consumers (key, consumer, kind, subpath, readonly, created_target, info,"
        " created_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active')",
        (row["key"], *values),
    )
    return "holders"
