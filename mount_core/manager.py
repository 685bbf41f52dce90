"""MountManager: acquire, publish, release, unpublish — the core's contract.

Every operation on a spec runs under that spec's cross-process lock and records
its intent in the ledger before touching the kernel, so that a crash at any point
leaves something :mod:`mount_core.reconcile` can finish. The first consumer of a
spec mounts it; the last one leaving unmounts it (at once, or after
``idle_unmount_seconds``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mount_core import bind, rootdirs, targets
from mount_core.backends import Backends
from mount_core.config import Config
from mount_core.consumer import Consumer
from mount_core.errors import Conflict, HepvolError, MountFailed, NotFound, StateError
from mount_core.ledger import BackingRow, ConsumerRow, Ledger
from mount_core.locks import LockDir
from mount_core.logs import event
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec

if TYPE_CHECKING:
    from mount_core.reconcile import Report
    from mount_core.status import BackingStatus

log = logging.getLogger("hepvol.core")

#: Called after every operation with (operation, volume key, seconds, succeeded).
OperationObserver = Callable[[str, str, float, bool], None]


def check_private_dir(path: str) -> None:
    """Create the state dir 0700 if missing; refuse one that someone other than root can write.

    The ledger and lock files decide what gets mounted where: a state dir writable by
    an unprivileged user would let that user steer a root daemon.
    """
    rootdirs.ensure(path, "state directory", 0o700)


def _serving_path(backing_path: str, spec: VolumeSpec) -> str:
    return os.path.join(backing_path, spec.subpath) if spec.subpath else backing_path


def _ignore(op: str, key: str, seconds: float, ok: bool) -> None:
    return None


class MountManager:
    """The mount-management core shared by every front."""

    def __init__(
        self,
        config: Config,
        *,
        ledger: Ledger | None = None,
        backends: Backends | None = None,
        on_operation: OperationObserver | None = None,
    ) -> None:
        self.config = config
        check_private_dir(config.state_dir)
        rootdirs.ensure(config.mount_root, "mount_root", 0o755)
        self.ledger = ledger or Ledger(config.ledger_path)
        self.backends = backends or Backends(config)
        self.locks = LockDir(config.state_dir)
        self.on_operation = on_operation or _ignore

    # Helpers ------------------------------------------------------------------

    @contextmanager
    def locked(self, key: str, *, shared: bool = False) -> Iterator[None]:
        """Hold the spec's lock: shared to add or drop consumers of a mounted volume,
        exclusive to mount, unmount or repair it."""
        with self.locks.hold(key, self.config.lock_timeout_seconds, shared=shared):
            yield

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

    # Backing mounts -------------------------------------------------------------

    def _ensure_backing(self, spec: VolumeSpec) -> BackingRow:
        """The mounted backing row of ``spec``, mounting it first if needed (lock held)."""
        row = self.ledger.backing(spec.key)
        if row is not None and row.state == "mounted":
            return row
        backend = self.backends.for_spec(spec)
        path = backend.path_for(spec)
        entry = MountTable().at(path)
        if entry is not None and backend.owns(entry) and os.path.basename(path) == spec.key:
            event(log, "adopting existing backing mount", volume=spec.key, path=path)
        else:
            self.ledger.put_backing(spec.key, backend.name, spec.to_public(), path, "mounting")
            try:
                rootdirs.mount_point(path)
                backend.mount(spec, path)
            except BaseException:
                if self.ledger.count(spec.key) == 0:
                    self.ledger.delete_backing(spec.key)
                    self._remove_mount_dir(path)
                raise
            event(log, "mounted", volume=spec.key, backend=backend.name, path=path)
        self.ledger.put_backing(spec.key, backend.name, spec.to_public(), path, "mounted")
        row = self.ledger.backing(spec.key)
        assert row is not None
        return row

    def _remove_mount_dir(self, path: str) -> None:
        if os.path.dirname(path) == os.path.normpath(self.config.mount_root):
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def unmount_backing(self, row: BackingRow) -> None:
        """Unmount a backing mount that has no consumers and forget it (lock held)."""
        self.ledger.set_backing_state(row.key, "unmounting")
        self.backends.named(row.backend).unmount(row.path)
        self._remove_mount_dir(row.path)
        self.ledger.delete_backing(row.key)
        event(log, "unmounted", volume=row.key, path=row.path)

    def _after_last_consumer(self, key: str) -> None:
        row = self.ledger.backing(key)
        if row is None or self.ledger.count(key) > 0:
            return
        if self.config.idle_unmount_seconds > 0:
            self.ledger.set_idle(key, time.time())
        else:
            self.unmount_backing(row)

    # The contract ---------------------------------------------------------------

    def acquire(self, spec: VolumeSpec, consumer: Consumer) -> str:
        """Hold ``spec`` for ``consumer`` and return the path serving it.

        Idempotent per consumer, except Docker consumers, which count each call.
        """
        with self._operation("acquire", spec.key, consumer.id):
            path = None
            if consumer.multiset:
                with self.locked(spec.key, shared=True):
                    path = self._acquire_locked(spec, consumer, may_mount=False)
            if path is None:
                with self.locked(spec.key):
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
                return _serving_path(backing.path, spec)
        backing = self._ensure_backing(spec) if may_mount else self._mounted(spec.key)
        if backing is None:
            return None
        if spec.subpath:
            with targets.open_inside(backing.path, spec.subpath):
                pass
        self.ledger.add_consumer(
            spec.key, consumer.id, consumer.kind, subpath=spec.subpath, info=consumer.info
        )
        return _serving_path(backing.path, spec)

    def publish(
        self, spec: VolumeSpec, consumer: Consumer, target: str, *, readonly: bool = True
    ) -> str:
        """Acquire ``spec`` for ``consumer`` and bind it onto ``target``.

        Idempotent for the same spec, consumer and mode; a different volume already
        published at ``target`` is a :class:`Conflict`. On failure nothing taken by
        this call is kept (the target directory, the consumer, a fresh mount).
        """
        target = targets.normalize(target)
        targets.root_of(target, self.config.target_roots)
        readonly = self._readonly(spec, readonly)
        with self._operation("publish", spec.key, consumer.id):
            try:
                with self.locked(spec.key, shared=True):
                    done = self._publish_locked(spec, consumer, target, readonly, may_mount=False)
                if not done:
                    with self.locked(spec.key):
                        self._publish_locked(spec, consumer, target, readonly, may_mount=True)
            except BaseException:
                self._settle(spec.key)
                raise
            return target

    def _publish_locked(
        self, spec: VolumeSpec, consumer: Consumer, target: str, readonly: bool, *, may_mount: bool
    ) -> bool:
        """Publish under the spec's lock; False when the backing mount must be made first."""
        existing = self.ledger.consumer_at(target)
        if existing is not None:
            same = (existing.key, existing.consumer, existing.subpath, existing.readonly)
            if same == (spec.key, consumer.id, spec.subpath, readonly):
                if existing.state == "active":
                    return True
            else:
                raise Conflict(
                    f"{target} already has a different volume published "
                    f"({existing.key}, {'read-only' if existing.readonly else 'read-write'})"
                )
        backing = self._ensure_backing(spec) if may_mount else self._mounted(spec.key)
        if backing is None:
            return False
        self._bind_new(spec, consumer, target, readonly, backing, existing)
        return True

    def _mounted(self, key: str) -> BackingRow | None:
        row = self.ledger.backing(key)
        return row if row is not None and row.state == "mounted" else None

    def _settle(self, key: str) -> None:
        """After consumers left: unmount (or start the idle clock of) an unused backing mount."""
        with self.locked(key):
            self._after_last_consumer(key)

    def _bind_new(
        self,
        spec: VolumeSpec,
        consumer: Consumer,
        target: str,
        readonly: bool,
        backing: BackingRow,
        existing: ConsumerRow | None,
    ) -> None:
        roots = self.config.target_roots
        if existing is not None:
            # A crash left this bind half-made or half-removed: start it afresh.
            targets.release(target, roots, remove_dir=False)
        with targets.open_target(target, roots, create=True) as opened:
            if existing is None:
                try:
                    row_id = self.ledger.add_consumer(
                        spec.key, consumer.id, consumer.kind, target=target,
                        subpath=spec.subpath, readonly=readonly, state="binding",
                        created_target=opened.created, info=consumer.info,
                    )  # fmt: skip
                except BaseException:
                    if opened.created:
                        targets.release(target, roots, remove_dir=True)
                    raise
            else:
                row_id = existing.id
            try:
                recursive = self.backends.for_spec(spec).bind_recursive(spec)
                with targets.open_inside(backing.path, spec.subpath) as source:
                    bind.bind_fd(source.fd, opened.fd, readonly=readonly, recursive=recursive,
                                 propagation=bind.MS_SLAVE if recursive else 0)  # fmt: skip
            except (OSError, HepvolError) as exc:
                self.ledger.delete_consumer(row_id)
                if opened.created or (existing is not None and existing.created_target):
                    targets.release(target, roots, remove_dir=True)
                if isinstance(exc, HepvolError):
                    raise
                raise MountFailed(
                    f"cannot bind {spec.source} onto {target}: {exc.strerror}"
                ) from None
        try:
            self.ledger.set_consumer_state(row_id, "active")
        except StateError:
            # Not recorded as done, so not done: take the bind down again.
            targets.release(target, roots, remove_dir=opened.created)
            with contextlib.suppress(StateError):
                self.ledger.delete_consumer(row_id)
            raise
        event(log, "published", volume=spec.key, consumer=consumer.id, target=target)

    def release(self, consumer: Consumer) -> bool:
        """Drop one hold of ``consumer`` (its target unpublished, if any). Idempotent."""
        rows = self.ledger.consumers_named(consumer.id)
        if not rows:
            return False
        key = rows[-1].key
        with self._operation("release", key, consumer.id):
            with self.locked(key, shared=True):
                current = [r for r in self.ledger.consumers_named(consumer.id) if r.key == key]
                if not current:
                    return False
                left = self._remove_consumer(current[-1])
            if left == 0:
                self._settle(key)
            return True

    def unpublish(self, target: str) -> bool:
        """Unpublish whatever hepvol published at ``target``, knowing only the path.

        Returns False when nothing of ours was there (which is not an error).
        """
        target = targets.normalize(target)
        row = self.ledger.consumer_at(target)
        if row is None:
            return self._unmount_stray(target)
        with self._operation("unpublish", row.key, row.consumer):
            with self.locked(row.key, shared=True):
                current = self.ledger.consumer_at(target)
                if current is None:
                    return False
                left = self._remove_consumer(current)
            if left == 0:
                self._settle(current.key)
            return True

    def _remove_consumer(self, row: ConsumerRow) -> int:
        """Unbind a consumer's target and forget it (lock held, shared is enough).

        Returns how many consumers its backing mount has left (-1: already gone);
        the caller settles the backing mount when none are.
        """
        if row.target is not None:
            self.ledger.set_consumer_state(row.id, "releasing")
            try:
                targets.release(row.target, self.config.target_roots,
                                remove_dir=row.created_target)  # fmt: skip
            except OSError as exc:
                raise MountFailed(f"cannot unmount {row.target}: {exc.strerror}") from None
        left = self.ledger.delete_consumer(row.id)
        event(log, "released", volume=row.key, consumer=row.consumer, target=row.target)
        return left

    def _unmount_stray(self, target: str) -> bool:
        """Unmount a bind of ours at ``target`` that the ledger does not know."""
        try:
            targets.root_of(target, self.config.target_roots)
        except HepvolError:
            return False
        entry = MountTable().at(target)
        if entry is None or self.backends.owner_of(entry) is None:
            return False
        targets.release(target, self.config.target_roots, remove_dir=False)
        event(log, "unmounted a stray bind", consumer=None, target=target)
        return True

    # Questions -------------------------------------------------------------------

    def backing_path(self, spec: VolumeSpec) -> str | None:
        """Where ``spec`` is served while it is mounted, else None."""
        row = self.ledger.backing(spec.key)
        if row is None or row.state != "mounted":
            return None
        return _serving_path(row.path, spec)

    def consumer_at(self, target: str) -> ConsumerRow | None:
        return self.ledger.consumer_at(targets.normalize(target))

    def condition(self, key: str) -> tuple[str, str]:
        """(condition, message) of a backing mount, as last seen by the health loop."""
        row = self.ledger.backing(key)
        if row is None:
            raise NotFound(f"no backing mount {key}")
        return row.condition, row.message

    def gc_idle(self, now: float | None = None) -> list[str]:
        """Unmount backing mounts idle for longer than ``idle_unmount_seconds``."""
        now = time.time() if now is None else now
        done = []
        for row in self.ledger.backings():
            if row.idle_since is None or now - row.idle_since < self.config.idle_unmount_seconds:
                continue
            with self.locked(row.key):
                fresh = self.ledger.backing(row.key)
                if fresh and fresh.idle_since is not None and self.ledger.count(row.key) == 0:
                    self.unmount_backing(fresh)
                    done.append(row.key)
        return done

    def reconcile(self) -> Report:
        """Make the ledger and mountinfo agree (see :mod:`mount_core.reconcile`).

        Every daemon runs this at start-up, so a configured client that is not
        installed stops it here with :class:`Unavailable` saying what to install.
        """
        from mount_core.reconcile import reconcile

        self.backends.check_available()

        return reconcile(self)

    def status(self) -> list[BackingStatus]:
        """Every backing mount with its condition and consumers."""
        from mount_core.status import collect

        return collect(self.ledger)
