"""The node daemon's side of the hand-over: serve FlexVolume calls on a Unix socket.

A node daemon that already holds a :class:`~mount_core.manager.MountManager`
(``hepvol watch``, ``hepvol csi`` in node mode) serves the launcher's calls
(:mod:`flexvolume.handoff`) at ``<state dir>/flexvolume.sock`` with the very code
the launcher would otherwise run in-process (:func:`flexvolume.driver.answer`), so
the two paths cannot drift. The socket is root's alone (the state dir is private,
the socket 0600, and the peer's uid is checked). A call from another mount
namespace is declined — a bind made here would not be where kubelet looks — and
the launcher then runs it itself. Each connection has a read deadline, so a
client that connects and sends nothing holds one thread for at most that long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading

from flexvolume.driver import Call, answer, encode
from flexvolume.handoff import DECLINED
from flexvolume.install import BACKENDS
from mount_core.logs import event
from mount_core.manager import MountManager
from mount_core.statedir import StateDir

#: sockaddr_un holds 108 bytes; a longer path cannot be served (the launcher then works alone).
_MAX_PATH = 107
_READ_TIMEOUT = 5.0
_MAX_REQUEST = 1 << 20

log = logging.getLogger("hepvol.flexvolume")


def socket_path(state_dir: str) -> str | None:
    """Where the daemon of ``state_dir`` serves, or None when that path is too long."""
    path = StateDir(state_dir).relay_socket
    return path if len(os.fsencode(path)) <= _MAX_PATH else None


class RelayServer:
    """Serves FlexVolume calls for every backend through one manager."""

    def __init__(self, manager: MountManager) -> None:
        self.manager = manager
        self.path = socket_path(manager.config.state_dir)
        self.sock: socket.socket | None = None
        self._namespace = _namespace(os.getpid())

    def start(self) -> bool:
        """Listen unless another daemon of this state dir already does; True when serving."""
        if self.path is None:
            event(log, "FlexVolume hand-over off: the state dir's path is too long", volume=None)
            return False
        if _answers(self.path):
            event(log, "another daemon serves FlexVolume calls", volume=None, socket=self.path)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead daemon's socket file
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound and listening under a temporary name first: a launcher that finds
        # the socket at its path is never refused in between.
        temporary = f"{self.path}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        umask = os.umask(0o177)
        try:
            sock.bind(temporary)
        finally:
            os.umask(umask)
        sock.listen(64)
        os.rename(temporary, self.path)
        self.sock = sock
        threading.Thread(target=self._accept, name="hepvol-flex-relay", daemon=True).start()
        event(log, "serving FlexVolume calls", volume=None, socket=self.path)
        return True

    def stop(self) -> None:
        if self.sock is None:
            return
        # Unlink first: a launcher arriving now finds no socket and works alone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path or "")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.sock = None

    def _accept(self) -> None:
        while (sock := self.sock) is not None:
            try:
                connection, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.settimeout(_READ_TIMEOUT)
                pid, uid, _gid = struct.unpack("3i", connection.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))  # fmt: skip
                request = _read(connection)
                if uid != 0 or request is None or _namespace(pid) != self._namespace:
                    connection.sendall(DECLINED)
                    return
                backend, *argv = request.decode("utf-8", "surrogateescape").split("\0")
                if backend not in BACKENDS:
                    connection.sendall(DECLINED)
                    return
                call = Call(backend, None, opened=(self.manager, log))
                result = answer(call, argv)
                status = b"1" if result["status"] == "Failure" else b"0"
                connection.sendall(status + encode(result))
            except OSError:
                return  # the launcher gave up (its bound) and runs the call itself


def _read(connection: socket.socket) -> bytes | None:
    chunks, size = [], 0
    while chunk := connection.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REQUEST:
            return None
    return b"".join(chunks)


def _namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True
