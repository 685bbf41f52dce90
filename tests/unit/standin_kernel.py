"""A kernel and a backend kept in memory, so the core's decisions run without root.

:class:`StandinKernel` replaces :class:`mount_core.kernel.Kernel`: its mount table
is a list it keeps itself; a bind records an entry at the target with the source's
device, an unmount removes the topmost entry, and probes answer from a set of
paths marked dead. Directories are real (a temporary tree), so the core's own
path checks (no symlinks, inside the roots) run unchanged.
:class:`StandinBackend` "mounts" by adding an entry with a new device.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

from mount_core.backends import Backends
from mount_core.backends.base import Backend
from mount_core.config import Config, LocalConfig
from mount_core.errors import MountFailed
from mount_core.kernel import Kernel
from mount_core.manager import MountManager
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.probe import Condition, ProbeResult
from mount_core.spec import VolumeSpec

FSTYPE = "fuse.standin"


def _resolve(path: str) -> str:
    """A real path for ``/proc/self/fd/N[/name]`` (what the core hands the kernel)."""
    if not path.startswith("/proc/self/fd/"):
        return path
    rest = path[len("/proc/self/fd/") :]
    fd, _, name = rest.partition("/")
    base = os.readlink(f"/proc/self/fd/{fd}")
    return os.path.join(base, name) if name else base


def _contains(mount_point: str, path: str) -> bool:
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


class StandinKernel(Kernel):
    """Mount table, binds, unmounts and probes in memory."""

    def __init__(self) -> None:
        super().__init__(probe_timeout=1.0)
        self.entries: list[MountEntry] = []
        self.dead: set[str] = set()
        self.binds = 0
        #: Seconds each bind takes (to widen races in concurrency tests).
        self.bind_delay = 0.0
        self._ids = itertools.count(100)
        self._lock = threading.Lock()

    # What the core calls ---------------------------------------------------------

    def mount_table(self) -> MountTable:
        with self._lock:
            return MountTable(list(self.entries))

    def bind(self, source_fd: int, target_fd: int, *, readonly: bool, recursive: bool) -> None:
        source, target = (
            _resolve(f"/proc/self/fd/{source_fd}"),
            _resolve(f"/proc/self/fd/{target_fd}"),
        )
        time.sleep(self.bind_delay)
        with self._lock:
            backing = self.resolve(source, MountTable(list(self.entries)))
            assert backing is not None, f"{source} is on no mount"
            inside = os.path.relpath(source, backing.mount_point).removeprefix(".")
            root = os.path.normpath(os.path.join(backing.root, inside.lstrip("/")))
            self._add(target, backing.device, backing.source, root=root, readonly=readonly)
            self.binds += 1

    def resolve(self, path: str, table: MountTable | None = None) -> MountEntry | None:
        """The mount ``path`` reaches: the deepest of the mounts at it or at a parent
        that no later mount covers (at the same point or at one of its parents)."""
        path = _resolve(path)
        table = self.mount_table() if table is None else table
        entries = [e for e in table.entries if _contains(e.mount_point, path)]
        visible = [
            e for i, e in enumerate(entries)
            if not any(_contains(later.mount_point, e.mount_point) for later in entries[i + 1 :])
        ]  # fmt: skip
        return max(visible, key=lambda e: len(e.mount_point), default=None)

    def reach(self, paths: list[str]) -> list[MountEntry | None]:
        table = self.mount_table()
        return [self.resolve(path, table) for path in paths]

    def unmount(self, path: str, *, lazy: bool = False) -> bool:
        """Unmount what ``path`` reaches when it is mounted exactly there (as umount2)."""
        path = _resolve(path)
        with self._lock:
            entry = self.resolve(path, MountTable(list(self.entries)))
            if entry is None or entry.mount_point != path:
                return False
            self.entries.remove(entry)
        return True

    def probe(self, path: str) -> ProbeResult:
        if path in self.dead:
            return ProbeResult(Condition.FAILED, "the FUSE server died (ENOTCONN)", dead=True)
        return ProbeResult(Condition.HEALTHY, "")

    # What tests call -------------------------------------------------------------

    def _add(self, point: str, device: str, source: str, *, root: str = "/",
             readonly: bool = True) -> None:  # fmt: skip
        entry = MountEntry(
            mount_id=next(self._ids), parent_id=1, device=device, root=root, mount_point=point,
            options="ro" if readonly else "rw", optional=(), fstype=FSTYPE, source=source,
            super_options="",
        )  # fmt: skip
        self.entries.append(entry)

    def mount_fuse(self, point: str, source: str) -> str:
        """A new FUSE mount at ``point``; returns its device."""
        device = f"0:{next(self._ids)}"
        with self._lock:
            self._add(point, device, source)
        return device

    def at(self, point: str) -> list[MountEntry]:
        """Every entry at ``point``, bottom first (stacked binds show as several)."""
        with self._lock:
            return [e for e in self.entries if e.mount_point == point]

    def cover(self, point: str) -> None:
        """Mount an empty file system at ``point``, hiding what is mounted at or below it."""
        with self._lock:
            self._add(point, f"0:{next(self._ids)}", "tmpfs")

    def kill_server(self, point: str) -> None:
        """What a FUSE server's death looks like: the mount stays, every access fails."""
        self.dead.add(point)


class StandinBackend(Backend):
    """A backend whose mounts are the stand-in kernel's entries."""

    name = "local"

    def __init__(self, mount_root: str, kernel: StandinKernel) -> None:
        super().__init__(mount_root)
        self.kernel = kernel
        self.mounts = 0
        #: When set, mount() fails with this message (a repository gone, a client broken).
        self.failure: str | None = None

    def mount(self, spec: VolumeSpec, path: str) -> None:
        if self.failure is not None:
            raise MountFailed(f"cannot mount {spec.source}: {self.failure}")
        os.makedirs(path, exist_ok=True)
        self.kernel.dead.discard(path)
        self.kernel.mount_fuse(path, "standin-" + spec.key)
        self.mounts += 1

    def unmount(self, path: str) -> None:
        self.kernel.unmount(path)
        self.kernel.dead.discard(path)

    def owns(self, entry: MountEntry) -> bool:
        return entry.fstype == FSTYPE and entry.source.startswith("standin-")


class World:
    """A core on the stand-in kernel, with its directories under ``root``."""

    def __init__(self, root: Path, **settings: object) -> None:
        for name in ("state", "mounts", "targets", "repositories"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.root = root
        self.config = Config(
            state_dir=str(root / "state"),
            mount_root=str(root / "mounts"),
            target_roots=(str(root / "targets"),),
            local=LocalConfig(root=str(root / "repositories")),
        ).validate()
        if settings:
            self.config = replace(self.config, **settings).validate()  # type: ignore[arg-type]
        self.kernel = StandinKernel()
        self.backend = StandinBackend(self.config.mount_root, self.kernel)

    def manager(self) -> MountManager:
        """A core process of its own (own ledger connection), sharing kernel and backend."""
        backends = Backends(self.config)
        backends.register(self.backend)
        return MountManager(self.config, backends=backends, kernel=self.kernel)

    def target(self, name: str) -> str:
        return str(self.root / "targets" / name)
