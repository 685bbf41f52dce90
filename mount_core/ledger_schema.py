"""The ledger's tables, their migrations, and the rows read from them."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 2

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE backing_mounts (
        key         TEXT PRIMARY KEY,
        backend     TEXT NOT NULL,
        spec        TEXT NOT NULL,
        path        TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('mounting', 'mounted', 'unmounting')),
        created_at  REAL NOT NULL,
        idle_since  REAL,
        condition   TEXT NOT NULL DEFAULT 'healthy',
        message     TEXT NOT NULL DEFAULT '',
        checked_at  REAL
    );
    CREATE TABLE consumers (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        key             TEXT NOT NULL REFERENCES backing_mounts(key),
        consumer        TEXT NOT NULL,
        kind            TEXT NOT NULL,
        target          TEXT,
        subpath         TEXT NOT NULL DEFAULT '',
        readonly        INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('binding', 'active', 'releasing')),
        created_target  INTEGER NOT NULL DEFAULT 0,
        info            TEXT NOT NULL DEFAULT '{}',
        created_at      REAL NOT NULL
    );
    CREATE UNIQUE INDEX consumers_by_target ON consumers(target) WHERE target IS NOT NULL;
    CREATE INDEX consumers_by_key ON consumers(key);
    CREATE INDEX consumers_by_consumer ON consumers(consumer);
    CREATE TABLE volumes (
        front       TEXT NOT NULL,
        name        TEXT NOT NULL,
        spec        TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (front, name)
    );
    """,
    2: """
    ALTER TABLE backing_mounts ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE backing_mounts ADD COLUMN boot_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE consumers ADD COLUMN generation INTEGER NOT NULL DEFAULT 1
    """,
}


class BackingState(StrEnum):
    """Where a backing mount is in its life (``backings.state``)."""

    MOUNTING = "mounting"  # recorded before the mount is made: never taken for an orphan
    MOUNTED = "mounted"
    UNMOUNTING = "unmounting"


class ConsumerState(StrEnum):
    """Where a consumer's hold is in its life (``consumers.state``)."""

    BINDING = "binding"  # recorded before its target is bound
    ACTIVE = "active"
    RELEASING = "releasing"  # its target is being unbound; reconcile finishes the job


@dataclass
class BackingRow:
    key: str
    backend: str
    spec: dict[str, Any]
    path: str
    state: BackingState
    created_at: float
    idle_since: float | None
    condition: str
    message: str
    checked_at: float | None
    generation: int = 1
    boot_id: str = ""


@dataclass
class ConsumerRow:
    id: int
    key: str
    consumer: str
    kind: str
    target: str | None
    subpath: str
    readonly: bool
    state: ConsumerState
    created_target: bool
    info: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    generation: int = 1


@dataclass
class VolumeRow:
    front: str
    name: str
    spec: dict[str, Any]
    created_at: str


def backing_row(row: sqlite3.Row) -> BackingRow:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    data["state"] = BackingState(data["state"])
    return BackingRow(**data)


def consumer_row(row: sqlite3.Row) -> ConsumerRow:
    data = dict(row)
    data["info"] = json.loads(data["info"])
    data["readonly"] = bool(data["readonly"])
    data["created_target"] = bool(data["created_target"])
    data["state"] = ConsumerState(data["state"])
    return ConsumerRow(**data)
