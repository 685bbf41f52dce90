"""A real Docker engine and a real hepvol plugin daemon, for the Docker tests.

``run_engine`` (the session fixture ``dockerd`` in tests/conftest.py): the private
engine of hepvol/engine.py (the one ``hepvol demo`` starts) with a tiny image
``hepvol-test-base`` imported from busybox-static. It can be restarted. ``docker_plugin`` (per test): a hepvol world and ``hepvol
docker-plugin`` serving it under a driver name unique to the run, in
``/run/docker/plugins`` where dockerd finds it. Finalizers remove containers,
stop the daemons and detach every mount, even when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from hepvol.engine import PrivateEngine
from tests.conftest import REPO, HepvolEnv, teardown_world, wait_for, write_config

IMAGE = "hepvol-test-base:latest"
PLUGIN_DIR = Path("/run/docker/plugins")
_names = itertools.count()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("plugin", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def call(
    path: Path, method: str, body: dict[str, object] | None = None
) -> tuple[int, dict[str, object]]:
    """POST ``/<method>`` to a plugin socket; (HTTP status, JSON reply)."""
    connection = _UnixConnection(str(path))
    try:
        connection.request("POST", f"/{method}", json.dumps(body or {}))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class Dockerd(PrivateEngine):
    """The engine of hepvol's own (hepvol/engine.py); a failed command fails the test."""

    def failure(self, message: str) -> Exception:
        return AssertionError(message)


def run_engine(*, live_restore: bool = False) -> Iterator[Dockerd]:
    """A started engine with the test image; stopped and removed afterwards."""
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed: `make test` installs docker.io")
    engine = Dockerd(
        PrivateEngine.create(live_restore=live_restore).root, live_restore=live_restore
    )
    try:
        engine.start()
        engine.import_busybox(IMAGE)
        yield engine
    finally:
        engine.destroy()


@dataclass
class Plugin:
    """One ``hepvol docker-plugin`` daemon serving a hepvol world under a unique driver name."""

    env: HepvolEnv
    engine: Dockerd
    driver: str
    backend: str
    process: subprocess.Popen[bytes] | None = None
    options: tuple[str, ...] = ()

    @property
    def socket(self) -> Path:
        return PLUGIN_DIR / f"{self.driver}.sock"

    @property
    def log(self) -> Path:
        return self.env.workdir / f"plugin-{self.driver}.log"

    def start(self) -> None:
        environ = self.env.environ()
        environ["DOCKER_HOST"] = self.engine.host
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hepvol", "docker-plugin", "--driver",
                 self.backend, "--name", self.driver, *self.options],
                env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO, start_new_session=True,
            )  # fmt: skip
        if not wait_for(lambda: self.answers(), 30):
            raise RuntimeError(f"the plugin did not start: {self.log.read_text()[-2000:]}")

    def answers(self) -> bool:
        try:
            return call(self.socket, "Plugin.Activate")[0] == 200
        except OSError:
            return False

    def call(self, method: str, body: dict[str, object] | None = None) -> dict[str, object]:
        """One protocol call, as dockerd makes it; returns the reply's JSON."""
        return call(self.socket, method, body)[1]

    def pids(self) -> list[int]:
        """The plugin's processes: the gunicorn master and its worker."""
        if self.process is None:
            return []
        found = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            found += [int(p) for p in children.read_text().split()]
        return found

    def kill9(self) -> None:
        """``kill -9`` every process of the plugin, as a crash would."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill9()
        self.process = None

    def backings(self) -> list[dict[str, object]]:
        """``hepvol status --json``: backing mounts with their consumers."""
        result = subprocess.run(
            [sys.executable, "-m", "hepvol", "status", "--json"],
            env=self.env.environ(), capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        found: list[dict[str, object]] = json.loads(result.stdout)["backing_mounts"]
        return found

    def run(self, volume_args: list[str], *command: str, check: bool = True) -> str:
        """``docker run --rm`` with the given volume arguments; returns stdout."""
        result = self.engine.docker(
            "run", "--rm", "--network", "none", *volume_args, IMAGE, *command, check=check
        )
        return result.stdout if check else result.stderr


def make_plugin(
    hepvol_env: HepvolEnv,
    engine: Dockerd,
    backend: str = "cvmfs",
    idle: float = 0.0,
    options: tuple[str, ...] = (),
) -> Iterator[Plugin]:
    """Start a plugin for a test; the generator's finalizer cleans up everything."""
    if idle:
        hepvol_env.config = replace(hepvol_env.config, idle_unmount_seconds=idle)
        write_config(hepvol_env.workdir, hepvol_env.config)
    driver = f"hepvoltest{os.getpid()}x{next(_names)}"
    plugin = Plugin(hepvol_env, engine, driver, backend, options=options)
    try:
        plugin.start()
        yield plugin
    finally:
        with contextlib.suppress(Exception):
            engine.remove_containers()
        with contextlib.suppress(Exception):
            # Holds a test took by hand would block the removes below.
            for row in hepvol_env.manager().ledger.consumers():
                volume = row.info.get("volume")
                plugin.call("VolumeDriver.Unmount", {"Name": volume, "ID": row.consumer[7:]})
        with contextlib.suppress(Exception):
            # A volume left in dockerd would make every later unfiltered
            # `docker volume ls` wait 15 s for this plugin's vanished socket.
            for name in engine.docker("volume", "ls", "-q", "-f", f"driver={driver}",
                                      check=False).stdout.split():  # fmt: skip
                engine.docker("volume", "rm", "-f", name, check=False)
        plugin.stop()
        with contextlib.suppress(FileNotFoundError):
            plugin.socket.unlink()
        teardown_world(hepvol_env.workdir, hepvol_env.server_pids())
