"""Make the ledger and the kernel agree, after a crash, a restart or a dead mount.

``reconcile`` runs at daemon start-up (and from ``hepvol reconcile``); ``repair``
runs from the health loop for one dead backing mount. Both only ever touch mounts
this node's hepvol made: rows in the ledger, or mounts its backends recognise
under the mount root and target roots.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field

from mount_core import bind, targets
from mount_core.errors import HepvolError, InvalidTarget
from mount_core.ledger import BackingRow, ConsumerRow
from mount_core.logs import event
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition, Prober
from mount_core.spec import VolumeSpec

log = logging.getLogger("hepvol.reconcile")


@dataclass
class Report:
    """What a reconcile pass changed."""

    adopted: list[str] = field(default_factory=list)
    remounted: list[str] = field(default_factory=list)
    rebound: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))

    def counts(self) -> dict[str, int]:
        return {name: len(value) for name, value in vars(self).items()}


def _target_exists(target: str, table: MountTable) -> bool:
    # A mount point exists even when its FUSE server is dead or hung; only
    # unmounted paths are looked at, so this never blocks on a FUSE mount.
    if table.at(target) is not None:
        return True
    return os.path.isdir(target) and not os.path.islink(target)


def _unbind(manager: MountManager, target: str, *, remove_dir: bool = False) -> None:
    with contextlib.suppress(OSError):
        targets.release(target, manager.config.target_roots, remove_dir=remove_dir)


def _rebind(manager: MountManager, backing: BackingRow, consumer: ConsumerRow) -> None:
    assert consumer.target is not None
    with (
        targets.open_target(consumer.target, manager.config.target_roots, create=False) as opened,
        targets.open_inside(backing.path, consumer.subpath) as source,
    ):
        backend = manager.backends.named(backing.backend)
        recursive = backend.bind_recursive(VolumeSpec.from_public(backing.spec))
        bind.bind_fd(source.fd, opened.fd, readonly=consumer.readonly, recursive=recursive,
                     propagation=bind.MS_SLAVE if recursive else 0)  # fmt: skip
    manager.ledger.set_consumer_state(consumer.id, "active")


def _remount(manager: MountManager, row: BackingRow) -> None:
    backend = manager.backends.named(row.backend)
    with contextlib.suppress(OSError):
        bind.unmount(row.path, lazy=True)
    backend.mount(backend.revive(row.spec, row.key), row.path)
    manager.ledger.put_backing(row.key, row.backend, row.spec, row.path, "mounted")


def _restore(
    manager: MountManager,
    row: BackingRow,
    table: MountTable,
    prober: Prober | None,
    report: Report,
) -> None:
    """Bring one backing mount and its consumers back in line (lock held)."""
    ledger = manager.ledger
    for consumer in ledger.consumers(row.key):
        if consumer.state == "releasing" or (
            consumer.target is not None and not _target_exists(consumer.target, table)
        ):
            if consumer.target is not None:
                _unbind(manager, consumer.target, remove_dir=consumer.created_target)
            ledger.delete_consumer(consumer.id)
            report.dropped.append(consumer.consumer)
    consumers = ledger.consumers(row.key)
    backend = manager.backends.named(row.backend)
    entry = table.at(row.path)
    mounted = entry is not None and backend.owns(entry)
    if not consumers:
        if row.idle_since is not None and mounted and manager.config.idle_unmount_seconds > 0:
            return
        if mounted:
            report.unmounted.append(row.key)
        manager.unmount_backing(row)
        return
    if mounted and prober is not None:
        # A backend may probe what lies behind the mount instead (autofs roots).
        own = backend.check_health(row.path, prober)
        alive = not (prober.probe(row.path) if own is None else own).dead
    else:
        alive = False
    if not alive:
        _remount(manager, row)
        report.remounted.append(row.key)
        table = MountTable()
    elif row.state != "mounted":
        ledger.set_backing_state(row.key, "mounted")
        report.adopted.append(row.key)
    backing_entry = table.at(row.path)
    device = backing_entry.device if backing_entry else None
    for consumer in consumers:
        if consumer.target is None:
            continue
        bound = table.at(consumer.target)
        if bound is not None and bound.device == device and consumer.state == "active":
            continue
        if bound is not None:
            _unbind(manager, consumer.target)
        try:
            _rebind(manager, row, consumer)
        except (OSError, InvalidTarget) as exc:
            # The target vanished or turned into something we must not mount on.
            report.failed[consumer.consumer] = str(exc)
            ledger.delete_consumer(consumer.id)
            report.dropped.append(consumer.consumer)
            continue
        report.rebound.append(consumer.consumer)
    ledger.set_condition(row.key, Condition.HEALTHY, "")


def reconcile(manager: MountManager) -> Report:
    """Make ledger and mountinfo agree; adopt what survived, finish what was interrupted."""
    report = Report()
    prober = Prober(manager.config.probe_timeout_seconds)
    for row in manager.ledger.backings():
        with manager.locked(row.key):
            fresh = manager.ledger.backing(row.key)
            if fresh is None:
                continue
            try:
                _restore(manager, fresh, MountTable(), prober, report)
            except HepvolError as exc:
                report.failed[row.key] = str(exc)
                manager.ledger.set_condition(row.key, Condition.FAILED, str(exc))
    # The mount table first, the ledger second: every mount is recorded (as intent)
    # before it is made, so a mount made meanwhile by another process is either
    # missing from this table or already known to the ledger, never an "orphan".
    table = MountTable()
    known = {r.path for r in manager.ledger.backings()}
    targets_known = {c.target for c in manager.ledger.consumers() if c.target}
    for entry in reversed(table.entries):
        if manager.backends.owner_of(entry) is None:
            continue
        in_root = entry.mount_point.startswith(manager.config.mount_root.rstrip("/") + "/")
        in_targets = any(
            entry.mount_point.startswith(r.rstrip("/") + "/") for r in manager.config.target_roots
        )
        if in_root and entry.mount_point not in known and entry.mount_point not in targets_known:
            manager.backends.owner_of(entry).unmount(entry.mount_point)  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                os.rmdir(entry.mount_point)
            report.unmounted.append(entry.mount_point)
        elif in_targets and entry.mount_point not in targets_known:
            _unbind(manager, entry.mount_point)
            report.unmounted.append(entry.mount_point)
    event(log, "reconciled", counts=report.counts())
    return report


def repair(manager: MountManager, key: str, reason: str) -> bool:
    """Remount a dead backing mount and re-bind every target of it. True when repaired."""
    try:
        with manager.locked(key):
            row = manager.ledger.backing(key)
            if row is None:
                return False
            manager.ledger.set_condition(key, Condition.REPAIRING, reason)
            for consumer in manager.ledger.consumers(key):
                if consumer.target is not None:
                    _unbind(manager, consumer.target)
            _restore(manager, row, MountTable(), None, Report())
    except HepvolError as exc:
        manager.ledger.set_condition(key, Condition.FAILED, f"repair failed: {exc}")
        event(log, f"repair failed: {exc}", volume=key, level=logging.ERROR)
        return False
    except OSError as exc:
        message = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
        manager.ledger.set_condition(key, Condition.FAILED, f"repair failed: {message}")
        return False
    event(log, "repaired", volume=key, reason=reason)
    return True
