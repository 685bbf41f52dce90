"""FlexVolume calls handed to the node daemon, and the in-process path when it cannot answer.

The installed launcher is run as kubelet runs it (empty environment). Which path
served a call shows in the logs: the in-process path appends its lines to
``<state dir>/logs/flexvolume.log``, the daemon logs to its own stderr.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexvolume import install
from flexvolume.relay import socket_path
from tests.conftest import SAMPLE, HepvolEnv, wait_for

OPTIONS = json.dumps({"repository": SAMPLE, "kubernetes.io/pod.name": "p"})
BOUND = 2.0  # the launchers' reply bound in these tests


@pytest.fixture
def driver(hepvol_env: HepvolEnv) -> tuple[str, str]:
    """The installed cvmfs launcher and the daemon socket it hands calls to."""
    relay = socket_path(hepvol_env.config.state_dir)
    assert relay is not None, "the test's state dir is too deep for a Unix socket"
    plugins = hepvol_env.workdir / "plugins"
    install.install(str(plugins), str(hepvol_env.workdir / "config.toml"), relay, BOUND)
    return install.driver_path(str(plugins), "cvmfs"), relay


@pytest.fixture
def daemon(hepvol_env: HepvolEnv, driver: tuple[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "watch", "--metrics-port", "0"],
        env=hepvol_env.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert wait_for(lambda: Path(driver[1]).exists(), timeout=30), "the daemon never listened"
        yield process
    finally:
        process.terminate()
        process.wait(timeout=15)
        assert process.stderr is not None
        print(process.stderr.read().decode())
        process.stderr.close()


def run(driver: str, *args: str) -> tuple[dict[str, str], float]:
    start = time.monotonic()
    result = subprocess.run([driver, *args], env={}, capture_output=True, check=False,
                            timeout=300)  # fmt: skip
    assert result.stderr == b""
    return json.loads(result.stdout), time.monotonic() - start


def in_process_lines(env: HepvolEnv) -> int:
    log = Path(env.config.state_dir, "logs", "flexvolume.log")
    return len(log.read_text().splitlines()) if log.exists() else 0


def mount_and_unmount(env: HepvolEnv, driver: str) -> float:
    """Mount a pod dir, read through it, unmount it; returns the slowest call's seconds."""
    pod = env.targets / "pods" / "uid" / "volumes" / "cern~cvmfs" / "cvmfs"
    pod.mkdir(parents=True, mode=0o750)
    mounted, first = run(driver, "mount", str(pod), OPTIONS)
    assert mounted["status"] == "Success", mounted
    assert (pod / "README").read_text() == "sample trunk\n"
    unmounted, second = run(driver, "unmount", str(pod))
    assert unmounted["status"] == "Success", unmounted
    assert not (pod / "README").exists()
    return max(first, second)


def test_daemon_serves_the_calls(
    hepvol_env: HepvolEnv, driver: tuple[str, str], daemon: subprocess.Popen[bytes]
) -> None:
    before = in_process_lines(hepvol_env)
    mount_and_unmount(hepvol_env, driver[0])
    assert in_process_lines(hepvol_env) == before, "the calls ran in-process, not in the daemon"
    assert daemon.poll() is None


def test_daemon_refuses_bad_input_like_the_driver(
    hepvol_env: HepvolEnv, driver: tuple[str, str], daemon: subprocess.Popen[bytes]
) -> None:
    pod = hepvol_env.targets / "pods" / "bad"
    pod.mkdir(parents=True)
    reply, _ = run(driver[0], "mount", str(pod), json.dumps({"repository": "../etc"}))
    assert reply["status"] == "Failure" and "repository" in reply["message"], reply
    assert daemon.poll() is None


def test_without_a_daemon_the_call_runs_in_process(
    hepvol_env: HepvolEnv, driver: tuple[str, str]
) -> None:
    assert not Path(driver[1]).exists()
    mount_and_unmount(hepvol_env, driver[0])
    assert in_process_lines(hepvol_env) >= 2


def test_a_dead_daemons_socket_file_is_passed_by(
    hepvol_env: HepvolEnv, driver: tuple[str, str]
) -> None:
    long_bound = 120.0  # far above an in-process call, even on a loaded machine
    plugins = hepvol_env.workdir / "plugins-long"
    install.install(str(plugins), str(hepvol_env.workdir / "config.toml"), driver[1], long_bound)
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(driver[1])  # bound, never listening: what a killed daemon leaves
    slowest = mount_and_unmount(hepvol_env, install.driver_path(str(plugins), "cvmfs"))
    assert in_process_lines(hepvol_env) >= 2
    assert slowest < long_bound, "a refused connection must not wait for the reply bound"


def test_a_hung_daemon_costs_the_bound_not_the_call(
    hepvol_env: HepvolEnv, driver: tuple[str, str]
) -> None:
    with socket.socket(socket.AF_UNIX) as hung:
        hung.bind(driver[1])
        hung.listen(8)  # connections are queued and never answered
        slowest = mount_and_unmount(hepvol_env, driver[0])
    assert in_process_lines(hepvol_env) >= 2
    assert BOUND <= slowest < BOUND + 60, slowest


def test_a_daemon_killed_mid_life_leaves_calls_working(
    hepvol_env: HepvolEnv, driver: tuple[str, str], daemon: subprocess.Popen[bytes]
) -> None:
    daemon.kill()
    daemon.wait(timeout=10)
    assert Path(driver[1]).exists(), "SIGKILL leaves the socket file behind"
    mount_and_unmount(hepvol_env, driver[0])
    assert in_process_lines(hepvol_env) >= 2


@pytest.mark.parametrize("body", [b"0\n", b"0", b"1 \n", b'0{"status": "Succ'])
def test_a_daemon_reply_without_its_json_line_is_not_printed(
    hepvol_env: HepvolEnv, driver: tuple[str, str], body: bytes
) -> None:
    """A daemon that answers a status byte and no JSON line (dying mid-reply): in-process."""
    stop = threading.Event()
    with socket.socket(socket.AF_UNIX) as broken:
        broken.bind(driver[1])
        broken.listen(8)
        broken.settimeout(0.2)

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection, _ = broken.accept()
                except TimeoutError:
                    continue
                with connection:
                    connection.settimeout(10)
                    connection.recv(65536)
                    connection.sendall(body)

        server = threading.Thread(target=serve)
        server.start()
        try:
            mount_and_unmount(hepvol_env, driver[0])
        finally:
            stop.set()
            server.join()
    assert in_process_lines(hepvol_env) >= 2
