"""The embedded read-only FUSE server behind the ``local`` backend.

Run as ``python -m mount_core.backends.localfs [options] SOURCE MOUNTPOINT``. Like
cvmfs2 and eosxd it daemonises itself: the command returns 0 once the mount is in
place (and 1 with a one-line reason on stderr otherwise), while the server keeps
running in its own session, detached from whoever started it. Unmounting the
mount point (or SIGTERM/SIGINT) stops it; SIGKILL leaves the kernel answering
ENOTCONN, exactly like a crashed cvmfs2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import stat
import sys
from typing import Any

import pyfuse3
import trio

from mount_core.atomicfile import write_atomically

_TIMEOUT = 10.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class ReadOnlyTree(pyfuse3.Operations):
    """Serves a directory tree read-only; symlinks are returned, never followed.

    Like cvmfs2 by default, it shows no setuid/setgid bits and no device files.
    """

    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self._inodes: dict[tuple[int, int], int] = {}
        root = os.lstat(source)
        self._inodes[(root.st_dev, root.st_ino)] = pyfuse3.ROOT_INODE
        self._next = pyfuse3.ROOT_INODE + 1
        self._files: dict[int, int] = {}

    def _path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _attrs(self, path: str) -> Any:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            # A device file would open the node's device to anyone a later bind
            # lets in (a runtime's bind without nodev): not shown, as cvmfs2 does.
            raise pyfuse3.FUSEError(errno.ENOENT)
        ident = (st.st_dev, st.st_ino)
        inode = self._inodes.get(ident)
        if inode is None:
            inode = self._inodes[ident] = self._next
            self._next += 1
        self._paths.setdefault(inode, path)
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        # Read-only, and never setuid/setgid: a container runtime may bind a target
        # again without nosuid, and the program would then run as its owner.
        entry.st_mode = st.st_mode & ~(0o222 | stat.S_ISUID | stat.S_ISGID)
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = 4096
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        entry.attr_timeout = _TIMEOUT
        entry.entry_timeout = _TIMEOUT
        entry.generation = 0
        return entry

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        text = os.fsdecode(name)
        if text in (".", "..") or "/" in text:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(os.path.join(self._path(parent_inode), text))

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attrs(self._path(inode))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def opendir(self, inode: int, ctx: Any) -> int:
        if not stat.S_ISDIR(os.lstat(self._path(inode)).st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, inode: int, start_id: int, token: Any) -> None:
        path = self._path(inode)
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        for index in range(start_id, len(names)):
            try:
                attrs = self._attrs(os.path.join(path, names[index]))
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attrs, index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(self._path(inode), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self._files[fd] = inode
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)
        os.close(fh)

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return not mode & os.W_OK

    async def statfs(self, ctx: Any) -> Any:
        st = os.statvfs(self._paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
            setattr(out, name, getattr(st, name))
        out.f_bfree = out.f_bavail = 0
        out.f_ffree = out.f_favail = 0
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return []


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _serve() -> None:
    """Serve until the mount goes (umount, ``umount -l`` once its last user left) or a signal.

    ``pyfuse3.main`` returns when the kernel ends the session; the server must then
    exit too, or every repair after an admin's lazy unmount leaves one behind.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _detach(log_path: str | None) -> int:
    """Fork; the parent waits on a pipe for the child's readiness and exits with it."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode(errors="replace")
        if answer == "ok":
            os._exit(0)
        sys.stderr.write(answer or "the FUSE server died while starting\n")
        os._exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:  # the session leader leaves; the server can never regain a tty
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log_path else null
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    return write_end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="directory to serve")
    parser.add_argument("mountpoint")
    parser.add_argument("--fsname", default="hepvol")
    parser.add_argument(
        "--subtype", default="hepvol", help="FUSE subtype ('' for plain 'fuse', as cvmfs2 shows)"
    )
    parser.add_argument("--pidfile")
    parser.add_argument("--log")
    parser.add_argument("--foreground", action="store_true")
    parser.add_argument("--hold-fd", type=int, help="inherited descriptor to close once ready "
                        "(the starter's lock: nobody mounts or unmounts the path meanwhile)")  # fmt: skip
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        print(f"source {args.source} is not a directory", file=sys.stderr)
        return 1
    if not os.path.isdir(args.mountpoint):
        print(f"mount point {args.mountpoint} is not a directory", file=sys.stderr)
        return 1
    ready = -1 if args.foreground else _detach(args.log)
    options = set(pyfuse3.default_options)
    options.discard("default_permissions")
    options |= {
        f"fsname={args.fsname}",
        "ro",
        "nosuid",
        "nodev",
        "allow_other",
        "default_permissions",
    }
    if args.subtype:
        options.add(f"subtype={args.subtype}")
    try:
        pyfuse3.init(ReadOnlyTree(args.source), args.mountpoint, options)
    except Exception as exc:  # report any start-up failure through the pipe
        if ready >= 0:
            os.write(ready, f"cannot mount {args.mountpoint}: {exc}\n".encode())
        else:
            print(f"cannot mount {args.mountpoint}: {exc}", file=sys.stderr)
        return 1
    if args.pidfile:
        try:
            write_atomically(args.pidfile, f"{os.getpid()}\n", 0o644, sync=False)
        except OSError as exc:
            # Without a pidfile nobody could stop this server: take the mount down.
            pyfuse3.close(unmount=True)
            message = f"cannot write {args.pidfile}: {exc.strerror}"
            if ready >= 0:
                os.write(ready, message.encode())
            else:
                print(message, file=sys.stderr)
            return 1
    if ready >= 0:
        # The starter may have died meanwhile: the server still serves (adopted later).
        with contextlib.suppress(OSError):
            os.write(ready, b"ok")
        os.close(ready)
    if args.hold_fd is not None:
        with contextlib.suppress(OSError):
            os.close(args.hold_fd)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
