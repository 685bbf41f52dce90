"""A ledger deleted under running processes (#14 item 6), on the stand-in kernel (no root)."""

from __future__ import annotations

import os
from pathlib import Path

from mount_core.consumer import Consumer
from mount_core.spec import VolumeSpec
from mount_core.volumes import NamedVolumes
from tests.unit.standin_kernel import World

SPEC = VolumeSpec(backend="cvmfs", repository="sample.hepvol.org")


def _delete_ledger(world: World) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(world.config.ledger_path + suffix).unlink(missing_ok=True)


def test_a_new_process_rebuilds_from_the_kernel_and_the_daemon_adds_what_it_knew(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    daemon = world.manager()
    live = [world.target(name) for name in ("a", "b")]
    for target in live:
        daemon.publish(SPEC, Consumer("csi", target), target)
    daemon.acquire(SPEC, Consumer("docker", "m1", {"driver": "cvmfs", "volume": "v"}))
    NamedVolumes(daemon, "cvmfs").create("v", SPEC.to_public())
    _delete_ledger(world)

    call = world.manager()  # finds no ledger: the kernel shows one mount, two targets
    [status] = call.status()
    assert sorted((c.kind, c.target) for c in status.consumers) == [
        ("recovered", live[0]), ("recovered", live[1]),
    ]  # fmt: skip
    pod = world.target("pod")
    call.publish(SPEC, Consumer("flex", pod), pod)
    call.unpublish(pod)
    assert len(world.kernel.entries) == 3, "the backing mount and both targets stay"

    # The daemon notices on its next call and puts back what the kernel could not tell.
    [status] = daemon.status()
    assert sorted(c.id for c in status.consumers) == sorted(
        [f"csi:{live[0]}", f"csi:{live[1]}", "docker:m1"]
    )
    assert NamedVolumes(call, "cvmfs").get("v") is not None
    assert call.ledger.backing(SPEC.key).spec == SPEC.to_public()  # type: ignore[union-attr]


def test_the_daemon_writes_its_copy_back_when_it_notices_first(tmp_path: Path) -> None:
    world = World(tmp_path)
    daemon = world.manager()
    target = world.target("a")
    daemon.publish(SPEC, Consumer("csi", target), target)
    _delete_ledger(world)
    assert [c.id for c in daemon.status()[0].consumers] == [f"csi:{target}"]
    assert os.path.exists(world.config.ledger_path)
    later = world.manager()
    assert not later.ledger.created
    assert [c.id for c in later.status()[0].consumers] == [f"csi:{target}"]


def test_a_mount_without_visible_targets_keeps_a_stand_in_holder(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.manager().acquire(SPEC, Consumer("docker", "m1"))
    _delete_ledger(world)
    rebuilt = world.manager()
    [status] = rebuilt.status()
    assert [(c.kind, c.target) for c in status.consumers] == [("recovered", None)]
    assert rebuilt.gc_idle(now=10**10) == [] and world.kernel.entries != []
