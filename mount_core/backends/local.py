"""The ``local`` backend: directories on this node served by the embedded FUSE server.

Repository ``R`` is ``<local root>/R``; ``R@T`` is ``<local root>/R@T`` and
``R#H`` is ``<local root>/R#H``. An EOS instance ``I`` is ``<local root>/I``, its
paths below it. It lets every front run and be tested with real FUSE mounts on a
node without the CVMFS or EOS clients.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from mount_core import bind
from mount_core.backends.base import Backend
from mount_core.errors import MountFailed, MountTimeout, NotFound, Unavailable
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.spec import VolumeSpec

FSTYPE = "fuse.hepvol"
FSNAME_PREFIX = "hepvol:"


class LocalBackend(Backend):
    name = "local"

    def __init__(self, mount_root: str, root: str, state_dir: str, timeout: float) -> None:
        super().__init__(mount_root)
        self.root = root
        self.run_dir = os.path.join(state_dir, "run")
        self.log_dir = os.path.join(state_dir, "logs")
        self.timeout = timeout

    def source_dir(self, spec: VolumeSpec) -> str:
        """The directory serving ``spec``; raises NotFound when it does not exist."""
        if spec.backend == "cvmfs":
            if spec.repository is None:
                name = ""
            elif spec.tag:
                name = f"{spec.repository}@{spec.tag}"
            elif spec.hash:
                name = f"{spec.repository}#{spec.hash}"
            elif spec.date or spec.client_config:
                raise Unavailable(
                    "the local backend serves tags and hashes only; date pins and clientConfig "
                    'need the real client (cvmfs.client = "cvmfs2")'
                )
            else:
                name = spec.repository
        else:
            name = spec.instance or ""
        path = os.path.join(self.root, name) if name else self.root
        if not os.path.isdir(path):
            raise NotFound(
                f"{spec.backend} {spec.source} is not available on this node "
                f"(no directory {path} under the local root)"
            )
        return path

    def pidfile(self, path: str) -> str:
        return os.path.join(self.run_dir, os.path.basename(path) + ".pid")

    def mount(self, spec: VolumeSpec, path: str) -> None:
        import subprocess  # here: a FlexVolume call on a mounted volume never needs it

        source = self.source_dir(spec)
        for directory in (self.run_dir, self.log_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        os.makedirs(path, mode=0o755, exist_ok=True)
        pidfile = self.pidfile(path)
        command = [
            sys.executable, "-m", "mount_core.backends.localfs",
            "--fsname", FSNAME_PREFIX + spec.key,
            "--pidfile", pidfile,
            "--log", os.path.join(self.log_dir, f"localfs-{spec.key}.log"),
            source, path,
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                text=True,
            )
        except subprocess.TimeoutExpired:
            self._kill(pidfile)
            bind.unmount(path, lazy=True)
            raise MountTimeout(
                f"the local FUSE server for {spec.source} was not ready within "
                f"{self.timeout:g} s (mount_timeout_seconds)"
            ) from None
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise MountFailed(f"cannot mount {spec.source}: {reason}")
        entry = MountTable().at(path)
        if entry is None or not self.owns(entry):
            raise MountFailed(
                f"cannot mount {spec.source}: the server reported ready but {path} is not mounted"
            )

    def unmount(self, path: str) -> None:
        try:
            bind.unmount(path)
        except OSError:
            bind.unmount(path, lazy=True)
        # The server exits when its mount goes; a dead or hung one is cleared here.
        self._kill(self.pidfile(path))

    def _kill(self, pidfile: str) -> None:
        try:
            with open(pidfile) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"mount_core.backends.localfs" in handle.read():
                os.kill(pid, signal.SIGKILL)
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
