"""mount(2) and umount2(2) called directly.

Forking mount(8) costs milliseconds per call; the syscalls cost microseconds, and
they take ``/proc/self/fd/N`` targets so that a directory opened safely (see
:mod:`mount_core.targets`) is exactly the one mounted on.
"""

from __future__ import annotations

import ctypes
import errno
import os

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _path(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    """mount(2); raises OSError with the kernel's errno."""
    if _libc.mount(_path(source), _path(target), _path(fstype), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _AT_RECURSIVE, _AT_EMPTY_PATH = 0x1, 0x8000, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH, _MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
_ATTR_RDONLY, _ATTR_NOSUID, _ATTR_NODEV = 0x1, 0x2, 0x4
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return result


def bind_fd(
    source_fd: int,
    target_fd: int,
    *,
    readonly: bool,
    recursive: bool = False,
    propagation: int = 0,
) -> None:
    """Bind the directory open at ``source_fd`` onto the one open at ``target_fd``.

    Uses the new mount API (open_tree, mount_setattr, move_mount): the bind is
    read-only, nosuid and nodev *before* it appears at the target, so no consumer
    can ever see it writable, and both ends are file descriptors, so no path can
    be swapped underneath. ``propagation`` (e.g. ``MS_SLAVE``) is set on the new
    tree the same way, before it is attached.
    """
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    tree = _check(_libc.syscall(_SYS_OPEN_TREE, source_fd, b"", flags), "open_tree")
    try:
        flags_set = _ATTR_NOSUID | _ATTR_NODEV | (_ATTR_RDONLY if readonly else 0)
        attr = _MountAttr(flags_set, 0, propagation, 0)
        setattr_flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
        _check(
            _libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", setattr_flags, ctypes.byref(attr),
                          ctypes.sizeof(attr)),
            "mount_setattr",
        )  # fmt: skip
        move = _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", target_fd, b"", move), "move_mount")
    finally:
        os.close(tree)


def set_propagation(target: str, flag: int, *, recursive: bool = False) -> None:
    """Make ``target`` shared, slave or private (``MS_SHARED`` / ``MS_SLAVE`` / ...)."""
    mount(None, target, None, flag | (MS_REC if recursive else 0))


def unmount(target: str, *, lazy: bool = False) -> bool:
    """umount2(2) without following a symlink at ``target``.

    Returns False when nothing was mounted there. A busy mount is detached lazily
    rather than left behind: the consumer asked for it to go.
    """
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if _libc.umount2(_path(target), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    if err in (errno.EBUSY, errno.ENOTCONN, errno.EIO) and not lazy:
        return unmount(target, lazy=True)
    raise OSError(err, os.strerror(err), target)
