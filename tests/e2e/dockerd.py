"""A real Docker engine and a real hepvol plugin daemon, for the Docker tests.

``run_engine`` (the session fixture ``dockerd`` in tests/conftest.py): a private dockerd (own data root, exec root and socket;
``--iptables=false --bridge=none``) with a tiny image ``hepvol-test-base`` imported
from a busybox-static root file system (no registry is reachable). It can be
restarted. ``docker_plugin`` (per test): a hepvol world and ``hepvol
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
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mount_core import bind
from mount_core.mountinfo import MountTable
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


@dataclass
class Dockerd:
    """One private Docker engine, driven through the real ``docker`` CLI."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None
    containerd_address: str = ""
    #: Keep containers running while dockerd is down (the fault suite restarts it).
    live_restore: bool = False

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host)

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine; ``check`` fails the test with its stderr."""
        result = subprocess.run(
            ["docker", *args], env=self.env(), capture_output=True, timeout=timeout,
            check=False, text=True,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _start_containerd(self) -> str:
        """A containerd of our own: dockerd would otherwise use a system one, whose
        shims run outside this test's mount namespace and cannot see its mounts."""
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
        if not wait_for(address.exists, 30):
            raise RuntimeError(
                "containerd did not start: " + (self.root / "containerd.log").read_text()[-2000:]
            )
        return str(address)

    def start(self) -> None:
        if self.containerd is None:
            self.containerd_address = self._start_containerd()
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - dockerd keeps it
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
        log.close()
        ready = wait_for(lambda: self.docker("version", check=False).returncode == 0, 60, 0.2)
        if not ready:
            raise RuntimeError(
                "dockerd did not start: " + (self.root / "dockerd.log").read_text()[-2000:]
            )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop_all(self) -> None:
        """Stop dockerd, then its containerd."""
        self.stop()
        if self.containerd is not None:
            self.containerd.terminate()
            try:
                self.containerd.wait(30)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait(10)
            self.containerd = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove_containers(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)


def _import_base_image(engine: Dockerd) -> None:
    rootfs = engine.root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in ("sh", "ls", "cat", "echo", "sleep", "test", "true", "wc"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    archive = engine.root / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
    engine.docker("import", str(archive), IMAGE)


def run_engine(*, live_restore: bool = False) -> Iterator[Dockerd]:
    """A started engine with the test image; stopped and removed afterwards."""
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed: `make test` installs docker.io")
    # Short path: containerd's sockets live under the exec root (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="hv-dockerd-", dir="/tmp"))
    engine = Dockerd(root, live_restore=live_restore)
    try:
        engine.start()
        _import_base_image(engine)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            engine.remove_containers()
        engine.stop_all()
        for entry in sorted(
            MountTable().under(str(engine.root)), key=lambda e: -len(e.mount_point)
        ):
            with contextlib.suppress(OSError):
                bind.unmount(entry.mount_point, lazy=True)
        shutil.rmtree(engine.root, ignore_errors=True)


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
