"""The Docker plugin's two workers: both serve calls, exactly one runs the background work.

A real ``hepvol docker-plugin`` (gunicorn master + 2 gthread workers) on a private
world; the worker that holds the lead lock reconciles and runs the health loop, and
when it is killed, gunicorn's replacement takes the lead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, HepvolEnv, wait_for


def call(path: str, method: str, body: dict[str, str]) -> dict[str, str]:
    payload = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(path)
        sock.sendall(f"POST /{method} HTTP/1.1\r\nHost: p\r\nContent-Length: {len(payload)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + payload)  # fmt: skip
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    result: dict[str, str] = json.loads(reply.partition(b"\r\n\r\n")[2])
    return result


def leads(log: Path) -> list[int]:
    """PIDs of the workers that said they took the lead, in order."""
    found = []
    for line in log.read_text().splitlines():
        with_lead = line.startswith("{") and json.loads(line)
        if with_lead and with_lead.get("msg") == "serving" and with_lead.get("lead"):
            found.append(int(with_lead["pid"]))
    return found


@pytest.fixture
def plugin(hepvol_env: HepvolEnv) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    driver = f"hepvolworkers{os.getpid()}"
    path = f"/run/docker/plugins/{driver}.sock"
    log = hepvol_env.workdir / "plugin.log"
    env = dict(hepvol_env.environ(), DOCKER_HOST="unix:///nonexistent/docker.sock")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hepvol", "docker-plugin", "--driver", "cvmfs", "--name",
             driver], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for(lambda: os.path.exists(path) and bool(leads(log)), timeout=60), (
            log.read_text()
        )
        yield process, path, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def workers(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def mount_many(path: str, prefix: str, count: int = 30) -> None:
    for i in range(count):
        reply = call(path, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": f"{prefix}{i}"})
        assert reply["Err"] == "" and reply["Mountpoint"], reply
    for i in range(count):
        assert call(path, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": f"{prefix}{i}"}) == {
            "Err": ""
        }


def test_two_workers_serve_and_one_leads(
    hepvol_env: HepvolEnv, plugin: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, path, log = plugin
    assert len(workers(process.pid)) == 2
    assert call(path, "VolumeDriver.Create", {"Name": SAMPLE}) == {"Err": ""}
    mount_many(path, "a")
    assert len(leads(log)) == 1, "exactly one worker runs reconcile and the health loop"
    assert leads(log)[0] in workers(process.pid)


def test_a_killed_lead_is_replaced_by_a_new_lead(
    hepvol_env: HepvolEnv, plugin: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, path, log = plugin
    assert call(path, "VolumeDriver.Create", {"Name": SAMPLE}) == {"Err": ""}
    [first] = leads(log)
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: len(leads(log)) == 2, timeout=60), log.read_text()
    second = leads(log)[1]
    assert second != first and second in workers(process.pid)
    mount_many(path, "b")
