"""The Docker plugin in ``make run``: start it on a configuration, show ``docker run -v``.

:func:`start` runs ``hepvol docker-plugin`` on the world of a
:class:`~mount_core.config.Config` such as the demo's (its directories given as
flags, as the CSI part does). :func:`show_docker_run` then, when a Docker engine answers, imports a
tiny busybox image (no registry needed) and reads a file of a repository through
``docker run -v REPO:/cvmfs/REPO --volume-driver DRIVER``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from docker_plugin.settings import PLUGIN_DIR
from mount_core.config import Config
from mount_core.errors import MountFailed

IMAGE = "hepvol-demo-base:latest"


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def start(config: Config, driver: str = "cvmfs", timeout: float = 30) -> subprocess.Popen[bytes]:
    """Start the plugin serving ``driver`` (a CVMFS driver) and wait until it answers."""
    socket_path = os.path.join(PLUGIN_DIR, f"{driver}.sock")
    command = [
        sys.executable, "-m", "hepvol", "--log-level", config.log_level,
        "--state-dir", config.state_dir, "--mount-root", config.mount_root,
        "--local-root", config.local.root, "--target-root", config.target_roots[0],
        "docker-plugin", "--driver", "cvmfs", "--name", driver, "--socket", socket_path,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not _answers(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise MountFailed(f"the Docker plugin did not start on {socket_path}")
        time.sleep(0.1)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the plugin gracefully (its backing mounts stay until released)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def engine_available() -> bool:
    """True when a Docker engine answers at ``$DOCKER_HOST`` (or the default socket)."""
    if shutil.which("docker") is None:
        return False
    return _docker("version", timeout=10).returncode == 0


def _ensure_image() -> None:
    if _docker("image", "inspect", IMAGE).returncode == 0:
        return
    busybox = shutil.which("busybox")
    if busybox is None:
        raise MountFailed("busybox is not installed: cannot build the demo image")
    with tempfile.TemporaryDirectory(prefix="hepvol-demo-image-") as root:
        os.makedirs(os.path.join(root, "rootfs", "bin"))
        shutil.copy(busybox, os.path.join(root, "rootfs", "bin", "busybox"))
        for tool in ("sh", "ls", "cat"):
            os.symlink("busybox", os.path.join(root, "rootfs", "bin", tool))
        archive = os.path.join(root, "rootfs.tar")
        subprocess.run(["tar", "-C", os.path.join(root, "rootfs"), "-cf", archive, "."], check=True)
        result = _docker("import", archive, IMAGE)
        if result.returncode != 0:
            raise MountFailed(f"cannot import the demo image: {result.stderr.strip()}")


def show_docker_run(driver: str, repository: str, path: str = "README") -> tuple[list[str], str]:
    """Read ``path`` of ``repository`` in a container; (command line, output or error).

    The container is removed with a separate ``docker rm`` rather than ``--rm``,
    which returns before dockerd has let go of the volume.
    """
    _ensure_image()
    name = f"hepvol-demo-{os.getpid()}"
    command = ["docker", "run", "--name", name, "--network", "none", "-v",
               f"{repository}:/cvmfs/{repository}", "--volume-driver", driver,
               IMAGE, "cat", f"/cvmfs/{repository}/{path}"]  # fmt: skip
    try:
        result = _docker(*command[1:])
    finally:
        _docker("rm", "-f", name)
    return command, result.stdout if result.returncode == 0 else result.stderr


def remove_volume(driver: str, name: str) -> None:
    """Forget the demo's volume in dockerd before the plugin stops.

    A volume whose driver has gone makes every later ``docker volume ls`` wait for
    the vanished socket. Only an existing volume is removed: dockerd asks every
    driver it ever used about an unknown name.
    """
    if shutil.which("docker") is None:
        return
    try:
        listed = _docker("volume", "ls", "-q", "-f", f"driver={driver}", timeout=30)
        if name in listed.stdout.split():
            _docker("volume", "rm", name, timeout=60)
    except subprocess.TimeoutExpired:
        return  # best effort: the plugin must still be stopped by the caller
