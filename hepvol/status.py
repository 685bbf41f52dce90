"""``hepvol status`` output: the core's status data as a table for people or as JSON.

The data comes from :func:`mount_core.status.collect` (through
``MountManager.status()``); this module only renders it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mount_core.status import BackingStatus


def as_json(statuses: list[BackingStatus]) -> dict[str, Any]:
    return {"backing_mounts": [asdict(s) for s in statuses]}


def as_table(statuses: list[BackingStatus]) -> str:
    """A readable table: one line per backing mount, its consumers indented below."""
    if not statuses:
        return "no backing mounts"
    lines = [f"{'VOLUME':<40} {'BACKEND':<8} {'CONDITION':<10} {'USERS':>5}  PATH"]
    for s in statuses:
        condition = s.condition + (f" ({s.message})" if s.message else "")
        lines.append(f"{s.source:<40} {s.backend:<8} {s.condition:<10} {len(s.consumers):>5}  "
                     f"{s.path}")  # fmt: skip
        if s.message:
            lines.append(f"  ! {condition}")
        for c in s.consumers:
            pod = c.info.get("pod")
            where = c.target or "(no target)"
            extra = f"  pod {pod}" if pod else ""
            mode = "ro" if c.readonly else "rw"
            lines.append(f"  - {c.id:<60} {mode} {where}{extra}")
    return "\n".join(lines)
