"""The Docker plugin in ``make run``: start it on a configuration, stop it.

:func:`start` runs ``hepvol docker-plugin`` on the world of a
:class:`~mount_core.config.Config` such as the demo's (its directories given as
flags, as the CSI part does), its JSON log lines in a file, not between the
walk-through's lines. The walk-through itself is hepvol/demo_docker.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from docker_plugin.settings import PLUGIN_DIR
from mount_core.config import Config
from mount_core.errors import MountFailed


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def start(
    config: Config, driver: str = "cvmfs", timeout: float = 30, log: str | None = None
) -> subprocess.Popen[bytes]:
    """Start the plugin serving ``driver`` (a CVMFS driver) and wait until it answers;
    its output goes to ``log`` (default ``<state dir>/logs/docker-plugin-<driver>.log``)."""
    socket_path = os.path.join(PLUGIN_DIR, f"{driver}.sock")
    command = [
        sys.executable, "-m", "hepvol", "--log-level", config.log_level,
        "--state-dir", config.state_dir, "--mount-root", config.mount_root,
        "--local-root", config.local.root, "--target-root", config.target_roots[0],
        "docker-plugin", "--driver", "cvmfs", "--name", driver, "--socket", socket_path,
    ]  # fmt: skip
    log = log or os.path.join(config.state_dir, "logs", f"docker-plugin-{driver}.log")
    os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=output, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not _answers(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise MountFailed(f"the Docker plugin did not start on {socket_path} (see {log})")
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
