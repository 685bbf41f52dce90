"""Credentials given with named volumes, kept so that a volume can be mounted later.

A Docker volume created with an EOS credential is mounted long after ``Create``
(and again after a reboot), so its secret must outlive the call. Each one is a
single file ``<state dir>/credentials/<owner>/<digest of name>``, mode 0600 in
0700 directories, written atomically and removed with its volume. File names are
digests, so a volume name never becomes a path.
"""

from __future__ import annotations

import hashlib
import os

from mount_core.atomicfile import write_atomically
from mount_core.errors import StateError
from mount_core.spec import Credential


class CredentialStore:
    """The credentials of named volumes, one 0600 file each."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, "credentials")

    def _path(self, owner: str, name: str) -> str:
        digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()
        return os.path.join(self.root, hashlib.sha256(owner.encode()).hexdigest()[:16], digest)

    def put(self, owner: str, name: str, credential: Credential) -> None:
        """Store (or replace) the credential of volume ``name`` of ``owner`` (a front)."""
        path = self._path(owner, name)
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            write_atomically(path, credential.kind.encode() + b"\n" + credential.value, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot store a credential under {self.root}: {exc.strerror}"
            ) from None

    def get(self, owner: str, name: str) -> Credential | None:
        """The stored credential, or None when there is none."""
        try:
            with open(self._path(owner, name), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                f"cannot read a credential under {self.root}: {exc.strerror}"
            ) from None
        kind, _, value = data.partition(b"\n")
        return Credential(kind.decode(), value)

    def delete(self, owner: str, name: str) -> bool:
        """Remove the stored credential; False when there was none."""
        try:
            os.unlink(self._path(owner, name))
        except FileNotFoundError:
            return False
        return True
