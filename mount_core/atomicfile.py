"""Writing a file so that readers see the old content or the new, never a part.

Every file hepvol writes that something else reads while it runs goes through
:func:`write_atomically`: client configs and credentials (read by cvmfs2 and
eosxd), pidfiles, the autofs map, the FlexVolume launchers (run by kubelet), the
systemd units. The new content goes to a fresh temporary file in the same
directory (``O_EXCL|O_NOFOLLOW``: never a file or link planted there), gets its
mode and owner before any byte is written, is flushed to disk, then renamed over
the old one. A failure leaves the old file and no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets


def write_atomically(
    path: str,
    data: bytes | str,
    mode: int = 0o644,
    *,
    owner: tuple[int, int] | None = None,
    prefix: str = ".new-",
    sync: bool = True,
) -> None:
    """Replace ``path`` by ``data`` (text is UTF-8) with ``mode`` and ``owner`` (uid, gid).

    ``prefix`` names the temporary file (``<prefix><name>.<random>``) for readers
    of the directory that must skip it; ``sync=False`` skips the fsync for files
    that only matter while this boot lasts (pidfiles).
    """
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f"{prefix}{name}.{secrets.token_hex(4)}")
    content = data.encode() if isinstance(data, str) else data
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
