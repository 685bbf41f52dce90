"""Reconcile and repair decisions on the stand-in kernel (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.manager import MountManager
from mount_core.probe import Condition
from mount_core.reconcile import Reconciler
from mount_core.spec import VolumeSpec
from tests.unit.standin_kernel import World

SPEC = VolumeSpec(backend="cvmfs", repository="sample.hepvol.org")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _backing(world: World) -> str:
    return str(Path(world.config.mount_root) / SPEC.key)


def _published(world: World, *names: str) -> tuple[MountManager, list[str]]:
    manager = world.manager()
    targets = [world.target(name) for name in names]
    for target in targets:
        manager.publish(SPEC, Consumer("csi", target), target)
    return manager, targets


def _served(world: World, target: str) -> bool:
    entries = world.kernel.at(target)
    backing = world.kernel.at(_backing(world))
    return len(entries) == 1 and bool(backing) and entries[0].device == backing[-1].device


def test_repair_remounts_and_rebinds_every_target(world: World) -> None:
    manager, targets = _published(world, "a", "b")
    world.kernel.kill_server(_backing(world))
    results = HealthMonitor(manager).run_once()
    assert results[SPEC.key].dead
    assert world.backend.mounts == 2
    assert all(_served(world, t) for t in targets)
    assert manager.status()[0].condition == Condition.HEALTHY


def test_a_repair_that_cannot_remount_leaves_targets_failing_not_empty(world: World) -> None:
    """#14 item 5: the targets keep the dead mount (I/O errors), never become empty dirs."""
    manager, targets = _published(world, "a", "b")
    dead_device = world.kernel.at(targets[0])[0].device
    world.kernel.kill_server(_backing(world))
    world.backend.failure = "the repository is gone"
    assert not Reconciler(manager.service).repair(SPEC.key, "the FUSE server died")
    for target in targets:
        assert [e.device for e in world.kernel.at(target)] == [dead_device]
    status = manager.status()[0]
    assert status.condition == Condition.FAILED and "the repository is gone" in status.message
    # The next health pass tries again; once the volume is back the targets are served.
    world.backend.failure = None
    HealthMonitor(manager).run_once()
    assert all(_served(world, t) for t in targets)
    assert manager.status()[0].condition == Condition.HEALTHY


def test_a_publish_after_a_failed_repair_serves_every_target(world: World) -> None:
    manager, targets = _published(world, "a")
    world.kernel.kill_server(_backing(world))
    world.backend.failure = "down"
    Reconciler(manager.service).repair(SPEC.key, "died")
    world.backend.failure = None
    late = world.target("late")
    manager.publish(SPEC, Consumer("csi", late), late)
    assert _served(world, late) and _served(world, targets[0])


def test_one_failure_is_repaired_once_by_several_daemons(world: World) -> None:
    first, _ = _published(world, "a")
    second = world.manager()
    world.kernel.kill_server(_backing(world))
    row = first.ledger.backing(SPEC.key)
    assert row is not None
    # Both saw it dead; the second decides again under the lock and finds it repaired.
    assert Reconciler(first.service).repair(SPEC.key, "died")
    assert Reconciler(second.service).repair(SPEC.key, "died")
    assert world.backend.mounts == 2 and world.kernel.binds == 2


def test_reconcile_after_a_reboot_mounts_and_binds_again(world: World) -> None:
    manager, targets = _published(world, "a", "b")
    world.kernel.entries.clear()  # a reboot: the ledger survives, the mounts do not
    report = manager.reconcile()
    assert report.remounted == [SPEC.key] and sorted(report.rebound) == sorted(
        f"csi:{t}" for t in targets
    )
    assert all(_served(world, t) for t in targets)


def test_reconcile_adopts_what_survived_and_changes_nothing(world: World) -> None:
    manager, _ = _published(world, "a")
    binds, mounts = world.kernel.binds, world.backend.mounts
    report = manager.reconcile()
    assert report.counts() == dict.fromkeys(report.counts(), 0)
    assert (world.kernel.binds, world.backend.mounts) == (binds, mounts)


def test_reconcile_finishes_interrupted_work_and_sweeps_orphans(world: World) -> None:
    manager, (kept, gone, releasing) = _published(world, "kept", "gone", "releasing")
    # A target whose pod directory was removed, and a release cut short by a crash.
    world.kernel.unmount(gone)
    os.rmdir(gone)
    row = manager.consumer_at(releasing)
    assert row is not None
    manager.ledger.set_consumer_state(row.id, "releasing")
    # A bind and a backing mount of ours that the ledger does not know, and a foreign mount.
    orphan_target = world.target("orphan")
    os.mkdir(orphan_target)
    world.kernel.mount_fuse(orphan_target, "standin-orphan")
    orphan_backing = str(Path(world.config.mount_root) / "cvmfs-orphan")
    world.kernel.mount_fuse(orphan_backing, "standin-cvmfs-orphan")
    foreign = world.target("foreign")
    world.kernel.mount_fuse(foreign, "somebody-else")
    report = manager.reconcile()
    assert sorted(report.dropped) == [f"csi:{gone}", f"csi:{releasing}"]
    assert sorted(report.unmounted) == sorted([orphan_target, orphan_backing])
    assert _served(world, kept) and world.kernel.at(releasing) == []
    assert len(world.kernel.at(foreign)) == 1


def test_reconcile_unmounts_a_backing_mount_nobody_holds(world: World) -> None:
    manager, (target,) = _published(world, "a")
    row = manager.consumer_at(target)
    assert row is not None
    world.kernel.unmount(target)
    os.rmdir(target)
    report = manager.reconcile()
    assert report.unmounted == [SPEC.key] and world.kernel.entries == []
    assert manager.status() == []


def test_a_remounted_volume_without_the_subpath_leaves_the_target_failing(world: World) -> None:
    """The new mount lacks a target's subpath: the target keeps the dead mount (I/O errors)."""
    spec = VolumeSpec(backend="eos", instance="eospublic", path="/experiment/alice")
    backing = Path(world.config.mount_root) / spec.key
    (backing / "experiment" / "alice").mkdir(parents=True)
    manager, target = world.manager(), world.target("pod")
    manager.publish(spec, Consumer("csi", target), target)
    [dead] = world.kernel.at(target)
    world.kernel.kill_server(str(backing))
    (backing / "experiment" / "alice").rmdir()  # what the remounted volume will show
    assert not Reconciler(manager.service).repair(spec.key, "the FUSE server died")
    assert world.kernel.at(target) == [dead]
    assert "does not exist in the volume" in manager.status()[0].message
