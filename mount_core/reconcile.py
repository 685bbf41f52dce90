"""Make the ledger and the kernel agree, after a crash, a restart or a dead mount.

:meth:`Reconciler.reconcile` runs at daemon start-up (and from ``hepvol
reconcile``); :meth:`Reconciler.repair` runs from the health loop for one dead
backing mount. Both act only through the backing-mount service
(:mod:`mount_core.backing`) and only ever touch mounts this node's hepvol made:
rows in the ledger, or mounts its backends recognise under the mount root and
target roots.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field

from mount_core.backing import BackingService
from mount_core.errors import HepvolError, InvalidTarget
from mount_core.ledger import RECOVERED, BackingRow
from mount_core.ledger_schema import BackingState, ConsumerState
from mount_core.logs import event
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.probe import Condition

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
    #: FUSE mounts under the mount root that no ledger row and no backend claims.
    foreign: list[str] = field(default_factory=list)

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


def _below(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")


class Reconciler:
    """Start-up reconcile and repair of one process, through the backing-mount service."""

    def __init__(self, service: BackingService) -> None:
        self.service = service
        self.ledger = service.ledger

    # One backing mount -----------------------------------------------------------

    def _drop_gone(self, row: BackingRow, table: MountTable, report: Report) -> None:
        """Forget consumers whose release was interrupted or whose target is gone."""
        for consumer in self.ledger.consumers(row.key):
            gone = consumer.target is not None and not _target_exists(consumer.target, table)
            if consumer.state != ConsumerState.RELEASING and not gone:
                continue
            if consumer.target is not None:
                with contextlib.suppress(OSError):
                    self.service.unbind(consumer.target, remove_dir=consumer.created_target)
            self.ledger.delete_consumer(consumer.id)
            report.dropped.append(consumer.consumer)

    def _unused(self, row: BackingRow, table: MountTable, report: Report) -> None:
        """A backing mount nobody holds: unmount it, unless its idle grace still runs."""
        mounted = self.service.is_ours(row, table)
        if row.idle_since is not None and mounted and self.service.config.idle_unmount_seconds:
            return
        if mounted:
            report.unmounted.append(row.key)
        self.service.unmount(row)

    def _revive(self, row: BackingRow, table: MountTable, report: Report) -> None:
        """Remount the backing mount when it is missing or dead; adopt it when alive."""
        if self.service.probe(row, table).dead:
            self.service.remount(row)
            report.remounted.append(row.key)
        elif row.state != BackingState.MOUNTED:
            self.ledger.set_backing_state(row.key, BackingState.MOUNTED)
            report.adopted.append(row.key)

    def _rebind(self, row: BackingRow, report: Report) -> None:
        """Make every target a bind of the live backing mount; drop the unbindable."""
        fresh = self.ledger.backing(row.key)
        assert fresh is not None
        table = self.service.table()
        for consumer in self.ledger.consumers(row.key):
            if consumer.target is None:
                continue
            try:
                if self.service.restore_target(fresh, consumer, table):
                    report.rebound.append(consumer.consumer)
            except (OSError, InvalidTarget) as exc:
                # The target vanished or turned into something we must not mount on.
                report.failed[consumer.consumer] = str(exc)
                self.ledger.delete_consumer(consumer.id)
                report.dropped.append(consumer.consumer)

    def restore(self, row: BackingRow, report: Report) -> None:
        """Bring one backing mount and its consumers in line with the kernel (exclusive lock)."""
        table = self.service.table()
        self._drop_gone(row, table, report)
        if not self.ledger.count(row.key):
            self._unused(row, table, report)
            return
        self._revive(row, table, report)
        self._rebind(row, report)
        self.ledger.set_condition(row.key, Condition.HEALTHY, "")

    # Every backing mount -----------------------------------------------------------

    def reconcile(self) -> Report:
        """Make ledger and mountinfo agree; adopt what survived, finish what was interrupted."""
        report = Report()
        for row in self.ledger.backings():
            with self.service.locked(row.key):
                fresh = self.ledger.backing(row.key)
                if fresh is None:
                    continue
                try:
                    self.restore(fresh, report)
                except HepvolError as exc:
                    report.failed[row.key] = str(exc)
                    self.ledger.set_condition(row.key, Condition.FAILED, str(exc))
        self._sweep_orphans(report)
        event(log, "reconciled", counts=report.counts())
        return report

    def _sweep_orphans(self, report: Report) -> None:
        """Unmount mounts of ours under the roots that the ledger does not know."""
        # The mount table first, the ledger second: every mount is recorded (as intent)
        # before it is made, so a mount made meanwhile by another process is either
        # missing from this table or already known to the ledger, never an "orphan".
        table = self.service.table()
        known = {r.path for r in self.ledger.backings()}
        known |= {c.target for c in self.ledger.consumers() if c.target}
        for entry in reversed(table.entries):
            if entry.mount_point in known:
                continue
            if self._orphan(entry):
                report.unmounted.append(entry.mount_point)
            elif self.service.backends.owner_of(entry) is None:
                self._stray(entry, report)

    def _stray(self, entry: MountEntry, report: Report) -> None:
        """A FUSE mount under the mount root that nothing of ours claims.

        One named like hepvol's own (e.g. a private cvmfs2 mount whose ledger row
        was lost) is removed with its client by its backend; anything else is only
        reported (an admin's mount, an older hepvol's bare ``/dev/fuse`` client).
        """
        if not (_below(entry.mount_point, self.service.config.mount_root)
                and entry.fstype.startswith("fuse")):  # fmt: skip
            return
        if self.service.backends.remove_stray(entry):
            report.unmounted.append(entry.mount_point)
            return
        report.foreign.append(entry.mount_point)
        event(log, f"a FUSE mount under the mount root is not hepvol's (source {entry.source!r}):"
              " left alone; unmount it if nothing uses it", volume=None, path=entry.mount_point,
              level=logging.WARNING)  # fmt: skip

    def _orphan(self, entry: MountEntry) -> bool:
        """Unmount ``entry`` if it is an unknown mount of ours; True when it was."""
        owner = self.service.backends.owner_of(entry)
        if owner is None:
            return False
        config = self.service.config
        if _below(entry.mount_point, config.mount_root):
            owner.unmount(entry.mount_point)
            with contextlib.suppress(OSError):
                os.rmdir(entry.mount_point)
            return True
        if any(_below(entry.mount_point, root) for root in config.target_roots):
            with contextlib.suppress(OSError):
                self.service.unbind(entry.mount_point)
            return True
        return False

    # A lost ledger ------------------------------------------------------------------

    def rebuild(self) -> Report:
        """Record what the mount table shows of ours in a ledger that was lost.

        Backing mounts under the mount root become rows (their definitions unknown
        until a daemon that still knew them, or the next publish, fills them in), each
        target bound from one becomes a ``recovered`` consumer that its real holder
        claims by publishing again, and a backing mount without visible targets gets a
        stand-in holder (Docker containers hold theirs where this process cannot see).
        So nothing a live consumer uses is unmounted because the record forgot it.
        """
        report = Report()
        table = self.service.table()
        found = self._rebuild_backings(table, report)
        for entry in table.entries:
            backing = found.get(entry.device)
            roots = self.service.config.target_roots
            if backing is None or not any(_below(entry.mount_point, r) for r in roots):
                continue
            inside = os.path.relpath(entry.root, backing.root)
            if inside.startswith("..") or self.ledger.consumer_at(entry.mount_point) is not None:
                continue
            self.ledger.add_consumer(
                os.path.basename(backing.mount_point), f"{RECOVERED}:{entry.mount_point}",
                RECOVERED, target=entry.mount_point, subpath="" if inside == "." else inside,
                readonly=entry.readonly,
            )  # fmt: skip
            report.rebound.append(entry.mount_point)
        for backing in found.values():
            key = os.path.basename(backing.mount_point)
            if not self.ledger.count(key):
                self.ledger.add_consumer(key, f"{RECOVERED}:{key}", RECOVERED)
        if found:
            event(log, "the ledger was lost while mounts of ours were up: rebuilt it from the "
                  f"mount table ({len(found)} backing mounts, {len(report.rebound)} targets); "
                  "their consumers show as 'recovered' until published again",
                  level=logging.ERROR)  # fmt: skip
        return report

    def _rebuild_backings(self, table: MountTable, report: Report) -> dict[str, MountEntry]:
        """Rows for the backing mounts of ours under the mount root, by device."""
        found = {}
        root = os.path.normpath(self.service.config.mount_root)
        for entry in table.entries:
            owner = self.service.backends.owner_of(entry)
            if owner is None or os.path.dirname(entry.mount_point) != root:
                continue
            key = os.path.basename(entry.mount_point)
            if self.ledger.backing(key) is None:
                self.ledger.put_backing(
                    key, owner.name, {}, entry.mount_point, BackingState.MOUNTED
                )
                report.adopted.append(key)
            found[entry.device] = entry
        return found

    # Repair -------------------------------------------------------------------------

    def repair(self, key: str, reason: str) -> bool:
        """Remount a dead backing mount and re-bind every target of it. True when repaired.

        Decided under the spec's exclusive lock from a fresh probe, so one failure is
        repaired once however many daemons saw it. The targets are re-bound only once
        the new mount is up: a repair that cannot remount leaves them failing with an
        I/O error (the dead mount), never an empty directory.
        """
        try:
            with self.service.locked(key):
                row = self.ledger.backing(key)
                if row is None:
                    return False
                # Another daemon's loop may have repaired it while this one waited
                # for the lock: only a mount that is still dead is repairing.
                if self.service.probe(row, self.service.table()).dead:
                    self.ledger.set_condition(key, Condition.REPAIRING, reason)
                report = Report()
                self.restore(row, report)
        except HepvolError as exc:
            self.ledger.set_condition(key, Condition.FAILED, f"repair failed: {exc}")
            event(log, f"repair failed: {exc}", volume=key, level=logging.ERROR)
            return False
        except OSError as exc:
            message = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
            self.ledger.set_condition(key, Condition.FAILED, f"repair failed: {message}")
            return False
        if not (report.remounted or report.rebound):
            event(log, "nothing to repair (another process did)", volume=key, level=logging.DEBUG)
            return True
        event(log, "repaired", volume=key, reason=reason, remounted=bool(report.remounted),
              rebound=len(report.rebound))  # fmt: skip
        return True
