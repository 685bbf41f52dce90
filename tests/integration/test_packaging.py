"""``pip install .`` without extras gives working daemons.

The wheel is built from this checkout and installed, with no extras, into a
throw-away venv (dependencies as wheels from the package registry, kept in
/var/cache/hepvol/wheels);
that venv's own ``hepvol`` then serves the Docker plugin protocol and the CSI
gRPC services, from a directory where this checkout cannot be imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_driver.client import Client
from tests.conftest import REPO, HepvolEnv, wait_for
from tests.e2e.dockerd import call

pytestmark = pytest.mark.slow


#: Wheels of the dependencies, kept between runs (outside the clone, like the Go cache).
WHEELHOUSE = Path("/var/cache/hepvol/wheels")


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([*args, "--quiet"], capture_output=True, text=True, timeout=900,
                          check=False, cwd=cwd)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``pip install hepvol`` (no extras) from a wheel of this checkout."""
    base = tmp_path_factory.mktemp("packaging")
    pip = [sys.executable, "-m", "pip"]
    _pip(*pip, "wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", str(base), str(REPO),
         cwd=base)  # fmt: skip
    (wheel,) = base.glob("hepvol-*.whl")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    # The dependencies the wheel declares, from the registry the first time.
    _pip(*pip, "wheel", "--wheel-dir", str(WHEELHOUSE), "--find-links", str(WHEELHOUSE),
         str(wheel), cwd=base)  # fmt: skip
    venv.create(base / "venv", with_pip=True)
    _pip(str(base / "venv" / "bin" / "pip"), "install", "--no-index", "--no-compile",
         "--find-links", str(WHEELHOUSE), str(wheel), cwd=base)  # fmt: skip
    return base / "venv"


def _environ(env: HepvolEnv) -> dict[str, str]:
    environ = env.environ()
    environ.pop("PYTHONPATH")  # only what the venv installed
    return environ


@contextlib.contextmanager
def _daemon(argv: list[str], env: HepvolEnv, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, env=_environ(env), stdout=out, stderr=out,
                                   cwd=env.workdir, start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_plain_install_serves_docker_and_csi(plain_venv: Path, hepvol_env: HepvolEnv) -> None:
    hepvol = str(plain_venv / "bin" / "hepvol")
    where = subprocess.run([str(plain_venv / "bin" / "python"), "-c",
                            "import docker_plugin; print(docker_plugin.__file__)"],
                           env=_environ(hepvol_env), cwd=hepvol_env.workdir, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert where.stdout.startswith(str(plain_venv)), "the venv's copy, not this checkout"
    plugin_socket = hepvol_env.workdir / "plugin.sock"
    plugin_log = hepvol_env.workdir / "plugin.log"
    argv = [hepvol, "docker-plugin", "--driver", "cvmfs", "--name", f"hvpkg{os.getpid()}",
            "--socket", str(plugin_socket)]  # fmt: skip
    with _daemon(argv, hepvol_env, plugin_log) as plugin:
        answered = wait_for(lambda: _activates(plugin_socket), 60, 0.2)
        assert answered, f"exit {plugin.poll()}: {plugin_log.read_text()[-2000:]}"
    csi_log = hepvol_env.workdir / "csi.log"
    endpoint = f"unix://{hepvol_env.workdir}/csi.sock"
    argv = [hepvol, "csi", "--mode", "controller", "--endpoint", endpoint]
    with _daemon(argv, hepvol_env, csi_log) as csi:
        client = Client(endpoint)
        try:
            client.wait_ready(timeout=60)
        except Exception:
            raise AssertionError(f"exit {csi.poll()}: {csi_log.read_text()[-2000:]}") from None
        finally:
            client.close()
    assert "Traceback" not in plugin_log.read_text() + csi_log.read_text()


def _activates(socket_path: Path) -> bool:
    try:
        return call(socket_path, "Plugin.Activate") == (200, {"Implements": ["VolumeDriver"]})
    except OSError:
        return False
