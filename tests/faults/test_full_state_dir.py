"""The state dir's file system full (a 2 MB tmpfs) under the three running fronts.

Each front answers with its protocol's error naming the cause (Docker ``Err``,
the CSI status message, a FlexVolume ``Failure``); what was published before
stays published and readable, the ledger is unchanged, nothing half-done is left
(no mount, no target dir, no record); once space is back the same calls work.
The core-level case is :mod:`tests.integration.test_full_disk`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from mount_core.ledger import Ledger
from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, write_config
from tests.e2e.dockerd import Plugin
from tests.faults.invariants import agreement_problems, leftovers
from tests.integration.test_csi_node import CsiProcess
from tests.integration.test_flexvolume import Kubelet, kubelet_options
from tests.integration.test_full_disk import _fill, small_state

__all__ = ["small_state"]

FULL = ("full", "space")


@pytest.fixture
def world(world: HepvolEnv, small_state: Path) -> HepvolEnv:
    """The fault world with its state dir on the small tmpfs (before any daemon starts)."""
    world.config = replace(world.config, state_dir=str(small_state)).validate()
    write_config(world.workdir, world.config)
    return world


def _snapshot(world: HepvolEnv, driver: str) -> dict[str, Any]:
    ledger = Ledger(world.config.ledger_path)
    try:
        return {
            "consumers": sorted((c.consumer, c.target, c.state) for c in ledger.consumers()),
            "backings": sorted((b.key, b.state) for b in ledger.backings()),
            "volumes": [v.name for v in ledger.volumes(driver)],
            "mounts": sorted(e.mount_point for e in MountTable().under(str(world.workdir))),
        }
    finally:
        ledger.close()


def _says_full(message: str) -> bool:
    return any(word in message for word in FULL)


def test_full_state_dir_gives_clear_errors_through_every_front(
    world: HepvolEnv, small_state: Path, plugin: Plugin, csi: CsiProcess, kubelet: Kubelet
) -> None:
    docker = plugin.call
    first, second = world.targets / "csi-a", world.targets / "csi-b"
    pods = [kubelet.pod_dir(uid="pod-1"), kubelet.pod_dir(uid="pod-2")]
    assert docker("VolumeDriver.Create", {"Name": SAMPLE})["Err"] == ""
    assert docker("VolumeDriver.Mount", {"Name": SAMPLE, "ID": "c1"})["Err"] == ""
    csi.client.publish("vol-a", str(first), {"repository": SAMPLE})
    assert kubelet.mount(pods[0], kubelet_options(repository=SAMPLE))["status"] == "Success"
    before = _snapshot(world, plugin.driver)

    _fill(small_state)
    refusals = {
        "docker Create": docker("VolumeDriver.Create", {"Name": f"{SAMPLE}@v1"})["Err"],
        "docker Mount": docker("VolumeDriver.Mount", {"Name": SAMPLE, "ID": "c2"})["Err"],
        "docker Unmount": docker("VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "c1"})["Err"],
    }
    for name, call in (
        ("csi publish", lambda: csi.client.publish("vol-b", str(second), {"repository": SAMPLE})),
        ("csi publish pinned", lambda: csi.client.publish(
            "vol-b", str(second), {"repository": SAMPLE, "tag": "v1"})),
        ("csi unpublish", lambda: csi.client.unpublish("vol-a", str(first))),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INTERNAL, (name, info.value.code())
        refusals[name] = info.value.details()
    for name, reply in (
        ("flex mount", kubelet.mount(pods[1], kubelet_options(repository=SAMPLE))),
        ("flex unmount", kubelet.unmount(pods[0])),
    ):
        assert reply["status"] == "Failure", (name, reply)
        refusals[name] = reply["message"]
    print(json.dumps(refusals, indent=1))
    unclear = {name: message for name, message in refusals.items() if not _says_full(message)}
    assert unclear == {}
    assert not csi.client.stats("vol-a", str(first)).volume_condition.abnormal

    assert _snapshot(world, plugin.driver) == before, (
        "nothing half-done: ledger and mounts unchanged"
    )
    assert not second.exists()
    for path in (first, pods[0]):
        assert (path / "README").read_text() == "sample trunk\n"

    (small_state / "filler").unlink()
    for leftover in small_state.glob("f*"):
        leftover.unlink()
    assert agreement_problems(world.config) == []
    assert docker("VolumeDriver.Create", {"Name": f"{SAMPLE}@v1"})["Err"] == ""
    csi.client.publish("vol-b", str(second), {"repository": SAMPLE, "tag": "v1"})
    assert (second / "README").read_text() == "sample v1\n"
    assert kubelet.mount(pods[1], kubelet_options(repository=SAMPLE))["status"] == "Success"
    for pod in pods:
        assert kubelet.unmount(pod)["status"] == "Success"
    csi.client.unpublish("vol-a", str(first))
    csi.client.unpublish("vol-b", str(second))
    assert docker("VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "c1"})["Err"] == ""
    assert leftovers(world.config, str(world.workdir)) == []
