"""The kernel behind a small seam: the mount table, binds, unmounts and probes.

:class:`Kernel` calls the real thing (``/proc/self/mountinfo``, the new mount API,
``umount2``, bounded ``statvfs``). The backing-mount service reaches the kernel
only through it, so unit tests give the service a stand-in that keeps a mount
table in memory and decide publish, reconcile and repair without root.
"""

from __future__ import annotations

from mount_core import bind, mountinfo
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.probe import Prober, ProbeResult


class Kernel:
    """mount(2), umount2(2), mountinfo and probes, as the running kernel answers them."""

    def __init__(self, probe_timeout: float) -> None:
        #: Shared by every probe of this process: one in flight per path.
        self.prober = Prober(probe_timeout)

    def boot_id(self) -> str:
        """This boot's id: a mount recorded under another one did not survive."""
        try:
            with open("/proc/sys/kernel/random/boot_id") as handle:
                return handle.read().strip()
        except OSError:
            return ""

    def mount_table(self) -> MountTable:
        """A fresh snapshot of this process's mount table."""
        return MountTable()

    def resolve(self, path: str, table: MountTable | None = None) -> MountEntry | None:
        """The mountinfo row of the mount ``path`` really reaches, never blocking.

        Not necessarily the row at ``path``: a mount over one of its parents hides
        that one. From ``table`` when given (None when the path reaches a mount
        newer than it), else read afresh. None when the path is gone.
        """
        if table is None:
            return self.reach([path])[0]
        try:
            return table.by_id(mountinfo.mount_id_of(path))
        except OSError:
            return None

    def reach(self, paths: list[str]) -> list[MountEntry | None]:
        """:meth:`resolve` of several paths with one fresh read of the mount table."""
        ids: list[int | None] = []
        for path in paths:
            try:
                ids.append(mountinfo.mount_id_of(path))
            except OSError:
                ids.append(None)
        found = mountinfo.entries_by_id({i for i in ids if i is not None})
        return [None if i is None else found.get(i) for i in ids]

    def bind(self, source_fd: int, target_fd: int, *, readonly: bool, recursive: bool) -> None:
        """Bind the directory open at ``source_fd`` onto the one open at ``target_fd``.

        Always nosuid and nodev; a recursive bind (a tree whose sub-mounts come and
        go) is made a slave so that later sub-mounts reach the target.
        """
        bind.bind_fd(source_fd, target_fd, readonly=readonly, recursive=recursive,
                     propagation=bind.MS_SLAVE if recursive else 0)  # fmt: skip

    def unmount(self, path: str, *, lazy: bool = False) -> bool:
        """Unmount ``path`` (never following a symlink); False when nothing was mounted."""
        return bind.unmount(path, lazy=lazy)

    def probe(self, path: str) -> ProbeResult:
        """A bounded ``statvfs`` of ``path`` (see :mod:`mount_core.probe`)."""
        return self.prober.probe(path)
