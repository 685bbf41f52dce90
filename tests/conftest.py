"""Shared fixtures: a private hepvol world per test, torn down even when a test fails.

``hepvol_env`` gives each test its own state dir, mount root, target root and
local repositories (with a sample repository ``sample.hepvol.org`` and its tag
``@v1``). Its finalizer kills every FUSE server the test started and detaches
every mount left under the test's directory, so one failing test cannot leave
mounts behind for the next. ``make test`` also runs the whole suite inside a
private mount namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mount_core import bind
from mount_core.config import Config, LocalConfig, dumps
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable

if TYPE_CHECKING:
    from tests.e2e.dockerd import Dockerd

SAMPLE = "sample.hepvol.org"
REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("the hepvol suite needs root (FUSE and mount(2)); run it with `make test`", 2)


@dataclass
class HepvolEnv:
    """One test's hepvol world."""

    workdir: Path
    config: Config

    @property
    def targets(self) -> Path:
        return Path(self.config.target_roots[0])

    @property
    def repos(self) -> Path:
        return Path(self.config.local.root)

    def make_repo(self, name: str, files: dict[str, str]) -> Path:
        root = self.repos / name
        for relative, content in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        return root

    def manager(self, **kwargs: object) -> MountManager:
        return MountManager(self.config, **kwargs)  # type: ignore[arg-type]

    def environ(self) -> dict[str, str]:
        """Environment that points a child hepvol process at this world."""
        env = dict(os.environ)
        env.update(
            HEPVOL_CONFIG=str(self.workdir / "config.toml"),
            PYTHONPATH=str(REPO),
        )
        return env

    def server_pids(self) -> list[int]:
        pids = []
        run = Path(self.config.state_dir) / "run"
        for pidfile in run.glob("*.pid") if run.exists() else []:
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(pidfile.read_text()))
        return pids


def write_config(workdir: Path, config: Config) -> None:
    (workdir / "config.toml").write_text(dumps(config))


def teardown_world(workdir: Path, pids: list[int]) -> None:
    """Kill FUSE servers and detach every mount under ``workdir`` (deepest first)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(3):
        entries = list(MountTable().under(str(workdir)))
        if not entries:
            break
        for entry in sorted(entries, key=lambda e: -len(e.mount_point)):
            with contextlib.suppress(OSError):
                bind.unmount(entry.mount_point, lazy=True)
    leftovers = subprocess.run(
        ["pgrep", "-f", f"mount_core.backends.localfs.*{workdir}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    for pid in leftovers:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def make_world(workdir: Path, **settings: Any) -> HepvolEnv:
    """A hepvol world under ``workdir`` with the sample repository and its tag v1."""
    for name in ("state", "mounts", "targets", "repositories"):
        (workdir / name).mkdir(parents=True)
    config = Config(
        state_dir=str(workdir / "state"),
        mount_root=str(workdir / "mounts"),
        target_roots=(str(workdir / "targets"),),
        local=LocalConfig(root=str(workdir / "repositories")),
        **settings,
    ).validate()
    env = HepvolEnv(workdir, config)
    env.make_repo(SAMPLE, {"README": "sample trunk\n", "data/events.csv": "run,event\n1,1\n"})
    env.make_repo(f"{SAMPLE}@v1", {"README": "sample v1\n"})
    write_config(workdir, config)
    return env


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """One private Docker engine for the whole run (tests/e2e/dockerd.py)."""
    from tests.e2e.dockerd import run_engine

    yield from run_engine()


#: The node image: built once per run (tests/e2e and tests/k8s share it).
NODE_IMAGE = "hepvol-node:local"


@pytest.fixture(scope="session")
def node_image(dockerd: Dockerd, request: pytest.FixtureRequest) -> str:
    """``images/local/build`` into the run's engine (the Debian base is cached in .tools/)."""
    result = subprocess.run([str(REPO / "images" / "local" / "build"), NODE_IMAGE],
                            env=dockerd.env(), capture_output=True, text=True, timeout=900,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"image build failed:\n{result.stdout}\n{result.stderr}"
    # Size and build time go to the terminal, past pytest's capture.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in result.stdout.splitlines():
            print(f"\n[images/local/build] {line}")
    return NODE_IMAGE


@pytest.fixture
def hepvol_env(tmp_path: Path) -> Iterator[HepvolEnv]:
    workdir = tmp_path / "world"
    env = make_world(
        workdir,
        health_interval_seconds=0.5,
        probe_timeout_seconds=1.0,
        mount_timeout_seconds=20.0,
        lock_timeout_seconds=60.0,
    )
    try:
        yield env
    finally:
        teardown_world(workdir, env.server_pids())


def readme_errno(directory: str | Path) -> int:
    """errno of reading ``<directory>/README`` (0 when it reads): ENOTCONN for a dead server."""
    try:
        Path(directory, "README").read_text()
    except OSError as exc:
        return exc.errno or 0
    return 0


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def hepvol_cli(env: HepvolEnv, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``hepvol`` CLI in a child process against ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "hepvol", *args],
        env=env.environ(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


# A stand-in for a daemon: publishes one volume, says so, then just lives on.
PUBLISHING_DAEMON = """
import sys, time
from mount_core.config import load
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec
manager = MountManager(load())
spec = VolumeSpec(backend="cvmfs", repository=sys.argv[1])
manager.publish(spec, Consumer("csi", sys.argv[2]), sys.argv[2])
print("published", flush=True)
time.sleep(600)
"""


def start_publishing_daemon(
    env: HepvolEnv, target: str, wrapper: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """Run :data:`PUBLISHING_DAEMON` (behind ``wrapper``) and wait until it published."""
    daemon = subprocess.Popen(
        [*wrapper, sys.executable, "-c", PUBLISHING_DAEMON, SAMPLE, target],
        env=env.environ(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert daemon.stdout is not None and daemon.stdout.readline() == "published\n"
    return daemon
