"""Target paths: where consumers see a volume, and the only places we mount onto.

A target must lie below one of the configured target roots. Containment is checked
on the real directory tree, not on strings: the path is opened one component at a
time from the root with ``O_NOFOLLOW``, so a symlink anywhere below the root is
refused, and the mount goes onto the opened directory (``/proc/self/fd/N``), so
nothing can swap the path between the check and the mount.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from mount_core import bind, rootdirs
from mount_core.errors import InvalidTarget, MountTimeout, NotFound, quote_value

_DIR_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
MAX_PATH = 4096


def normalize(target: str) -> str:
    """Check a target's syntax and return it without trailing slashes.

    Refused: relative paths, ``.``/``..`` components, NUL, newlines and other
    control characters (they break every line-based tool that reads mount
    tables). Spaces, tabs and non-ASCII names are fine: mountinfo escapes them.
    """
    if not isinstance(target, str) or not target:
        raise InvalidTarget("target path is empty: give an absolute directory path")
    if len(target) > MAX_PATH:
        raise InvalidTarget(f"target path {quote_value(target)} is longer than {MAX_PATH} bytes")
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in target):
        raise InvalidTarget(
            f"target path {quote_value(target)} contains control characters (newline, NUL…)"
        )
    if not target.startswith("/"):
        raise InvalidTarget(f"target path {quote_value(target)} must be absolute")
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, smuggled in as surrogates
        raise InvalidTarget(
            f"target path {quote_value(target)} is not valid UTF-8; use a UTF-8 path"
        ) from None
    parts = [p for p in target.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidTarget(f"target path {quote_value(target)} must not contain '.' or '..'")
    return "/" + "/".join(parts)


def root_of(target: str, roots: Sequence[str]) -> str:
    """The configured root that contains ``target`` (strictly below it)."""
    for root in roots:
        prefix = os.path.normpath(root).rstrip("/") + "/"
        if target.startswith(prefix) and len(target) > len(prefix):
            return os.path.normpath(root)
    raise InvalidTarget(
        f"target path {quote_value(target)} is outside the allowed target roots "
        f"({', '.join(roots)}); set target_roots in the hepvol config to allow it"
    )


@dataclass
class OpenTarget:
    """A target directory opened without following symlinks."""

    path: str
    fd: int
    created: bool

    @property
    def proc_path(self) -> str:
        """A path that names exactly the opened directory, for mount(2)."""
        return f"/proc/self/fd/{self.fd}"


@contextmanager
def open_target(target: str, roots: Sequence[str], *, create: bool) -> Iterator[OpenTarget]:
    """Open ``target`` below its root, refusing symlinks; create the last component.

    Only the last component is created (the caller owns its parent, as kubelet
    does); ``created`` tells whether it was, so that only directories we made are
    removed later.
    """
    root = root_of(target, roots)
    parts = target[len(root) :].strip("/").split("/")
    rootdirs.check(root, "target root")
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidTarget(f"target root {root} cannot be opened: {exc.strerror}") from None
    created = False
    try:
        for index, name in enumerate(parts):
            last = index == len(parts) - 1
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not (last and create):
                    raise InvalidTarget(
                        f"target path {quote_value(target)}: {quote_value(name)} does not exist"
                    ) from None
                os.mkdir(name, 0o750, dir_fd=fd)
                created = True
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise InvalidTarget(
                        f"target path {quote_value(target)}: {quote_value(name)} is a symlink or "
                        "not a directory; targets must be real directories"
                    ) from None
                raise InvalidTarget(
                    f"target path {quote_value(target)} cannot be opened: {exc.strerror}"
                ) from None
            os.close(fd)
            fd = child
        yield OpenTarget(target, fd, created)
    finally:
        os.close(fd)


@contextmanager
def open_inside(base: str, subpath: str, *, timeout: float | None = None) -> Iterator[OpenTarget]:
    """Open ``base/subpath`` without following symlinks below ``base``.

    Used for the bind source inside a backing mount, so that a symlink inside a
    remote file system can never make us bind a host directory onto a target.
    Looking ``subpath`` up asks the FUSE server behind ``base``; with ``timeout``
    a server that does not answer (stopped, hung) makes this raise
    :class:`MountTimeout` after that many seconds instead of blocking the caller
    for ever.
    """
    if timeout is None or not subpath.strip("/"):
        fd = _walk(base, subpath)
    else:
        fd = _walk_bounded(base, subpath, timeout)
    try:
        yield OpenTarget(os.path.join(base, subpath), fd, False)
    finally:
        os.close(fd)


def _walk(base: str, subpath: str) -> int:
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in (p for p in subpath.split("/") if p):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"{quote_value(subpath)} does not exist in the volume") from None
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise InvalidTarget(
                        f"{quote_value(subpath)} in the volume is a symlink or not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Lookups that never returned, by backing mount: a hung server parks one thread
#: per mount, not one per call (later calls are refused at once while it hangs).
_stuck: dict[str, threading.Thread] = {}
_stuck_guard = threading.Lock()


class _Lookup:
    """One walk in a worker thread; whoever comes last (caller or walk) closes the fd."""

    def __init__(self, base: str, subpath: str) -> None:
        self.base, self.subpath = base, subpath
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.error: BaseException | None = None
        self.finished = self.abandoned = False

    def run(self) -> None:
        fd, error = None, None
        try:
            fd = _walk(self.base, self.subpath)
        except BaseException as exc:  # handed to the caller
            error = exc
        with self.lock:
            self.finished = True
            if self.abandoned:
                if fd is not None:
                    os.close(fd)
                return
            self.fd, self.error = fd, error


def _not_responding(base: str, subpath: str, timeout: float, still: bool = False) -> MountTimeout:
    how = "is still not responding" if still else "is not responding"
    return MountTimeout(
        f"the volume mounted at {base} {how}: looking up {quote_value(subpath)} took longer "
        f"than {timeout:g} s (probe_timeout_seconds; a hung FUSE server?); try again later"
    )


def _walk_bounded(base: str, subpath: str, timeout: float) -> int:
    with _stuck_guard:
        stuck = _stuck.get(base)
        if stuck is not None:
            if stuck.is_alive():
                raise _not_responding(base, subpath, timeout, still=True)
            del _stuck[base]
    lookup = _Lookup(base, subpath)
    worker = threading.Thread(target=lookup.run, name="hepvol-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    with lookup.lock:
        if not lookup.finished:
            lookup.abandoned = True
            with _stuck_guard:
                _stuck[base] = worker
            raise _not_responding(base, subpath, timeout)
    if lookup.error is not None:
        raise lookup.error
    assert lookup.fd is not None
    return lookup.fd


def release(
    target: str,
    roots: Sequence[str],
    *,
    remove_dir: bool,
    unmount: Callable[[str], bool] = bind.unmount,
) -> bool:
    """Unmount whatever is mounted at ``target`` and optionally remove the directory.

    The parent is reached with the same no-symlink walk as :func:`open_target` and
    the mount is named through it, so a path component swapped for a symlink
    cannot redirect the unmount elsewhere. A dead (ENOTCONN) or busy mount is
    detached lazily. Returns True when something was unmounted.
    """
    root = root_of(target, roots)
    parent, name = os.path.split(target)
    try:
        with open_target(parent, [root], create=False) if parent != root else _root_fd(root) as p:
            unmounted = unmount(f"{p.proc_path}/{name}")
            if remove_dir:
                try:
                    os.rmdir(name, dir_fd=p.fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY, errno.ENOTDIR):
                        raise
            return unmounted
    except InvalidTarget:
        return False


@contextmanager
def _root_fd(root: str) -> Iterator[OpenTarget]:
    rootdirs.check(root, "target root")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        yield OpenTarget(root, fd, False)
    finally:
        os.close(fd)
