"""``hepvol watch``: the node daemon that repairs FlexVolume mounts and serves metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexvolume import install
from tests.conftest import SAMPLE, HepvolEnv, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def readme(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@pytest.fixture
def watch(hepvol_env: HepvolEnv) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "watch", "--metrics-port", str(port),
         "--metrics-address", "127.0.0.1"],
        env=hepvol_env.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr:
            print(process.stderr.read().decode())  # the daemon's log, shown when a test fails
            process.stderr.close()


def test_watch_repairs_a_dead_mount_and_reports_it(
    hepvol_env: HepvolEnv, watch: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = watch
    plugins = hepvol_env.workdir / "plugins"
    install.install(str(plugins), str(hepvol_env.workdir / "config.toml"))
    pod = hepvol_env.targets / "pods" / "uid" / "volumes" / "cern~cvmfs" / "cvmfs"
    pod.mkdir(parents=True, mode=0o750)
    options = {
        "repository": SAMPLE,
        "kubernetes.io/pod.name": "p",
        "kubernetes.io/pod.namespace": "n",
    }
    result = subprocess.run(
        [install.driver_path(str(plugins), "cvmfs"), "mount", str(pod), json.dumps(options)],
        env={}, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert json.loads(result.stdout)["status"] == "Success", result

    assert wait_for(lambda: 'hepvol_consumers{kind="flex"} 1.0' in scrape(port), timeout=20)
    assert 'hepvol_backing_mounts{backend="local",condition="healthy"} 1.0' in scrape(port)

    [pid] = hepvol_env.server_pids()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: readme(pod / "README") is None)
    assert wait_for(lambda: readme(pod / "README") == "sample trunk\n", timeout=20), (
        "the pod sees it again"
    )
    assert hepvol_env.server_pids() != [pid]
    healthy = 'hepvol_backing_mounts{backend="local",condition="healthy"} 1.0'
    assert wait_for(lambda: healthy in scrape(port), timeout=10)
    assert 'hepvol_consumers{kind="flex"} 1.0' in scrape(port)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert readme(pod / "README") == "sample trunk\n", "stopping the daemon leaves mounts up"
