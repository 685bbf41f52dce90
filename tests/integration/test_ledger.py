"""The ledger: schema, multiset consumers, and durability across kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mount_core.errors import Busy, Conflict, StateError
from mount_core.ledger import SCHEMA_VERSION, Ledger


def test_wal_mode_schema_version_and_private_file(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.db"))
    db = sqlite3.connect(tmp_path / "ledger.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert (tmp_path / "ledger.db").stat().st_mode & 0o077 == 0
    ledger.close()


def test_reference_count_is_the_number_of_consumer_rows(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.db"))
    ledger.put_backing("k", "local", {"backend": "cvmfs"}, "/m/k", "mounted")
    first = ledger.add_consumer("k", "docker:abc", "docker")
    ledger.add_consumer("k", "docker:abc", "docker")
    ledger.add_consumer("k", "csi:/t", "csi", target="/t")
    assert ledger.count("k") == 3
    assert ledger.delete_consumer(first) == 2
    with pytest.raises(Conflict, match="already a target of csi:/t"):
        ledger.add_consumer("k", "flex:/t", "flex", target="/t")
    with pytest.raises(Busy, match="in progress"):
        ledger.add_consumer("k", "csi:/t", "csi", target="/t")
    with pytest.raises(StateError, match="still has consumers"):
        ledger.delete_backing("k")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Ledger(str(tmp_path / "ledger.db")).close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    with pytest.raises(StateError, match="newer than this hepvol"):
        Ledger(str(tmp_path / "ledger.db"))


WRITER = """
import sys
from mount_core.ledger import Ledger
ledger = Ledger(sys.argv[1])
ledger.put_backing("k", "local", {}, "/m/k", "mounted")
i = 0
while True:
    ledger.add_consumer("k", f"docker:{i}", "docker")
    print(i, flush=True)
    i += 1
"""


def test_kill_9_loses_no_committed_change(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    for _attempt in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        # Killed while writing: after its first commit (interpreter start-up and the
        # schema take a varying part of a second on a loaded machine), mid-stream.
        first = writer.stdout.readline()
        time.sleep(0.2)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        acknowledged = [int(line) for line in (first + writer.stdout.read()).split()]
        assert acknowledged, "the writer committed something before it was killed"
        ids = {c.consumer for c in Ledger(path).consumers("k")}
        missing = [i for i in acknowledged if f"docker:{i}" not in ids]
        assert missing == [], f"acknowledged commits lost after kill -9: {missing[:5]}"
        Path(path).unlink()
        for suffix in ("-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
