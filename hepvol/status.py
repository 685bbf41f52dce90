"""``hepvol status`` output: the core's status data as a table for people or as JSON.

The data comes from :func:`mount_core.status.collect` (through
``MountManager.status()``); this module only renders it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hepvol.namespaces import NamespaceCheck
from mount_core.consumer import stale_message
from mount_core.status import BackingStatus


def as_json(
    statuses: list[BackingStatus], namespace: NamespaceCheck | None = None
) -> dict[str, Any]:
    found: dict[str, Any] = {"backing_mounts": [asdict(s) for s in statuses]}
    if namespace is not None:
        found["mount_namespace"] = namespace.as_dict()
    return found


def as_table(statuses: list[BackingStatus], namespace: NamespaceCheck | None = None) -> str:
    """A readable table: one line per backing mount, its consumers indented below;
    first a warning when this runs outside kubelet's mount namespace."""
    warning = namespace.warning() if namespace is not None else ""
    lines = [f"! {warning}"] if warning else []
    if not statuses:
        return "\n".join([*lines, "no backing mounts"])
    lines.append(f"{'VOLUME':<40} {'BACKEND':<8} {'CONDITION':<10} {'USERS':>5}  PATH")
    for s in statuses:
        condition = s.condition + (f" ({s.message})" if s.message else "")
        lines.append(f"{s.source:<40} {s.backend:<8} {s.condition:<10} {len(s.consumers):>5}  "
                     f"{s.path}")  # fmt: skip
        if s.message:
            lines.append(f"  ! {condition}")
        for c in s.consumers:
            where = c.target or "(no target)"
            extra = _pod(c.info)
            mode = "ro" if c.readonly else "rw"
            lines.append(f"  - {c.id:<60} {mode} {where}{extra}")
            if c.stale:
                lines.append(f"    ! stale: {stale_message(c.kind)}")
    return "\n".join(lines)


def _pod(info: dict[str, Any]) -> str:
    """``  pod namespace/name (uid U)`` for Kubernetes consumers (CSI and FlexVolume)."""
    pod, uid = info.get("pod"), info.get("pod_uid")
    if pod and uid:
        return f"  pod {pod} (uid {uid})"
    if pod or uid:
        return f"  pod {pod}" if pod else f"  pod uid {uid}"
    return ""
