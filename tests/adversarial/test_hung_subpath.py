"""A hung FUSE server (SIGSTOP) behind volumes with a subpath: every call stays bounded.

Issue #14 item 2: publishing an EOS volume with a ``path`` while its server was
stopped hung with no time limit on all three fronts (the lookup of the path
inside the mount never returns); 64 such calls took every CSI worker, so Probe
failed, and a restarted CSI server never created its socket. Now the lookup is
bounded by ``probe_timeout_seconds`` (one stuck lookup per mount at most): each
front refuses within its bound saying the volume is not responding, Probe and
calls for other volumes are answered meanwhile, a restarted server serves, and
after SIGCONT the same calls succeed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from csi_driver.client import Client, capability
from csi_driver.generated import csi_pb2
from tests.adversarial.conftest import WorldFactory
from tests.conftest import HepvolEnv, wait_for
from tests.e2e.dockerd import Dockerd, Plugin, make_plugin
from tests.integration.test_csi_node import CsiProcess, start_csi
from tests.integration.test_flexvolume import Kubelet, kubelet_options

PROBE_TIMEOUT = 1.0
#: A call on the hung volume answers within this (the probe timeout, plus a loaded
#: machine's scheduling and the fronts' own work).
CALL_BOUND = PROBE_TIMEOUT + 9.0
PROBE_BOUND = 1.0  # kubelet's livenessprobe gives Probe 1 s
HUNG_CALLS = 64


@pytest.fixture
def eos_world(make_env: WorldFactory) -> HepvolEnv:
    env = make_env(probe_timeout_seconds=PROBE_TIMEOUT)
    for instance in ("eospublic", "eosother"):
        for sub in ("a/b", "c"):
            env.make_repo(instance, {f"{sub}/README": f"{instance} {sub}\n"})
    return env


@pytest.fixture
def eos_csi(eos_world: HepvolEnv) -> Iterator[CsiProcess]:
    yield from start_csi(eos_world, "--mode", "node", "--node-id", "n", "--driver", "eos")


@pytest.fixture
def eos_plugin(eos_world: HepvolEnv, tmp_path: Path) -> Iterator[Plugin]:
    yield from make_plugin(eos_world, Dockerd(tmp_path / "no-engine"), backend="eos")


def _publish(client: Client, volume_id: str, target: str, context: dict[str, str]) -> None:
    """NodePublishVolume with a deadline, so that a hang fails the test instead."""
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=target, volume_capability=capability(),
        readonly=True, volume_context=context,
    )  # fmt: skip
    client.node.NodePublishVolume(request, timeout=CALL_BOUND * 3)


def _context(path: str, instance: str = "eospublic") -> dict[str, str]:
    return {"instance": instance, "path": path}


def _timed(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as exc:
        result = exc
    return time.monotonic() - start, result


@pytest.fixture
def hung(eos_world: HepvolEnv, eos_csi: CsiProcess) -> Iterator[int]:
    """eospublic mounted (published at /a) and its server stopped; SIGCONT at the end.

    The calls ask for /c, which the kernel has not looked up yet (a cached lookup
    would be answered without the server).
    """
    first = eos_world.targets / "first"
    eos_csi.client.publish("vol-first", str(first), _context("/a"))
    assert (first / "b" / "README").read_text() == "eospublic a/b\n"
    [pid] = eos_world.server_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def _succeeds(call, *args) -> bool:  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return False
    return True


def _refused_in_bound(seconds: float, what: str, message: str) -> None:
    assert seconds < CALL_BOUND, f"{what} took {seconds:.1f} s"
    assert "not responding" in message, f"{what}: {message}"


def test_every_front_answers_within_its_bound_for_a_hung_volume_with_a_path(
    eos_world: HepvolEnv, eos_csi: CsiProcess, eos_plugin: Plugin, hung: int
) -> None:
    target = eos_world.targets / "csi-new"
    seconds, result = _timed(_publish, eos_csi.client, "vol-new", str(target), _context("/c"))
    assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.UNAVAILABLE
    _refused_in_bound(seconds, "CSI NodePublishVolume", result.details())

    kubelet = Kubelet(eos_world)
    pod = kubelet.pod_dir(driver="eos", name="eos")
    seconds, reply = _timed(
        kubelet.mount, pod, kubelet_options(**_context("/c")), driver="eos", timeout=CALL_BOUND * 3
    )
    assert reply["status"] == "Failure"
    _refused_in_bound(seconds, "FlexVolume mount", reply["message"])

    body = {"Name": "hung-c", "Opts": _context("/c")}
    assert not eos_plugin.call("VolumeDriver.Create", body).get("Err")
    seconds, reply = _timed(eos_plugin.call, "VolumeDriver.Mount", {"Name": "hung-c", "ID": "m1"})
    _refused_in_bound(seconds, "Docker Mount", str(reply.get("Err")))

    os.kill(hung, signal.SIGCONT)
    # UNAVAILABLE means "retry", as kubelet does: the first calls may still see the
    # probe that was stuck until now.
    assert wait_for(lambda: _succeeds(_publish, eos_csi.client, "vol-new", str(target),
                                      _context("/c")), timeout=CALL_BOUND)  # fmt: skip
    assert (target / "README").read_text() == "eospublic c\n"
    mount = {"Name": "hung-c", "ID": "m1"}
    assert wait_for(lambda: not eos_plugin.call("VolumeDriver.Mount", mount).get("Err"),
                    timeout=CALL_BOUND)  # fmt: skip
    assert wait_for(lambda: kubelet.mount(pod, kubelet_options(**_context("/c")),
                                          driver="eos")["status"] == "Success",
                    timeout=CALL_BOUND)  # fmt: skip
    assert (pod / "README").read_text() == "eospublic c\n"


def test_64_hung_calls_starve_neither_probe_nor_other_volumes_and_a_restart_serves(
    eos_world: HepvolEnv, eos_csi: CsiProcess, hung: int
) -> None:
    calls = []
    with ThreadPoolExecutor(HUNG_CALLS) as pool:
        for n in range(HUNG_CALLS):
            parent = eos_world.targets / f"hung-{n}"
            parent.mkdir()
            calls.append(pool.submit(_timed, _publish, eos_csi.client, f"vol-h{n}",
                                     str(parent / "mount"), _context("/c")))  # fmt: skip
        probes, others = [], []
        deadline = time.monotonic() + CALL_BOUND
        n = 0
        while time.monotonic() < deadline and not all(c.done() for c in calls):
            seconds, result = _timed(
                eos_csi.client.identity.Probe, csi_pb2.ProbeRequest(), timeout=5
            )
            assert not isinstance(result, grpc.RpcError), result
            probes.append(seconds)
            other = eos_world.targets / f"other-{n}"
            seconds, result = _timed(_publish, eos_csi.client, f"vol-o{n}", str(other),
                                     _context("/c", "eosother"))  # fmt: skip
            assert not isinstance(result, grpc.RpcError), result
            assert (other / "README").read_text() == "eosother c\n"
            others.append(seconds)
            n += 1
        results = [c.result(timeout=CALL_BOUND * 3) for c in calls]
    slowest = max(seconds for seconds, _ in results)
    print(f"{HUNG_CALLS} hung publishes: slowest {slowest:.1f} s; Probe at worst "
          f"{max(probes):.2f} s, another volume's publish at worst {max(others):.2f} s")  # fmt: skip
    for seconds, result in results:
        assert isinstance(result, grpc.RpcError), result
        assert result.code() == grpc.StatusCode.UNAVAILABLE, result
        _refused_in_bound(seconds, "a hung publish", result.details())
    assert max(probes) < PROBE_BOUND, probes
    assert max(others) < CALL_BOUND, others

    # kill -9 and start again: the start-up reconcile meets the hung mount.
    eos_csi.stop(signal.SIGKILL)
    start = time.monotonic()
    eos_csi.start()
    assert time.monotonic() - start < CALL_BOUND + 20
    seconds, result = _timed(eos_csi.client.identity.Probe, csi_pb2.ProbeRequest(), timeout=5)
    assert not isinstance(result, grpc.RpcError) and seconds < PROBE_BOUND


def test_a_stuck_lookup_leaves_at_most_one_thread_per_mount(
    eos_world: HepvolEnv, eos_csi: CsiProcess, hung: int
) -> None:
    before = threading.active_count()
    client = Client(eos_csi.endpoint)
    try:
        for n in range(8):
            parent = eos_world.targets / f"seq-{n}"
            parent.mkdir()
            seconds, result = _timed(_publish, client, f"vol-s{n}", str(parent / "mount"),
                                     _context("/c"))  # fmt: skip
            assert isinstance(result, grpc.RpcError)
            _refused_in_bound(seconds, "a hung publish", result.details())
    finally:
        client.close()
    threads = len(os.listdir(f"/proc/{eos_csi.proc.pid}/task"))  # type: ignore[union-attr]
    assert threading.active_count() <= before + 2
    assert threads < 80, f"the CSI server runs {threads} threads"
