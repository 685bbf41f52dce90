"""Credentials given with named volumes, kept so that a volume can be mounted later;
and the credentials an administrator registers by name for Docker volumes to refer to.

A Docker volume created with an EOS credential is mounted long after ``Create``
(and again after a reboot), so its secret must outlive the call. Each one is a
single file ``<state dir>/credentials/<owner>/<digest of name>``, mode 0600 in
0700 directories, written atomically and removed with its volume. File names are
digests, so a volume name never becomes a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from mount_core.atomicfile import write_atomically
from mount_core.errors import InvalidSpec, NotFound, StateError
from mount_core.spec import Credential
from mount_core.statedir import StateDir


def _store(root: str, path: str, credential: Credential) -> None:
    """Write one credential file (kind line, then the value), 0600 in 0700 dirs."""
    try:
        for directory in (os.path.dirname(root), root, os.path.dirname(path)):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        write_atomically(path, credential.kind.encode() + b"\n" + credential.value, 0o600)
    except OSError as exc:
        raise StateError(f"cannot store a credential under {root}: {exc.strerror}") from None


def _load(root: str, path: str) -> Credential | None:
    """The credential in one file, or None when there is none."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read a credential under {root}: {exc.strerror}") from None
    kind, _, value = data.partition(b"\n")
    return Credential(kind.decode(), value)


def _remove(path: str) -> bool:
    """Remove one credential file; False when there was none."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class CredentialStore:
    """The credentials of named volumes, one 0600 file each."""

    def __init__(self, state_dir: str) -> None:
        self.root = StateDir(state_dir).credentials

    def _path(self, owner: str, name: str) -> str:
        digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()
        return os.path.join(self.root, hashlib.sha256(owner.encode()).hexdigest()[:16], digest)

    def put(self, owner: str, name: str, credential: Credential) -> None:
        """Store (or replace) the credential of volume ``name`` of ``owner`` (a front)."""
        _store(self.root, self._path(owner, name), credential)

    def get(self, owner: str, name: str) -> Credential | None:
        """The stored credential, or None when there is none."""
        return _load(self.root, self._path(owner, name))

    def delete(self, owner: str, name: str) -> bool:
        """Remove the stored credential; False when there was none."""
        return _remove(self._path(owner, name))


#: Names of registered credentials: they become file names, so no '/', no leading dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "use 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -)"


def check_credential_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidSpec("credential name", name, NAME_RULE)
    return name


def read_private_file(path: str, kind: str, what: str = "credential-file") -> Credential:
    """A credential read from a file only root can read: absolute, not a symlink, a
    regular file owned by root with no group or other permission bits."""
    if not os.path.isabs(path) or "\x00" in path:
        raise InvalidSpec(what, path, "give the absolute path of a file on this host")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidSpec(what, path, f"cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidSpec(what, path, "not a regular file")
        if info.st_uid != 0 or info.st_mode & 0o077:
            raise InvalidSpec(
                what, path,
                f"must be root's and private to root: chown root:root {path} && chmod 0600 {path}",
            )  # fmt: skip
        value = handle.read(65537)
    return Credential(kind, value)


class NamedCredentials:
    """Credentials an administrator registered by name (``hepvol credential add``), so
    that Docker volumes can name them instead of carrying the secret as an option
    (Docker shows and keeps every ``-o`` option). One 0600 file each, under
    ``<state dir>/credentials/named/``: the first line is the kind, the rest the value."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(StateDir(state_dir).credentials, "named")

    def _path(self, name: str) -> str:
        return os.path.join(self.root, check_credential_name(name))

    def add(self, name: str, credential: Credential) -> None:
        _store(self.root, self._path(name), credential)

    def get(self, name: str) -> Credential:
        credential = _load(self.root, self._path(name))
        if credential is None:
            raise NotFound(
                f"no credential named {name!r} on this node; register it with "
                f"`hepvol credential add {name} --type KIND --file FILE`"
            )
        return credential

    def remove(self, name: str) -> bool:
        return _remove(self._path(name))

    def names(self) -> list[tuple[str, Credential]]:
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [(name, self.get(name)) for name in entries if _NAME.match(name)]
