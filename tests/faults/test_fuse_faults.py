"""A FUSE server killed or hung under running daemons, seen through the fronts.

Killed: NodeGetVolumeStats reports the volume abnormal, and the CSI daemon's own
health loop (the world's settings, nothing driven by the test) repairs it within
5 s: the target reads again, ``hepvol status --json`` says healthy. Hung
(SIGSTOP): Probe, ``hepvol status``, Docker ``List``/``Get`` and
NodeGetVolumeStats all answer within their bounds and say why; after SIGCONT the
volume is healthy again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from csi_driver.generated import csi_pb2
from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli, wait_for
from tests.e2e.dockerd import Plugin
from tests.faults.invariants import agreement_problems, readable
from tests.integration.test_csi_node import CsiProcess

REPAIR_BOUND = 5.0
#: kubelet's livenessprobe sidecar gives Probe 1 s; answer well within it.
PROBE_BOUND = 0.5
#: NodeGetVolumeStats waits at most probe_timeout_seconds for a hung mount.
STATS_SLACK = 1.0
CLI_BOUND = 3.0
DOCKER_BOUND = 2.0


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.monotonic()
    result = call()
    return time.monotonic() - start, result


def _status(world: HepvolEnv) -> dict[str, Any]:
    result = hepvol_cli(world, "status", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    [backing] = json.loads(result.stdout)["backing_mounts"]
    return backing  # type: ignore[no-any-return]


def _server(world: HepvolEnv) -> int:
    [pid] = world.server_pids()
    return pid


@pytest.fixture
def published(world: HepvolEnv, csi: CsiProcess) -> Path:
    target = world.targets / "pod" / "vol"
    target.parent.mkdir()
    csi.client.publish("vol-1", str(target), {"repository": SAMPLE})
    assert (target / "README").read_text() == "sample trunk\n"
    return target


def test_killed_fuse_server_is_reported_and_repaired_by_the_daemon(
    world: HepvolEnv, csi: CsiProcess, published: Path
) -> None:
    dead = _server(world)
    seen: list[tuple[str, str]] = []
    stop = threading.Event()

    def watch_status() -> None:
        while not stop.is_set():
            backing = _status(world)
            seen.append((backing["condition"], backing["message"]))

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    os.kill(dead, signal.SIGKILL)
    killed = time.monotonic()
    abnormal = []
    try:
        while time.monotonic() - killed < REPAIR_BOUND + 5:
            stats = csi.client.stats("vol-1", str(published), timeout=5)
            condition = stats.volume_condition
            # Repaired: the pod published before the repair is told to restart.
            repaired_message = condition.message.startswith("stale: ")
            if condition.abnormal and not repaired_message:
                abnormal.append(condition.message)
            elif abnormal and readable(str(published)) is None:
                assert repaired_message and "restart the pod" in condition.message
                break
            time.sleep(0.02)
        repaired = time.monotonic() - killed
    finally:
        stop.set()
        watcher.join(30)
    print(f"killed FUSE server: abnormal for {repaired:.2f} s; stats said {abnormal[:1]}; "
          f"status --json said {sorted(set(seen))}")  # fmt: skip
    assert abnormal, "NodeGetVolumeStats never reported the dead server"
    # Every answer says why. Under load, the replacement server may take longer than
    # the probe timeout to answer its first request: "not responding" is the truth then.
    said_why = re.compile(
        r"(failed|repairing): (the FUSE server died \((ENOTCONN|ECONNABORTED)\)|"
        r"not responding within .*)"
    )
    unexplained = [m for m in abnormal if not said_why.fullmatch(m)]
    assert not unexplained, unexplained
    assert "the FUSE server died" in abnormal[0], abnormal[0]
    assert repaired < REPAIR_BOUND, f"repaired after {repaired:.1f} s"
    unhealthy = [(condition, message) for condition, message in seen if condition != "healthy"]
    assert all("FUSE server died" in message for _, message in unhealthy), unhealthy
    assert (published / "README").read_text() == "sample trunk\n"
    assert _server(world) != dead, "a new FUSE server serves the volume"
    assert wait_for(lambda: _status(world)["condition"] == "healthy", 5)
    assert agreement_problems(world.config) == []
    log = (world.workdir / "csi.log").read_text()
    assert '"repaired"' in log, "the daemon's health loop did the repair"


@contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_hung_fuse_server_never_blocks_the_fronts(
    world: HepvolEnv, csi: CsiProcess, plugin: Plugin, published: Path
) -> None:
    assert plugin.call("VolumeDriver.Create", {"Name": SAMPLE})["Err"] == ""
    assert plugin.call("VolumeDriver.Mount", {"Name": SAMPLE, "ID": "c1"})["Err"] == ""
    timings: dict[str, list[float]] = {}

    def measure(name: str, call: Callable[[], Any]) -> Any:
        seconds, result = _timed(call)
        timings.setdefault(name, []).append(seconds)
        return result

    with _stopped(_server(world)):
        for _ in range(3):  # parked probes must not pile up into longer waits
            probe = measure("Probe", lambda: csi.client.identity.Probe(csi_pb2.ProbeRequest(),
                                                                       timeout=1))  # fmt: skip
            assert probe.ready.value
            stats = measure("NodeGetVolumeStats", lambda: csi.client.stats(
                "vol-1", str(published), timeout=10))  # fmt: skip
            assert stats.volume_condition.abnormal
            assert "not responding" in stats.volume_condition.message
            table = measure("hepvol status", lambda: hepvol_cli(world, "status", timeout=30))
            assert table.returncode == 0 and SAMPLE in table.stdout
            listed = measure("Docker List", lambda: plugin.call("VolumeDriver.List"))
            assert listed["Err"] == "" and listed["Volumes"][0]["Name"] == SAMPLE
            got = measure("Docker Get", lambda: plugin.call("VolumeDriver.Get", {"Name": SAMPLE}))
            assert got["Err"] == ""
        # Once a health pass has run, every front says why.
        assert wait_for(lambda: _status(world)["condition"] == "failed", 10)
        backing = _status(world)
        assert "not responding" in backing["message"] and "hung" in backing["message"]
        status = plugin.call("VolumeDriver.Get", {"Name": SAMPLE})["Volume"]["Status"]
        assert status["condition"] == "failed" and "hung" in status["message"], status
        assert "hung" in hepvol_cli(world, "status").stdout
    print({name: f"max {max(values):.3f} s" for name, values in timings.items()})
    probe_timeout = world.config.probe_timeout_seconds
    assert max(timings["Probe"]) < PROBE_BOUND
    assert max(timings["NodeGetVolumeStats"]) < probe_timeout + STATS_SLACK
    assert max(timings["hepvol status"]) < CLI_BOUND
    assert max(timings["Docker List"]) < DOCKER_BOUND
    assert max(timings["Docker Get"]) < DOCKER_BOUND

    assert wait_for(lambda: _status(world)["condition"] == "healthy", 10)
    assert not csi.client.stats("vol-1", str(published)).volume_condition.abnormal
    assert (published / "README").read_text() == "sample trunk\n"
    assert plugin.call("VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "c1"})["Err"] == ""
    assert agreement_problems(world.config) == []
