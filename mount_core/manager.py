"""MountManager: acquire, publish, release, unpublish — the core's contract.

Every operation on a spec runs under that spec's cross-process lock (and a
publish or unpublish also under its target's) and records its intent in the
ledger before touching the kernel, so that a crash at any point leaves something
:mod:`mount_core.reconcile` can finish. The first consumer of a spec mounts it;
the last one leaving unmounts it (at once, or after ``idle_unmount_seconds``).
The mounting, binding and unmounting itself is the backing-mount service's
(:mod:`mount_core.backing`); this module decides who holds what.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mount_core import rootdirs, targets
from mount_core.backends import Backends
from mount_core.backing import BackingService, BackingUnreachable, serving_path
from mount_core.config import Config
from mount_core.consumer import Consumer, stale, stale_message
from mount_core.errors import Conflict, HepvolError, LockLost, NotFound
from mount_core.kernel import Kernel
from mount_core.ledger import RECOVERED, Ledger
from mount_core.ledger import ConsumerRow as ConsumerRow  # what the questions answer
from mount_core.ledger_schema import ConsumerState
from mount_core.logs import event
from mount_core.probe import Condition
from mount_core.spec import VolumeSpec
from mount_core.statedir import StateDir

if TYPE_CHECKING:
    from mount_core.reconcile import Report
    from mount_core.status import BackingStatus

log = logging.getLogger("hepvol.core")

#: Called after every operation with (operation, volume key, seconds, succeeded).
OperationObserver = Callable[[str, str, float, bool], None]


def _ignore(op: str, key: str, seconds: float, ok: bool) -> None:
    return None


T = TypeVar("T")


def _again_if_lock_lost(call: Callable[[], T]) -> T:
    """Run ``call`` once more when a lock it held was removed under it (state damage).

    The second run takes fresh locks and decides anew from the ledger and the
    kernel; losing a lock again answers :class:`LockLost` (retryable).
    """
    try:
        return call()
    except LockLost as exc:
        event(log, f"{exc}: starting over", volume=None, consumer=None, level=logging.WARNING)
        return call()


@dataclass(frozen=True)
class Published:
    """What :meth:`MountManager.publish` did: the fronts report this, never guess it."""

    target: str
    #: The mode the target was bound with: read-only also when read-write was asked
    #: of a read-only file system (CVMFS, the embedded server).
    readonly: bool
    source: str

    @property
    def mode(self) -> str:
        return "read-only" if self.readonly else "read-write"


@dataclass(frozen=True)
class VolumeStats:
    """What :meth:`MountManager.stats` answers about a published volume."""

    condition: Condition
    message: str
    usage: os.statvfs_result | None
    readonly: bool

    @property
    def abnormal(self) -> bool:
        return self.condition != Condition.HEALTHY


class MountManager:
    """The mount-management core shared by every front."""

    def __init__(
        self,
        config: Config,
        *,
        ledger: Ledger | None = None,
        backends: Backends | None = None,
        kernel: Kernel | None = None,
        on_operation: OperationObserver | None = None,
    ) -> None:
        self.config = config
        StateDir(config.state_dir).ensure()
        rootdirs.ensure(config.mount_root, "mount_root", 0o755)
        self.ledger = ledger or Ledger(config.ledger_path)
        self.backends = backends or Backends(config)
        self.service = BackingService(config, self.ledger, self.backends, kernel)
        if self.ledger.created:
            from mount_core.reconcile import Reconciler

            # No ledger was there: if the kernel shows mounts of ours, it was lost.
            Reconciler(self.service).rebuild()
        self.on_operation = on_operation or _ignore

    # Helpers ------------------------------------------------------------------

    @contextmanager
    def _operation(self, op: str, key: str, consumer: str | None) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except HepvolError as exc:
            self.on_operation(op, key, time.perf_counter() - start, False)
            event(log, f"{op} failed: {exc}", volume=key, consumer=consumer,
                  level=logging.WARNING, op=op)  # fmt: skip
            raise
        except Exception:
            self.on_operation(op, key, time.perf_counter() - start, False)
            log.exception(f"{op} crashed", extra={"volume": key, "consumer": consumer, "op": op})
            raise
        seconds = time.perf_counter() - start
        self.on_operation(op, key, seconds, True)
        event(log, op, volume=key, consumer=consumer, level=logging.DEBUG, op=op,
              ms=round(seconds * 1000, 3))  # fmt: skip

    def _readonly(self, spec: VolumeSpec, readonly: bool) -> bool:
        # CVMFS and the embedded server are read-only file systems whatever is asked.
        return readonly or spec.backend == "cvmfs" or self.backends.for_spec(spec).name == "local"

    # The contract ---------------------------------------------------------------

    def check(self, spec: VolumeSpec) -> None:
        """Refuse a spec the configured client can never serve (e.g. a date pin on the
        embedded backend), so that a front can say so when the volume is created."""
        self.backends.for_spec(spec).check_spec(spec)

    def acquire(self, spec: VolumeSpec, consumer: Consumer) -> str:
        """Hold ``spec`` for ``consumer`` and return the path serving it.

        Idempotent per consumer, except Docker consumers, which count each call.
        """
        with self._operation("acquire", spec.key, consumer.id):
            return _again_if_lock_lost(lambda: self._acquire(spec, consumer))

    def _acquire(self, spec: VolumeSpec, consumer: Consumer) -> str:
        service = self.service
        path = None
        if consumer.multiset:
            with service.locked(spec.key, shared=True):
                path = self._acquire_locked(spec, consumer, may_mount=False)
        if path is None:
            with service.locked(spec.key):
                path = self._acquire_locked(spec, consumer, may_mount=True)
        assert path is not None
        return path

    def _acquire_locked(
        self, spec: VolumeSpec, consumer: Consumer, *, may_mount: bool
    ) -> str | None:
        if not consumer.multiset:
            held = [r for r in self.ledger.consumers_named(consumer.id) if r.target is None]
            if held:
                if held[0].key != spec.key or held[0].subpath != spec.subpath:
                    raise Conflict(f"{consumer.id} already holds another volume ({held[0].key})")
                backing = self.ledger.backing(spec.key)
                assert backing is not None
                return serving_path(backing.path, spec.subpath)
        backing = self.service.ensure(spec) if may_mount else self.service.mounted(spec.key)
        if backing is None:
            return None
        if spec.subpath:
            with self.service.open_source(backing, spec.subpath):
                pass
        self.ledger.add_consumer(
            spec.key, consumer.id, consumer.kind, subpath=spec.subpath, info=consumer.info
        )
        return serving_path(backing.path, spec.subpath)

    def publish(
        self, spec: VolumeSpec, consumer: Consumer, target: str, *, readonly: bool = True
    ) -> Published:
        """Acquire ``spec`` for ``consumer`` and bind it onto ``target``.

        Idempotent for the same spec, consumer and mode, also when identical calls
        run at once (one binds, the others find it bound); a different volume already
        published at ``target`` is a :class:`Conflict`. On failure nothing taken by
        this call is kept (the target directory, the consumer, a fresh mount).
        """
        target = targets.normalize(target)
        targets.root_of(target, self.config.target_roots)
        readonly = self._readonly(spec, readonly)
        service = self.service
        with self._operation("publish", spec.key, consumer.id):
            try:
                _again_if_lock_lost(lambda: self._publish(spec, consumer, target, readonly))
            except BaseException:
                service.settle(spec.key)
                raise
            return Published(target, readonly, spec.source)

    def _publish(self, spec: VolumeSpec, consumer: Consumer, target: str, readonly: bool) -> None:
        service = self.service
        with service.locked(spec.key, shared=True), service.target_locked(target):
            done = self._publish_locked(spec, consumer, target, readonly, may_mount=False)
        if not done:
            with service.locked(spec.key), service.target_locked(target):
                self._publish_locked(spec, consumer, target, readonly, may_mount=True)

    def _publish_locked(
        self, spec: VolumeSpec, consumer: Consumer, target: str, readonly: bool, *, may_mount: bool
    ) -> bool:
        """Publish under the spec's and the target's locks; False when the backing mount
        must be made first (which needs the spec's lock exclusive)."""
        existing = self.ledger.consumer_at(target)
        if existing is not None and existing.kind == RECOVERED and existing.key == spec.key:
            # Rebuilt from the mount table after the ledger was lost: this is its holder.
            self.ledger.claim_consumer(existing.id, consumer.id, consumer.kind, consumer.info)
            existing = self.ledger.consumer_at(target)
        if existing is not None:
            same = (existing.key, existing.consumer, existing.subpath, existing.readonly)
            if same != (spec.key, consumer.id, spec.subpath, readonly):
                raise Conflict(
                    f"{target} already has a different volume published "
                    f"({existing.key}, {'read-only' if existing.readonly else 'read-write'})"
                )
        backing = self.service.ensure(spec) if may_mount else self.service.mounted(spec.key)
        if backing is None:
            return False
        try:
            if existing is None:
                self.service.bind_new(spec, consumer, target, readonly, backing)
            elif existing.state != ConsumerState.ACTIVE or not self.service.serves(
                backing, target, subpath=spec.subpath
            ):
                # Published before, but a crash or a failed repair left it half made.
                self.service.restore_target(backing, existing)
        except BackingUnreachable:
            if may_mount:
                raise
            return False  # ensure() (exclusive lock) mounts it again
        return True

    def release(self, consumer: Consumer) -> bool:
        """Drop one hold of ``consumer`` (its target unpublished, if any). Idempotent."""
        rows = self.ledger.consumers_named(consumer.id)
        if not rows:
            return False
        key = rows[-1].key
        with self._operation("release", key, consumer.id):
            left = _again_if_lock_lost(lambda: self._release_held(key, consumer))
            if left is None:
                return False
            if left == 0:
                _again_if_lock_lost(lambda: self.service.settle(key))
            return True

    def _release_held(self, key: str, consumer: Consumer) -> int | None:
        """Drop the newest hold of ``consumer`` on ``key``: how many the volume has left."""
        with self.service.locked(key, shared=True):
            current = [r for r in self.ledger.consumers_named(consumer.id) if r.key == key]
            if not current:
                return None
            return self.service.release_target(current[-1])

    def unpublish(self, target: str) -> bool:
        """Unpublish whatever hepvol published at ``target``, knowing only the path.

        Returns False when nothing of ours was there (which is not an error).
        """
        target = targets.normalize(target)
        row = self.ledger.consumer_at(target)
        if row is None:
            return self.service.unmount_stray(target)
        with self._operation("unpublish", row.key, row.consumer):
            released = _again_if_lock_lost(lambda: self._release_at(row.key, target))
            if released is None:
                return False
            key, left = released
            if left == 0:
                _again_if_lock_lost(lambda: self.service.settle(key))
            return True

    def _release_at(self, key: str, target: str) -> tuple[str, int] | None:
        """Release the consumer at ``target``: its volume's key and how many it has left."""
        service = self.service
        with service.locked(key, shared=True), service.target_locked(target):
            current = self.ledger.consumer_at(target)
            if current is None:
                return None
            return current.key, service.release_target(current)

    # Questions -------------------------------------------------------------------

    def backing_path(self, spec: VolumeSpec) -> str | None:
        """Where ``spec`` is served while it is mounted, else None."""
        row = self.service.mounted(spec.key)
        return None if row is None else serving_path(row.path, spec.subpath)

    def consumers(self, key: str | None = None) -> list[ConsumerRow]:
        """The consumers of backing mount ``key`` (of every one when None), oldest first."""
        return self.ledger.consumers(key)

    def consumer_at(self, target: str) -> ConsumerRow | None:
        return self.ledger.consumer_at(targets.normalize(target))

    def is_stale(self, row: ConsumerRow) -> bool:
        """True when ``row``'s container still holds a backing mount since replaced."""
        backing = self.ledger.backing(row.key)
        return backing is not None and stale(row.kind, row.generation, backing.generation)

    def condition(self, key: str) -> tuple[str, str]:
        """(condition, message) of a backing mount, as last seen by the health loop."""
        row = self.ledger.backing(key)
        if row is None:
            raise NotFound(f"no backing mount {key}")
        return row.condition, row.message

    def stats(self, target: str) -> VolumeStats:
        """Condition and usage of the volume published at ``target``, never blocking.

        A consumer published before its backing mount was replaced is ``stale``
        (abnormal): its container still holds the dead mount.

        The usage comes from one bounded probe of the backing mount (shared with the
        health loop: a hung server costs one parked thread, not one per caller).
        """
        row = self.consumer_at(target)
        backing = self.ledger.backing(row.key) if row is not None else None
        if row is None or backing is None:
            raise NotFound(f"nothing is published at {target}")
        condition, message = Condition(backing.condition), backing.message
        usage = None
        if condition == Condition.HEALTHY:
            probe = self.service.kernel.probe(backing.path)
            condition, message, usage = probe.condition, probe.message, probe.usage
        if condition == Condition.HEALTHY and stale(row.kind, row.generation, backing.generation):
            # The host's target was re-bound to the new mount; the pod's copy was not.
            condition, message = Condition.STALE, stale_message(row.kind)
        return VolumeStats(condition, message, usage, row.readonly)

    def gc_idle(self, now: float | None = None) -> list[str]:
        """Unmount backing mounts idle for longer than ``idle_unmount_seconds``."""
        return self.service.gc_idle(now)

    def reconcile(self) -> Report:
        """Make the ledger and mountinfo agree (see :mod:`mount_core.reconcile`).

        Every daemon runs this at start-up, so a configured client that is not
        installed stops it here with :class:`Unavailable` saying what to install.
        """
        from mount_core.reconcile import Reconciler

        self.backends.check_available()
        return Reconciler(self.service).reconcile()

    def status(self) -> list[BackingStatus]:
        """Every backing mount with its condition and consumers."""
        from mount_core.status import collect

        return collect(self.ledger, self.service.table())
