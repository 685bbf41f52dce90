"""The backing-mount service: mount, bind, remount, unmount and probe a backing mount and its targets.

This is the one place where the core changes what is mounted. The
:class:`~mount_core.manager.MountManager` (consumers arriving and leaving) and the
:class:`~mount_core.reconcile.Reconciler` (start-up reconcile, repair) both act
through it and never through each other. Checks that every bind or repair must
pass (a target is served by the live backing mount; bounded waits on a hung
mount) belong here, so that no caller can skip them.

Every change records its intent in the ledger before the kernel is touched, and
every decision about a target is taken from the kernel's mount table (through
:class:`~mount_core.kernel.Kernel`), not from the ledger alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mount_core import rootdirs, targets
from mount_core.backends import Backends
from mount_core.config import Config
from mount_core.consumer import Consumer
from mount_core.errors import HepvolError, MountFailed, MountTimeout, StateError
from mount_core.kernel import Kernel
from mount_core.ledger import BackingRow, ConsumerRow, Ledger
from mount_core.ledger_schema import BackingState, ConsumerState
from mount_core.locks import LockDir, check_held
from mount_core.logs import event
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.probe import Condition, ProbeResult
from mount_core.spec import VolumeSpec

log = logging.getLogger("hepvol.core")


def serving_path(backing_path: str, subpath: str) -> str:
    """Where a volume with ``subpath`` is served inside its backing mount."""
    return os.path.join(backing_path, subpath) if subpath else backing_path


class BackingUnreachable(MountFailed):
    """A backing mount recorded as mounted whose path does not reach it: mount it again."""


def _bound_to(live: MountEntry | None, bound: MountEntry | None, target: str, subpath: str) -> bool:
    """True when ``bound`` (what ``target`` reaches) is a bind of ``live`` at ``subpath``."""
    if live is None or bound is None or bound.mount_point != target:
        return False
    root = os.path.normpath(os.path.join(live.root, subpath)) if subpath else live.root
    return bound.device == live.device and bound.root == root


class BackingService:
    """Backing mounts and their targets, for one process."""

    def __init__(
        self, config: Config, ledger: Ledger, backends: Backends, kernel: Kernel | None = None
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.backends = backends
        self.kernel = kernel or Kernel(config.probe_timeout_seconds)
        self.locks = LockDir(config.state_dir)

    # Locks ----------------------------------------------------------------------

    @contextmanager
    def locked(self, key: str, *, shared: bool = False) -> Iterator[None]:
        """Hold a spec's lock: shared to add or drop consumers of a mounted volume,
        exclusive to mount, unmount or repair it."""
        with self.locks.hold(key, self.config.lock_timeout_seconds, shared=shared):
            yield

    @contextmanager
    def target_locked(self, target: str) -> Iterator[None]:
        """Hold a target's lock (taken after its spec's): one publish or unpublish at a time.

        kubelet retries a NodePublishVolume while the first call still runs; the two
        must not both create the directory, both bind, or undo each other's bind.
        """
        name = "target-" + hashlib.sha256(target.encode()).hexdigest()[:32]
        with self.locks.hold(name, self.config.lock_timeout_seconds):
            try:
                yield
            finally:
                # Nothing published there (any more): its lock file goes, or every
                # pod ever scheduled would leave one behind.
                with contextlib.suppress(StateError):
                    if self.ledger.consumer_at(target) is None:
                        self.locks.discard(name)

    # Backing mounts ---------------------------------------------------------------

    def table(self) -> MountTable:
        return self.kernel.mount_table()

    def mounted(self, key: str) -> BackingRow | None:
        """The backing row of ``key`` when the ledger records it as mounted."""
        row = self.ledger.backing(key)
        # A row without its definition (rebuilt after the ledger was lost) goes through ensure().
        return row if row is not None and row.state == BackingState.MOUNTED and row.spec else None

    def live_entry(
        self, backend: str, path: str, table: MountTable | None = None
    ) -> MountEntry | None:
        """The mount ``path`` really reaches when it is one ``backend`` made, mounted there.

        A mountinfo row at ``path`` alone proves nothing: a mount over a parent
        (a container's state volume, a hidden copy) leaves the row and shows an
        empty directory at the path.
        """
        return self._owned(backend, path, self.kernel.resolve(path, table))

    def _owned(self, backend: str, path: str, entry: MountEntry | None) -> MountEntry | None:
        if entry is None or entry.mount_point != path:
            return None
        return entry if self.backends.named(backend).owns(entry) else None

    def is_ours(self, row: BackingRow, table: MountTable | None = None) -> bool:
        """True when ``row.path`` reaches the backing mount of ``row`` made by its backend."""
        return self.live_entry(row.backend, row.path, table) is not None

    def ensure(self, spec: VolumeSpec) -> BackingRow:
        """The mounted backing row of ``spec``, mounting (or adopting) it first (exclusive lock).

        A row recorded as mounted whose path no longer reaches its mount (hidden, or
        unmounted behind our back) is mounted again, never bound from as it is.
        """
        row = self.ledger.backing(spec.key)
        if row is not None and not row.spec:
            # Rebuilt from the mount table after the ledger was lost: now its definition is known.
            self.ledger.put_backing(row.key, row.backend, spec.to_public(), row.path, row.state)
            row = self.ledger.backing(spec.key)
        if row is not None and row.state == BackingState.MOUNTED:
            if self.is_ours(row):
                return row
            event(log, "backing mount not reachable at its path: mounting it again",
                  volume=spec.key, path=row.path, level=logging.WARNING)  # fmt: skip
            self.remount(row)
            self.serve_targets(row)
            fresh = self.ledger.backing(spec.key)
            assert fresh is not None
            return fresh
        backend = self.backends.for_spec(spec)
        path = backend.path_for(spec)
        entry = self.live_entry(backend.name, path)
        if entry is not None and os.path.basename(path) == spec.key:
            event(log, "adopting existing backing mount", volume=spec.key, path=path)
        else:
            check_held()
            self.ledger.put_backing(spec.key, backend.name, spec.to_public(), path,
                                    BackingState.MOUNTING, boot_id=self.kernel.boot_id())  # fmt: skip
            try:
                rootdirs.mount_point(path)
                backend.mount(spec, path)
            except BaseException:
                if self.ledger.count(spec.key) == 0:
                    self.ledger.delete_backing(spec.key)
                    self._remove_mount_dir(path)
                raise
            event(log, "mounted", volume=spec.key, backend=backend.name, path=path)
            if row is not None:
                # It replaces one that died (a repair that failed to remount).
                self.ledger.new_generation(spec.key, self.kernel.boot_id())
        self.ledger.put_backing(
            spec.key, backend.name, spec.to_public(), path, BackingState.MOUNTED
        )
        if row is not None and self.ledger.count(spec.key):
            # Mounted again after a repair failed: its targets still hold the dead mount.
            fresh = self.ledger.backing(spec.key)
            assert fresh is not None
            self.serve_targets(fresh)
        fresh = self.ledger.backing(spec.key)
        assert fresh is not None
        return fresh

    def _remove_mount_dir(self, path: str) -> None:
        if os.path.dirname(path) == os.path.normpath(self.config.mount_root):
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def unmount(self, row: BackingRow) -> None:
        """Unmount a backing mount that has no consumers and forget it (exclusive lock)."""
        check_held()
        self.ledger.set_backing_state(row.key, BackingState.UNMOUNTING)
        self.backends.named(row.backend).unmount(row.path)
        self._remove_mount_dir(row.path)
        self.ledger.delete_backing(row.key)
        self.locks.discard(row.key)
        event(log, "unmounted", volume=row.key, path=row.path)

    def remount(self, row: BackingRow) -> None:
        """Replace a dead backing mount by a fresh one (exclusive lock).

        The targets are not touched: until :meth:`serve_targets` binds them to the
        new mount they keep the dead one, whose every access fails with an I/O
        error. If the remount fails, that is what consumers keep seeing (and the
        ledger says ``mounting``, so the next consumer or health pass tries again),
        never an empty directory.
        """
        backend = self.backends.named(row.backend)
        if not row.spec:
            raise MountFailed(
                f"the definition of {row.key} was lost with the ledger, so it cannot be "
                "mounted again; publishing the volume again records it"
            )
        check_held()
        with contextlib.suppress(OSError):
            self.kernel.unmount(row.path, lazy=True)
        self.ledger.set_backing_state(row.key, BackingState.MOUNTING)
        rootdirs.mount_point(row.path)
        backend.mount(backend.revive(row.spec, row.key), row.path)
        self.ledger.put_backing(row.key, row.backend, row.spec, row.path, BackingState.MOUNTED)
        generation = self.ledger.new_generation(row.key, self.kernel.boot_id())
        event(log, "remounted", volume=row.key, path=row.path, generation=generation)

    def probe(self, row: BackingRow, table: MountTable) -> ProbeResult:
        """Probe a backing mount within the probe timeout; a missing one is dead."""
        backend = self.backends.named(row.backend)
        if self.live_entry(row.backend, row.path, table) is None:
            return ProbeResult(Condition.FAILED, "not mounted", dead=True)
        own = backend.check_health(row.path, self.kernel.prober)
        return self.kernel.probe(row.path) if own is None else own

    def settle(self, key: str) -> None:
        """After consumers left: unmount (or start the idle clock of) an unused backing mount."""
        if self.ledger.count(key) > 0:
            # Still used: the last consumer to leave settles it. (Every refused call on
            # a hung volume would otherwise queue for the exclusive lock.)
            return
        with self.locked(key):
            row = self.ledger.backing(key)
            if row is None or self.ledger.count(key) > 0:
                return
            if self.config.idle_unmount_seconds > 0:
                self.ledger.set_idle(key, time.time())
            else:
                self.unmount(row)

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
                    self.unmount(fresh)
                    done.append(row.key)
        return done

    # Targets ------------------------------------------------------------------------

    def serves(
        self, row: BackingRow, target: str, table: MountTable | None = None, subpath: str = ""
    ) -> bool:
        """True when ``target`` reaches a bind of the live backing mount of ``row``.

        Decided from what both paths really reach (never from the rows at them): the
        same device and the same root inside it (the backing mount's, plus
        ``subpath``). A bind of another spec's mount, of a dead mount since
        replaced, or one hidden by a mount over the target's parent is not serving.
        """
        if table is None:
            live, bound = self.kernel.reach([row.path, target])
        else:
            live, bound = self.kernel.resolve(row.path, table), self.kernel.resolve(target, table)
        return _bound_to(self._owned(row.backend, row.path, live), bound, target, subpath)

    def _check_served(self, backing: BackingRow, subpath: str, target: str) -> None:
        """After a bind, with one read of the mount table: the target must reach the live
        backing mount. :class:`BackingUnreachable` when the backing mount's own path no
        longer reaches it (the bind showed an empty directory: mount it again)."""
        live, bound = self.kernel.reach([backing.path, target])
        owned = self._owned(backing.backend, backing.path, live)
        if owned is None:
            raise BackingUnreachable(
                f"{backing.key} is not reachable at {backing.path} (a mount over it or "
                "one of its parents hides it, or it is gone)"
            )
        if not _bound_to(owned, bound, target, subpath):
            raise MountFailed(
                f"{target} does not show {backing.key} after binding it: a mount over the "
                "target or one of its parents hides it; unmount that and retry"
            )

    def bind_new(
        self,
        spec: VolumeSpec,
        consumer: Consumer,
        target: str,
        readonly: bool,
        backing: BackingRow,
    ) -> None:
        """Record a new consumer at ``target`` and bind the backing mount there (spec and
        target locks held). On failure nothing of it is kept: row, bind, created directory."""
        roots = self.config.target_roots
        check_held()
        with targets.open_target(target, roots, create=True) as opened:
            try:
                row_id = self.ledger.add_consumer(
                    spec.key, consumer.id, consumer.kind, target=target,
                    subpath=spec.subpath, readonly=readonly, state=ConsumerState.BINDING,
                    created_target=opened.created, info=consumer.info,
                )  # fmt: skip
            except BaseException:
                if opened.created:
                    self.unbind(target, remove_dir=True)
                raise
            bound = False
            try:
                self._bind(backing, spec.subpath, opened.fd, readonly)
                bound = True
                self._check_served(backing, spec.subpath, target)
            except (OSError, HepvolError) as exc:
                self.ledger.delete_consumer(row_id)
                if opened.created or bound:
                    self.unbind(target, remove_dir=opened.created)
                if isinstance(exc, HepvolError):
                    raise
                raise MountFailed(
                    f"cannot bind {spec.source} onto {target}: {exc.strerror}"
                ) from None
        try:
            self.ledger.set_consumer_state(row_id, ConsumerState.ACTIVE)
        except StateError:
            # Not recorded as done, so not done: take the bind down again.
            self.unbind(target, remove_dir=opened.created)
            with contextlib.suppress(StateError):
                self.ledger.delete_consumer(row_id)
            raise
        event(log, "published", volume=spec.key, consumer=consumer.id, target=target)

    @contextmanager
    def open_source(self, backing: BackingRow, subpath: str) -> Iterator[targets.OpenTarget]:
        """Open ``subpath`` inside a backing mount, bounded by ``probe_timeout_seconds``.

        Looking a path up asks the FUSE server. A stopped or hung one never answers,
        and every other lookup of that name then waits uninterruptibly behind the
        first (no kill ends it), so a mount that does not answer a probe is refused
        before anything is looked up in it; the lookup itself is bounded too.
        """
        if subpath:
            answer = self.kernel.probe(backing.path)
            if answer.condition != Condition.HEALTHY:
                raise MountTimeout(
                    f"the volume {backing.key} is {answer.message}; nothing was published, "
                    "try again once it answers"
                )
        timeout = self.config.probe_timeout_seconds
        with targets.open_inside(backing.path, subpath, timeout=timeout) as source:
            yield source

    def _bind(self, backing: BackingRow, subpath: str, target_fd: int, readonly: bool) -> None:
        with self.open_source(backing, subpath) as source:
            check_held()
            self._bind_from(backing, source.fd, target_fd, readonly)

    def _bind_from(
        self, backing: BackingRow, source_fd: int, target_fd: int, readonly: bool
    ) -> None:
        backend = self.backends.named(backing.backend)
        recursive = backend.bind_recursive(VolumeSpec.from_public(backing.spec))
        self.kernel.bind(source_fd, target_fd, readonly=readonly, recursive=recursive)

    def restore_target(
        self, backing: BackingRow, consumer: ConsumerRow, table: MountTable | None = None
    ) -> bool:
        """Make ``consumer``'s target a bind of the live backing mount, from the kernel's truth.

        Already served: only the ledger is brought up to date (False: nothing bound).
        Otherwise whatever of ours is there (a dead or half-made bind) is replaced.
        """
        assert consumer.target is not None
        table = self.table() if table is None else table
        if self.serves(backing, consumer.target, table, consumer.subpath):
            if consumer.state != ConsumerState.ACTIVE:
                self.ledger.set_consumer_state(consumer.id, ConsumerState.ACTIVE)
            return False
        # The source first: if the new mount lacks it, the target keeps what it has (a
        # dead mount answers I/O errors), rather than being emptied and left so.
        with self.open_source(backing, consumer.subpath) as source:
            check_held()
            if table.at(consumer.target) is not None:
                self.unbind(consumer.target)
            roots = self.config.target_roots
            with targets.open_target(consumer.target, roots, create=False) as opened:
                self._bind_from(backing, source.fd, opened.fd, consumer.readonly)
        try:
            self._check_served(backing, consumer.subpath, consumer.target)
        except MountFailed:
            with contextlib.suppress(OSError):
                self.unbind(consumer.target)  # whatever it shows, it is not the volume
            raise
        self.ledger.set_consumer_state(consumer.id, ConsumerState.ACTIVE)
        return True

    def serve_targets(self, backing: BackingRow) -> list[str]:
        """Bind every target of ``backing`` that is not served by its live mount.

        Returns the consumers rebound; raises on the first target that cannot be.
        """
        table = self.table()
        rebound = []
        for consumer in self.ledger.consumers(backing.key):
            if consumer.target is not None and self.restore_target(backing, consumer, table):
                rebound.append(consumer.consumer)
        return rebound

    def unbind(self, target: str, *, remove_dir: bool = False) -> bool:
        """Unmount whatever is at ``target`` (lazily when dead or busy); True when something was."""
        return targets.release(target, self.config.target_roots, remove_dir=remove_dir,
                               unmount=self.kernel.unmount)  # fmt: skip

    def release_target(self, row: ConsumerRow) -> int:
        """Unbind a consumer's target and forget the consumer (spec lock, shared is enough).

        Returns how many consumers its backing mount has left (-1: already gone).
        """
        if row.target is not None:
            check_held()
            self.ledger.set_consumer_state(row.id, ConsumerState.RELEASING)
            try:
                self.unbind(row.target, remove_dir=row.created_target)
            except OSError as exc:
                raise MountFailed(f"cannot unmount {row.target}: {exc.strerror}") from None
        left = self.ledger.delete_consumer(row.id)
        event(log, "released", volume=row.key, consumer=row.consumer, target=row.target)
        return left

    def unmount_stray(self, target: str) -> bool:
        """Unmount a bind of ours at ``target`` that the ledger does not know."""
        try:
            targets.root_of(target, self.config.target_roots)
        except HepvolError:
            return False
        entry = self.table().at(target)
        if entry is None or self.backends.owner_of(entry) is None:
            return False
        self.unbind(target)
        event(log, "unmounted a stray bind", consumer=None, target=target)
        return True
