"""The directories hepvol creates or mounts into, checked before they are trusted.

The state dir decides what gets mounted where, the mount root holds the backing
mounts, and the target roots receive binds. If a user other than root could write
any of them, a symlink planted there would make a root daemon mount over any
directory of the node. Each is therefore refused, with the command that fixes it,
when it is a symlink, not a directory, not owned by root, or writable by group or
others; and one that hepvol creates gets exactly its mode, whatever the umask.
"""

from __future__ import annotations

import os
import stat

from mount_core.errors import StateError


def _make(path: str, mode: int) -> None:
    """Create ``path`` and missing parents with exactly ``mode`` (the umask would take bits)."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path and not os.path.lexists(parent):
        _make(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode, follow_symlinks=False)


def check(path: str, what: str, mode: int = 0o755, *, fix: str = "") -> None:
    """Refuse ``path`` unless it is a real directory owned by root that only root can write.

    ``fix`` replaces the advice given for a symlink or a file at ``path``.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StateError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise StateError(f"{what} {path} cannot be checked: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StateError(
            f"{what} {path} is a symlink (to {os.path.realpath(path)}); "
            f"{fix or 'configure the real directory instead'}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"{what} {path} is not a directory; {fix or 'move it away'}")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise StateError(
            f"{what} {path} is writable by a user other than root "
            f"(owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); "
            f"fix it with: chown root:root {path} && chmod {mode:04o} {path}"
        )


def ensure(path: str, what: str, mode: int = 0o700, *, fix: str = "") -> None:
    """Create ``path`` with ``mode`` if missing, then :func:`check` it."""
    if not os.path.lexists(path):
        _make(path, mode)
    check(path, what, mode, fix=fix)


def mount_point(path: str, what: str = "mount point") -> None:
    """Create the directory a backing mount goes on (0755); refuse a symlink or a file there.

    Mounting on a path follows symlinks: a link left at ``path`` would put the
    mount somewhere else entirely.
    """
    ensure(path, what, 0o755, fix=f"nothing was mounted; remove it with: rm {path}")
