"""Everything the core knows, as data: for ``hepvol status``, metrics and the fronts.

Rendering it for people and scripts is the app's (:mod:`hepvol.status`).

Status reads the ledger and one snapshot of mountinfo; it never touches a FUSE
mount, so it answers at once even while a mount hangs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mount_core.consumer import stale
from mount_core.ledger import Ledger
from mount_core.ledger_schema import BackingState
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition


@dataclass
class ConsumerStatus:
    id: str
    kind: str
    target: str | None
    readonly: bool
    state: str
    info: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    #: Its container still holds a backing mount since replaced (restart it).
    stale: bool = False


@dataclass
class BackingStatus:
    key: str
    backend: str
    source: str
    path: str
    state: str
    mounted: bool
    condition: str
    message: str
    idle_since: float | None
    consumers: list[ConsumerStatus]
    generation: int = 1


def _source(spec: dict[str, Any]) -> str:
    if spec.get("backend") == "eos":
        return f"{spec.get('instance')}:{spec.get('path', '/')}"
    name = spec.get("repository", "*")
    for pin, mark in (("tag", "@"), ("hash", "#"), ("date", "@")):
        if pin in spec:
            return f"{name}{mark}{spec[pin]}"
    return str(name)


def collect(ledger: Ledger, table: MountTable | None = None) -> list[BackingStatus]:
    """The status of every backing mount in the ledger."""
    table = MountTable() if table is None else table
    backings = ledger.backings()
    generations = {row.key: row.generation for row in backings}
    by_key: dict[str, list[ConsumerStatus]] = {}
    for c in ledger.consumers():
        by_key.setdefault(c.key, []).append(
            ConsumerStatus(
                c.consumer,
                c.kind,
                c.target,
                c.readonly,
                c.state,
                c.info,
                c.generation,
                stale(c.kind, c.generation, generations.get(c.key, c.generation)),
            )
        )
    result = []
    for row in backings:
        mounted = table.at(row.path) is not None
        condition, message = row.condition, row.message
        # While the health loop repairs a volume it is briefly unmounted: say why.
        if row.state == BackingState.MOUNTED and not mounted and condition != Condition.REPAIRING:
            condition, message = Condition.FAILED, "not mounted"
        result.append(
            BackingStatus(
                key=row.key,
                backend=row.backend,
                source=_source(row.spec),
                path=row.path,
                state=row.state,
                mounted=mounted,
                condition=condition,
                message=message,
                idle_since=row.idle_since,
                consumers=by_key.get(row.key, []),
                generation=row.generation,
            )
        )
    return result
