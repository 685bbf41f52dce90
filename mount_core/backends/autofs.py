"""The automount daemon that hepvol owns over the CVMFS root (``cvmfs.automount``).

hepvol writes a master map with one indirect entry, ``<root> program:<map>``,
where the map is :mod:`mount_core.backends.cvmfs_automap` installed executable in
the state dir, and starts ``automount`` on it. automount daemonises itself, so it
outlives hepvol; a later hepvol adopts a running one (found by its pid file).
hepvol never stops it: SIGTERM would unmount the autofs root under every
container using it, while a SIGKILL (by an operator, or a crash) leaves the root
in place for the next automount, which hepvol starts when it finds none.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from mount_core import bind
from mount_core.atomicfile import write_atomically
from mount_core.backends import cvmfs_automap
from mount_core.backends.external import run_client
from mount_core.errors import MountFailed, MountTimeout
from mount_core.locks import LockDir
from mount_core.logs import event
from mount_core.mountinfo import MountTable
from mount_core.statedir import StateDir

log = logging.getLogger("hepvol.autofs")


class Automounter:
    """The ``automount`` process serving one indirect autofs root."""

    def __init__(
        self,
        root: str,
        program: str,
        idle_timeout: int,
        state_dir: str,
        wait: float,
        map_program: str = "",
    ) -> None:
        self.root = os.path.normpath(root)
        self.program = program
        self.idle_timeout = idle_timeout
        self.wait = wait
        self.dir = StateDir(state_dir).autofs
        self.master = os.path.join(self.dir, "auto.master")
        #: The client's own program map (/etc/auto.cvmfs) when configured, else ours.
        self.own_map = not map_program
        self.map = map_program or os.path.join(self.dir, "auto.cvmfs")
        self.pidfile = os.path.join(self.dir, "automount.pid")
        self.locks = LockDir(state_dir)
        #: automount must outlive a containerised daemon like the FUSE servers.
        self.server_cgroups: tuple[str, ...] = ()

    # Files --------------------------------------------------------------------

    def _install(self) -> None:
        """Write the program map and the master map (atomically, executable map)."""
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        if self.own_map:
            with open(cvmfs_automap.__file__, encoding="utf-8") as handle:
                body = handle.read()
            # The interpreter that has mount_core installed runs the map.
            write_atomically(self.map, f"#!{sys.executable} -I\n{body}", 0o755)
        write_atomically(
            self.master, f"{self.root} program:{self.map} --timeout={self.idle_timeout}\n", 0o644
        )

    # The daemon ---------------------------------------------------------------

    def pid(self) -> int | None:
        """PID of the automount serving our master map, if one is running."""
        try:
            with open(self.pidfile) as handle:
                pid = int(handle.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except (OSError, ValueError):
            return None
        if os.fsencode(self.master) in argv and os.path.basename(argv[0]) == b"automount":
            return pid
        return None

    def root_mounted(self, table: MountTable | None = None) -> bool:
        entry = (table or MountTable()).at(self.root)
        return entry is not None and entry.fstype == "autofs"

    def ensure(self) -> None:
        """Have automount serve the root: adopt a running one or start it."""
        if self.pid() is not None and self.root_mounted():
            return
        # One starter at a time across hepvol's processes: a second automount
        # would refuse to run ("already running") and look like a foreign one.
        with self.locks.hold("automount", self.wait):
            if self.pid() is not None and self.root_mounted():
                return
            self._install()
            os.makedirs(self.root, mode=0o755, exist_ok=True)
            adopting = self.root_mounted()
            result = run_client(
                [self.program, "-p", self.pidfile, self.master],
                timeout=self.wait,
                what=self.root,
                server_cgroups=self.server_cgroups,
            )
            said = (result.stderr.strip().splitlines() or [""])[-1]
            if "already running" in said:
                # automount allows one daemon per node (its /run/autofs-running flag).
                raise MountFailed(
                    f"cannot start automount for {self.root}: {said!r}; cvmfs.automount needs "
                    "the node's own autofs service stopped (systemctl disable --now autofs)"
                )
            if result.returncode != 0:
                raise MountFailed(f"cannot start automount for {self.root}: {said or 'no message'}")
            deadline = time.monotonic() + self.wait
            while not (self.root_mounted() and self.pid() is not None):
                if time.monotonic() > deadline:
                    raise MountTimeout(
                        f"automount did not mount {self.root} within {self.wait:g} s"
                        + (f": {said!r}" if said else "")
                    )
                time.sleep(0.05)
            # Binds of the root become its slaves, so repositories mounted later
            # propagate into them (without it they would give ELOOP).
            bind.set_propagation(self.root, bind.MS_SHARED)
            event(log, "automount adopted the autofs root" if adopting else "automount started",
                  volume=None, root=self.root, pid=self.pid())  # fmt: skip

    def trigger(self, name: str) -> str:
        """Make autofs mount ``<root>/<name>`` and return that path.

        The directory is opened, not stat-ed: stat(2) never triggers autofs on an
        existing directory (one left behind by a detached mount). The open blocks
        while the helper runs, so it is done in a worker thread bounded by the
        mount timeout.
        """
        path = os.path.join(self.root, name)
        box: list[BaseException | None] = []

        def look() -> None:
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
                box.append(None)
            except OSError as exc:
                box.append(exc)

        worker = threading.Thread(target=look, daemon=True)
        worker.start()
        worker.join(self.wait)
        if worker.is_alive():
            raise MountTimeout(f"autofs did not mount {path} within {self.wait:g} s")
        error = box[0]
        entry = MountTable().at(path)
        if error is not None or entry is None:
            why = error.strerror if isinstance(error, OSError) else "nothing was mounted"
            raise MountFailed(
                f"autofs could not mount {path}: {why} (the mount helper's reason is in "
                "automount's log: journalctl -u autofs or syslog)"
            )
        return path
