"""Named volumes: Docker volumes and CSI controller volumes, recorded by the core.

A named volume is a front's name for a record (a spec, StorageClass parameters)
and, for EOS, an optional credential kept in the credential store. Creating,
removing and the in-use check run under the volume's own cross-process lock, so
two creates of one name, or a remove racing a mount, cannot interleave. The
fronts call this; they never touch the ledger, the credential store or locks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mount_core.credentials import CredentialStore
from mount_core.errors import Conflict, InUse, InvalidSpec
from mount_core.spec import Credential

if TYPE_CHECKING:
    from mount_core.manager import MountManager

#: Names are file-name and ledger-key safe: 1-255 printable characters, no '/' or '..'.
NAME_MAX = 255
NAME_RULE = "use 1-255 printable characters without '/', '..', NUL or newlines"


def check_name(name: object, what: str = "volume name", rule: str = NAME_RULE) -> str:
    """Refuse names that could not safely name anything (``rule`` says what is allowed)."""
    if (
        not isinstance(name, str)
        or not 0 < len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX
        or "/" in name
        or ".." in name
        or not name.isprintable()  # control, format (bidi) and line-separator characters
    ):
        raise InvalidSpec(what, name, rule)
    return name


@dataclass(frozen=True)
class NamedVolume:
    """One recorded volume of a front."""

    name: str
    record: dict[str, Any]
    created_at: str


class VolumeExists(Conflict):
    """The name is taken by a volume with another record (the front words the message)."""

    def __init__(self, existing: NamedVolume) -> None:
        super().__init__(f"volume {existing.name!r} already exists with another definition")
        self.existing = existing


class NamedVolumes:
    """The named volumes of one front (``cvmfs``, ``eos``, ``csi-cvmfs``, …)."""

    def __init__(self, manager: MountManager, front: str) -> None:
        check_name(front, "front name")
        self.front = front
        self._ledger = manager.ledger
        self._service = manager.service
        self._credentials = CredentialStore(manager.config.state_dir)

    @contextmanager
    def locked(self, name: str, *, shared: bool = False) -> Iterator[None]:
        """Hold volume ``name``: shared while it is used, exclusive to create or remove it."""
        digest = hashlib.sha256(f"{self.front}\0{name}".encode("utf-8", "surrogatepass"))
        with self._service.locked("volume-" + digest.hexdigest()[:32], shared=shared):
            yield

    def create(
        self, name: str, record: Mapping[str, Any], credential: Credential | None = None
    ) -> tuple[NamedVolume, bool]:
        """Record a volume; True when created. The same record again is fine; another
        record under a taken name raises :class:`VolumeExists`."""
        check_name(name)
        wanted = dict(record)
        with self.locked(name):
            existing = self.get(name)
            if existing is not None:
                if existing.record != wanted:
                    raise VolumeExists(existing)
                return existing, False
            if credential is not None:
                self._credentials.put(self.front, name, credential)
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._ledger.put_volume(self.front, name, wanted, created)
            return NamedVolume(name, wanted, created), True

    def get(self, name: str) -> NamedVolume | None:
        """The volume named ``name``, or None (also for a name no volume could have)."""
        try:
            check_name(name)
        except InvalidSpec:
            return None
        row = self._ledger.volume(self.front, name)
        return None if row is None else NamedVolume(row.name, row.spec, row.created_at)

    def list(self) -> list[NamedVolume]:
        """Every volume of this front, by name."""
        return [NamedVolume(r.name, r.spec, r.created_at) for r in self._ledger.volumes(self.front)]

    def credential(self, name: str) -> Credential | None:
        """The credential stored with volume ``name`` on this node, if any."""
        return self._credentials.get(self.front, name)

    def remove(self, name: str, in_use: Callable[[NamedVolume], str] | None = None) -> bool:
        """Forget a volume (and its credential); False when there was none (nor could be).

        ``in_use`` returns why the volume cannot go (empty: it can); it is asked
        under the volume's lock, so no use can start between the check and the removal
        (users hold the lock shared, see :meth:`locked`).
        """
        if self.get(name) is None:
            return False
        with self.locked(name):
            existing = self.get(name)
            if existing is None:
                return False
            reason = in_use(existing) if in_use is not None else ""
            if reason:
                raise InUse(reason)
            self._ledger.delete_volume(self.front, name)
            self._credentials.delete(self.front, name)
            return True
