"""A private Docker engine: its own containerd and dockerd, data root, exec root and socket.

For ``hepvol demo`` on a machine where no engine answers, and for the Docker tests:
``dockerd --iptables=false --bridge=none`` (nothing on the host's network changes)
with a containerd of its own (a system one would run its shims outside the caller's
mount namespace, where they could not see its mounts), and a tiny image imported
from a busybox-static root file system (no registry is reachable). :meth:`destroy`
stops both daemons and removes everything under the root, mounts included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mount_core import bind
from mount_core.errors import Unavailable
from mount_core.mountinfo import MountTable

#: The busybox applets the imported image links.
TOOLS = ("sh", "ls", "cat", "echo", "sleep", "test", "true", "wc")


class EngineError(Unavailable):
    """A private engine did not start or refused a command; the message quotes it."""


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def busybox_archive(directory: Path) -> Path:
    """``<directory>/rootfs.tar``: busybox-static as /bin/busybox and a few applet links
    (for ``docker import``; no registry is reachable)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise EngineError("busybox is not installed: install busybox-static")
    rootfs = directory / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in TOOLS:
        with contextlib.suppress(FileExistsError):
            (rootfs / "bin" / tool).symlink_to("busybox")
    archive = directory / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
    return archive


@dataclass
class PrivateEngine:
    """One private Docker engine, driven through the real ``docker`` CLI."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None
    containerd_address: str = ""
    #: Keep containers running while dockerd is down (the fault suite restarts it).
    live_restore: bool = False

    @classmethod
    def create(cls, prefix: str = "hv-dockerd-", live_restore: bool = False) -> PrivateEngine:
        # A short path: containerd's sockets live under the exec root (108-byte limit).
        return cls(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")), live_restore=live_restore)

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host)

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine; ``check`` raises with its stderr."""
        result = subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, timeout=timeout,
            check=False, text=True,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise self.failure(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def failure(self, message: str) -> Exception:
        """The exception a failed command raises (tests make it an AssertionError)."""
        return EngineError(message)

    def _log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / name).read_text()[-2000:]
        return ""

    def _start_containerd(self) -> str:
        base = self.root / "containerd"
        base.mkdir(exist_ok=True)
        address = base / "containerd.sock"
        (base / "config.toml").write_text(
            f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\naddress = "{address}"\n[ttrpc]\naddress = "{address}.ttrpc"\n'
            f'[debug]\naddress = "{base}/debug.sock"\n[metrics]\naddress = ""\n'
        )
        with open(self.root / "containerd.log", "ab") as log:
            self.containerd = subprocess.Popen(
                ["containerd", "--config", str(base / "config.toml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        if not _wait(address.exists, 30):
            raise EngineError("containerd did not start: " + self._log_tail("containerd.log"))
        return str(address)

    def start(self) -> None:
        if shutil.which("dockerd") is None or shutil.which("containerd") is None:
            raise EngineError("dockerd is not installed: install docker.io (`make setup` does)")
        if self.containerd is None:
            self.containerd_address = self._start_containerd()
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "dockerd", "--containerd", self.containerd_address,
                    "--data-root", str(self.root / "data"),
                    "--exec-root", str(self.root / "exec"), "-H", self.host,
                    "--pidfile", str(self.root / "docker.pid"),
                    "--iptables=false", "--ip6tables=false", "--bridge=none",
                    f"--live-restore={str(self.live_restore).lower()}", "--log-level=warn",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        ready = _wait(lambda: self.docker("version", check=False).returncode == 0, 60, 0.2)
        if not ready:
            raise EngineError("dockerd did not start: " + self._log_tail("dockerd.log"))

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def stop_all(self) -> None:
        """Stop dockerd, then its containerd."""
        self.stop()
        if self.containerd is not None:
            _stop(self.containerd)
            self.containerd = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove_containers(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)

    def import_busybox(self, tag: str) -> None:
        """Import ``tag``: a root file system of busybox-static and a few applet links."""
        archive = busybox_archive(self.root / "image")
        try:
            self.docker("import", str(archive), tag)
        finally:
            shutil.rmtree(self.root / "image", ignore_errors=True)

    def destroy(self) -> None:
        """Remove containers, stop both daemons, detach what is mounted below the root
        (deepest first) and remove the root."""
        with contextlib.suppress(Exception):
            self.remove_containers()
        self.stop_all()
        entries = MountTable().under(str(self.root))
        for entry in sorted(entries, key=lambda e: -len(e.mount_point)):
            with contextlib.suppress(OSError):
                bind.unmount(entry.mount_point, lazy=True)
        shutil.rmtree(self.root, ignore_errors=True)
