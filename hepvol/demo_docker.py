"""The Docker part of ``hepvol demo``: the commands CERN's introductions to these
plugins show, run for real.

When no Docker engine answers (``$DOCKER_HOST`` or the default socket), a private
one is started (:mod:`hepvol.engine`), so that a fresh machine shows it too. A tiny
busybox image is imported (no registry is reachable), then::

    docker volume create -d cvmfs --name sample.hepvol.org
    docker run -it --rm -v sample.hepvol.org:/cvmfs/sample.hepvol.org IMAGE ls /cvmfs/sample.hepvol.org/
    docker run --rm --volume-driver cvmfs -v sample.hepvol.org:/cvmfs/sample.hepvol.org IMAGE cat ...

(``-t`` only when stdin is a terminal). Everything it made is removed on exit: the
volume, the image it imported, the private engine with its directories and sockets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docker_plugin import demo as plugin_demo
from docker_plugin.settings import PLUGIN_DIR
from hepvol.engine import EngineError, PrivateEngine, busybox_archive
from mount_core.config import Config

IMAGE = "hepvol-demo-busybox:latest"
SAMPLE = "sample.hepvol.org"


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)  # fmt: skip


def engine_available() -> bool:
    """True when a Docker engine answers at ``$DOCKER_HOST`` (or the default socket)."""
    if shutil.which("docker") is None:
        return False
    with contextlib.suppress(subprocess.TimeoutExpired):
        return _docker("version", timeout=10).returncode == 0
    return False


def _show(argv: list[str]) -> bool:
    """Print ``$ argv`` and run it, its output indented below (at a terminal, ``-it``
    commands write to it themselves). True when it succeeded."""
    print("$ " + " ".join(argv), flush=True)
    try:
        if "-it" in argv:
            return subprocess.run(argv, timeout=120, check=False).returncode == 0
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        print("  no answer within 120 s")
        return False
    text = result.stdout if result.returncode == 0 else result.stderr
    for line in text.strip().splitlines():
        print("  " + line)
    return result.returncode == 0


def _remove_volume(name: str, timeout: float = 30) -> None:
    """``docker volume rm``, retried while dockerd still lets go of it (``--rm`` returns
    before the container's Unmount reaches the plugin); best effort: the plugin and
    the engine are stopped after it whatever happens."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            listed = _docker("volume", "ls", "-q", timeout=30).stdout.split()
            if name not in listed or _docker("volume", "rm", name, timeout=60).returncode == 0:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    except subprocess.TimeoutExpired:
        pass
    print(f"could not remove the Docker volume {name}: the engine did not let go of it")


def _import_image() -> bool:
    """Import the busybox image into the engine at ``$DOCKER_HOST``; True when this run
    imported it (and so removes it again)."""
    if _docker("image", "inspect", IMAGE).returncode == 0:
        return False
    scratch = Path(tempfile.mkdtemp(prefix="hv-demo-image-"))
    try:
        imported = _docker("import", str(busybox_archive(scratch)), IMAGE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if imported.returncode != 0:
        raise EngineError(f"cannot import the demo image: {imported.stderr.strip()}")
    return True


def show(config: Config, stack: contextlib.ExitStack, driver: str = "cvmfs") -> bool:
    """The Docker walk-through; what it starts is stopped by ``stack``. True when every
    command worked."""
    engine = None
    if not engine_available():
        engine = PrivateEngine.create(prefix="hv-demo-dockerd-")
        stack.callback(engine.destroy)
        print(f"no Docker engine answers here: starting a private one in {engine.root} …",
              flush=True)  # fmt: skip
        try:
            engine.start()
        except EngineError as exc:
            print(f"  {exc}")
            return False
        os.environ["DOCKER_HOST"] = engine.host  # for the plugin and every docker command
    process = plugin_demo.start(config, driver)
    stack.callback(plugin_demo.stop, process)
    print(f"Docker volume plugin {driver!r} on {PLUGIN_DIR}/{driver}.sock")
    if _import_image() and engine is None:
        stack.callback(_docker, "image", "rm", IMAGE)
    stack.callback(_remove_volume, SAMPLE)
    path = f"/cvmfs/{SAMPLE}"
    interactive = "-it" if sys.stdin.isatty() else "-i"
    return all(
        _show(argv)
        for argv in (
            ["docker", "volume", "create", "-d", driver, "--name", SAMPLE],
            ["docker", "run", interactive, "--rm", "-v", f"{SAMPLE}:{path}", IMAGE, "ls", path + "/"],
            ["docker", "run", "--rm", "--volume-driver", driver, "-v", f"{SAMPLE}:{path}", IMAGE,
             "cat", f"{path}/README"],
        )
    )  # fmt: skip
