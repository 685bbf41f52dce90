"""The small interface every backend implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from mount_core.mountinfo import MountEntry
from mount_core.spec import VolumeSpec

if TYPE_CHECKING:
    from mount_core.probe import Prober, ProbeResult


class Backend(ABC):
    """Mounts and unmounts the backing mount of a spec.

    ``mount`` returns only once the mount is visible in mountinfo (or raises after
    a bounded wait); the FUSE server it starts must outlive the calling process.
    """

    #: Implementation name stored in the ledger (``local``, ``cvmfs2``, ``eosxd``…).
    name: str = ""
    #: Cgroups the FUSE servers are started in (see :mod:`mount_core.cgroups`).
    server_cgroups: tuple[str, ...] = ()

    def __init__(self, mount_root: str) -> None:
        self.mount_root = mount_root

    def path_for(self, spec: VolumeSpec) -> str:
        """Where the backing mount of ``spec`` lives on the host."""
        return os.path.join(self.mount_root, spec.key)

    @abstractmethod
    def mount(self, spec: VolumeSpec, path: str) -> None:
        """Mount ``spec`` at ``path`` (a directory this call may create)."""

    @abstractmethod
    def unmount(self, path: str) -> None:
        """Unmount the backing mount at ``path``; a no-op when nothing is mounted."""

    @abstractmethod
    def owns(self, entry: MountEntry) -> bool:
        """True when a mountinfo entry is a backing mount this backend made."""

    def remove_stray(self, entry: MountEntry) -> bool:
        """Unmount ``entry`` (not owned, unknown to the ledger) if it carries this
        backend's naming, with whatever serves it; True when it did."""
        return False

    def revive(self, data: dict[str, Any], key: str) -> VolumeSpec:
        """Rebuild the spec of a ledger row (to remount it after a crash or reboot).

        Backends that keep secrets on disk for a key put them back here.
        """
        return VolumeSpec.from_public(data)

    def check_spec(self, spec: VolumeSpec) -> None:  # noqa: B027 - most backends serve any spec
        """Refuse a spec this backend can never serve, before a front records it."""

    def check_available(self) -> None:  # noqa: B027 - most backends need no check
        """Raise :class:`~mount_core.errors.Unavailable` when the client is missing."""

    def bind_recursive(self, spec: VolumeSpec) -> bool:
        """True when targets of ``spec`` need a recursive bind made a slave.

        A tree whose sub-mounts come and go (an autofs root) must be bound
        recursively and receive later mounts from the host, or the sub-mounts are
        missing in the target and access gives ELOOP.
        """
        return False

    def check_health(self, path: str, prober: Prober) -> ProbeResult | None:
        """This backend's own probe of the backing mount at ``path``, or None for the default.

        For mounts that must not be probed directly (an autofs root: a probe would
        keep its repositories from expiring), a backend probes what lies behind them.
        """
        return None
