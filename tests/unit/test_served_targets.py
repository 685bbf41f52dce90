"""A target counts as served only when its path reaches a bind of the live backing
mount of its spec (device and root), never because a mountinfo row sits at it.

On the stand-in kernel, whose path resolution follows the kernel's: a mount over
a parent hides everything at and below it, while its rows stay in the table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.spec import VolumeSpec
from tests.unit.standin_kernel import World

SPEC = VolumeSpec(backend="cvmfs", repository="sample.hepvol.org")
PINNED = VolumeSpec(backend="cvmfs", repository="sample.hepvol.org", tag="v1")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _pod_target(world: World, pod: str) -> str:
    """A kubelet-style target: the pod's dir exists, the target dir is made by publish."""
    os.makedirs(world.target(pod), exist_ok=True)
    return world.target(f"{pod}/vol")


def _reaches(world: World, path: str) -> str:
    """The device ``path`` really reaches."""
    entry = world.kernel.resolve(path, world.kernel.mount_table())
    assert entry is not None
    return entry.device


def _backing_device(world: World, spec: VolumeSpec) -> str:
    return _reaches(world, str(Path(world.config.mount_root) / spec.key))


def test_publish_rebinds_a_target_hidden_by_a_mount_over_its_parent(world: World) -> None:
    manager = world.manager()
    target = _pod_target(world, "pod")
    manager.publish(SPEC, Consumer("csi", target), target)
    world.kernel.cover(world.target("pod"))
    assert world.kernel.at(target), "mountinfo still lists the hidden bind"
    assert _reaches(world, target) != _backing_device(world, SPEC)
    manager.publish(SPEC, Consumer("csi", target), target)
    assert _reaches(world, target) == _backing_device(world, SPEC)
    assert world.kernel.binds == 2


def test_reconcile_rebinds_a_hidden_target(world: World) -> None:
    manager = world.manager()
    target = _pod_target(world, "pod")
    manager.publish(SPEC, Consumer("csi", target), target)
    world.kernel.cover(world.target("pod"))
    report = manager.reconcile()
    assert report.rebound == [f"csi:{target}"]
    assert _reaches(world, target) == _backing_device(world, SPEC)


def test_a_target_bound_to_another_specs_mount_is_rebound(world: World) -> None:
    manager = world.manager()
    target, other = _pod_target(world, "a"), _pod_target(world, "b")
    manager.publish(SPEC, Consumer("csi", target), target)
    manager.publish(PINNED, Consumer("csi", other), other)
    # The pinned volume's target ends up showing the trunk (a stale bind, a mix-up).
    world.kernel.unmount(other)
    source = os.open(Path(world.config.mount_root) / SPEC.key, os.O_PATH)
    destination = os.open(other, os.O_PATH)
    try:
        world.kernel.bind(source, destination, readonly=True, recursive=False)
    finally:
        os.close(source)
        os.close(destination)
    assert _reaches(world, other) == _backing_device(world, SPEC)
    manager.publish(PINNED, Consumer("csi", other), other)
    assert _reaches(world, other) == _backing_device(world, PINNED)
    assert manager.reconcile().rebound == [], "nothing left to fix"


def test_a_hidden_backing_mount_is_mounted_again_and_never_bound_from(world: World) -> None:
    """A mount over the mount root (a container's state volume) hides every backing
    mount while their rows stay: a new consumer must not get the empty directory."""
    manager = world.manager()
    first, second = _pod_target(world, "a"), _pod_target(world, "b")
    manager.publish(SPEC, Consumer("csi", first), first)
    world.kernel.cover(world.config.mount_root)
    [row] = manager.ledger.backings()
    assert manager.service.probe(row, manager.service.table()).dead, "hidden counts as dead"
    manager.publish(SPEC, Consumer("csi", second), second)
    assert world.backend.mounts == 2, "mounted again"
    live = _backing_device(world, SPEC)
    assert _reaches(world, second) == live
    assert _reaches(world, first) == live, "the older target moved to the live mount too"


def test_a_bind_of_a_hidden_backing_mount_is_taken_down_from_an_existing_target(
    world: World,
) -> None:
    """The target directory was there before (kubelet made it): the first bind, of the
    empty directory, must not stay under the good one."""
    manager = world.manager()
    first, second = _pod_target(world, "a"), _pod_target(world, "b")
    manager.publish(SPEC, Consumer("csi", first), first)
    os.mkdir(second)
    world.kernel.cover(world.config.mount_root)
    manager.publish(SPEC, Consumer("csi", second), second)
    assert [e.device for e in world.kernel.at(second)] == [_backing_device(world, SPEC)]
