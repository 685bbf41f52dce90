"""The ``local`` backend: directories on this node served by the embedded FUSE server.

Repository ``R`` is ``<local root>/R``; ``R@T`` is ``<local root>/R@T`` and
``R#H`` is ``<local root>/R#H``. An EOS instance ``I`` is ``<local root>/I``, its
paths below it. It lets every front run and be tested with real FUSE mounts on a
node without the CVMFS or EOS clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Iterator

from mount_core import bind, cgroups, rootdirs
from mount_core.backends.base import Backend
from mount_core.errors import Busy, InvalidSpec, MountFailed, MountTimeout, NotFound, Unavailable
from mount_core.locks import lock_file
from mount_core.mountinfo import MountEntry, MountTable, mounted_at
from mount_core.spec import VolumeSpec
from mount_core.statedir import StateDir

FSTYPE = "fuse.hepvol"
NAME_MAX = 255
FSNAME_PREFIX = "hepvol:"


def serves(pid: int, path: str) -> bool:
    """True when process ``pid`` is an embedded FUSE server started for mount point ``path``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    # argv ends with SOURCE, MOUNTPOINT and the empty string after the last NUL.
    return b"mount_core.backends.localfs" in argv and argv[-2:] == [os.fsencode(path), b""]


class LocalBackend(Backend):
    name = "local"

    def __init__(self, mount_root: str, root: str, state_dir: str, timeout: float) -> None:
        super().__init__(mount_root)
        self.root = root
        self.state = StateDir(state_dir)
        self.run_dir = self.state.run
        self.log_dir = self.state.logs
        self.timeout = timeout

    def check_spec(self, spec: VolumeSpec) -> None:
        if spec.backend == "cvmfs" and (spec.date or spec.client_config):
            raise Unavailable(
                "the local backend serves tags and hashes only; date pins and clientConfig "
                'need the real client (cvmfs.client = "cvmfs2")'
            )

    def source_dir(self, spec: VolumeSpec) -> str:
        """The directory serving ``spec``; raises NotFound when it does not exist."""
        self.check_spec(spec)
        if spec.backend == "cvmfs":
            if spec.repository is None:
                name = ""
            elif spec.tag:
                name = f"{spec.repository}@{spec.tag}"
            elif spec.hash:
                name = f"{spec.repository}#{spec.hash}"
            else:
                name = spec.repository
        else:
            name = spec.instance or ""
        if len(os.fsencode(name)) > NAME_MAX:
            raise InvalidSpec(
                "tag" if spec.tag else "hash", spec.tag or spec.hash,
                f"the local backend serves {spec.source} from a directory of that name, "
                f"and a name holds {NAME_MAX} bytes: use a shorter tag",
            )  # fmt: skip
        path = os.path.join(self.root, name) if name else self.root
        if not os.path.isdir(path):
            raise NotFound(
                f"{spec.backend} {spec.source} is not available on this node "
                f"(no directory {path} under the local root)"
            )
        return path

    def _log_path(self, path: str) -> str:
        return self.state.server_log(os.path.basename(path))

    def pidfile(self, path: str) -> str:
        return self.state.server_pidfile(os.path.basename(path))

    def _starting_path(self, path: str) -> str:
        return self.state.server_starting(os.path.basename(path))

    @contextlib.contextmanager
    def _starting(self, path: str) -> Iterator[int]:
        """Hold ``<run dir>/<name>.starting``, which a server holds until it is ready.

        A server outlives the process that started it; if that process dies (a
        killed daemon or FlexVolume call) while the server is still starting, the
        next mount or unmount of the path waits for that server to finish instead
        of racing it (two servers stacked on one path, or a mount made after the
        path was given up).
        """
        rootdirs.ensure(self.run_dir, "run directory", 0o700)
        try:
            fd = lock_file(self._starting_path(path), fcntl.LOCK_EX,
                           time.monotonic() + self.timeout, path)  # fmt: skip
        except Busy:
            raise MountTimeout(
                f"a FUSE server starting on {path} was not ready within "
                f"{self.timeout:g} s (mount_timeout_seconds)"
            ) from None
        try:
            yield fd
        finally:
            os.close(fd)

    def mount(self, spec: VolumeSpec, path: str) -> None:
        with self._starting(path) as starting:
            entry = mounted_at(path)  # a row hidden under a mount over a parent is no mount
            if entry is not None and self.owns(entry):
                return  # a server whose starter died finished starting: adopt it
            self._start_server(spec, path, starting)

    def _start_server(self, spec: VolumeSpec, path: str, starting: int) -> None:
        import subprocess  # here: a FlexVolume call on a mounted volume never needs it

        source = self.source_dir(spec)
        rootdirs.ensure(self.log_dir, "log directory", 0o700)
        rootdirs.mount_point(path)
        pidfile = self.pidfile(path)
        command = [
            sys.executable, "-m", "mount_core.backends.localfs",
            "--fsname", FSNAME_PREFIX + spec.key,
            "--pidfile", pidfile,
            "--log", self._log_path(path),
            "--hold-fd", str(starting),
            source, path,
        ]  # fmt: skip
        try:
            result = subprocess.run(
                cgroups.wrap(command, self.server_cgroups),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                text=True,
                pass_fds=(starting,),
            )
        except subprocess.TimeoutExpired:
            self._kill(pidfile, path)
            bind.unmount(path, lazy=True)
            raise MountTimeout(
                f"the local FUSE server for {spec.source} was not ready within "
                f"{self.timeout:g} s (mount_timeout_seconds)"
            ) from None
        if result.returncode < 0 and self._adopt_orphan(path, time.monotonic() + self.timeout):
            return  # the starter was killed; the server it forked came up all the same
        if result.returncode != 0:
            killed = f"the FUSE server was killed (signal {-result.returncode}) while starting"
            reason = (result.stderr.strip().splitlines() or [killed])[-1]
            raise MountFailed(f"cannot mount {spec.source}: {reason}")
        entry = MountTable().at(path)
        if entry is None or not self.owns(entry):
            raise MountFailed(
                f"cannot mount {spec.source}: the server reported ready but {path} is not mounted"
            )

    def _adopt_orphan(self, path: str, deadline: float) -> bool:
        """Wait for a server of ``path`` whose starter died; True once it serves the mount.

        The starter forks the server before it mounts: killing the starter (a crash,
        ``kill -9``) may leave the server to finish alone, and it must be adopted,
        not left as a mount nobody recorded.
        """
        while time.monotonic() < deadline:
            entry = MountTable().at(path)
            if entry is not None and self.owns(entry):
                return True
            if not any(serves(int(pid), path) for pid in os.listdir("/proc") if pid.isdigit()):
                return False
            time.sleep(0.05)
        return False

    def unmount(self, path: str) -> None:
        with self._starting(path):
            try:
                bind.unmount(path)
            except OSError:
                bind.unmount(path, lazy=True)
            # The server exits when its mount goes; a dead or hung one is cleared here.
            self._kill(self.pidfile(path), path)
            # Its files go with it (locked: a server starting meanwhile would wait).
            for name in (self._starting_path(path), self._log_path(path)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

    def _kill(self, pidfile: str, path: str) -> None:
        """SIGKILL the server of ``path`` named by ``pidfile``, if it is still that server.

        A pidfile outlives its server (kill -9); its PID may since belong to any
        process, even another volume's server. The process is pinned with a pidfd
        first and killed only if its command line is the embedded server's with
        ``path`` as its mount point, so a reused PID is never signalled.
        """
        try:
            with open(pidfile) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
            try:
                if serves(pid, path):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
        with contextlib.suppress(OSError):
            os.unlink(pidfile)

    def owns(self, entry: MountEntry) -> bool:
        return entry.fstype == FSTYPE and entry.source.startswith(FSNAME_PREFIX)

    def server_pid(self, path: str) -> int | None:
        """PID of the FUSE server behind ``path`` (tests and diagnostics use it)."""
        try:
            with open(self.pidfile(path)) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None
