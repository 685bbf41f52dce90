"""Publish and unpublish decisions of the core, on the stand-in kernel (no root needed)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.errors import Conflict, MountFailed
from tests.unit.standin_kernel import World

SPEC_OPTIONS = {"backend": "cvmfs", "repository": "sample.hepvol.org"}


def _spec(**changes: str):  # type: ignore[no-untyped-def]
    from mount_core.spec import VolumeSpec

    return VolumeSpec.from_public({**SPEC_OPTIONS, **changes})


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_publish_binds_once_and_reports_the_mode_it_bound(world: World) -> None:
    manager, target = world.manager(), world.target("pod")
    # CVMFS is read-only whatever is asked: the answer says what was done.
    published = manager.publish(_spec(), Consumer("flex", target), target, readonly=False)
    assert (published.target, published.readonly, published.mode) == (target, True, "read-only")
    again = manager.publish(_spec(), Consumer("flex", target), target, readonly=False)
    assert again == published
    assert world.kernel.binds == 1 and len(world.kernel.at(target)) == 1
    assert world.kernel.at(target)[0].readonly


def test_identical_publishes_at_once_bind_exactly_once(world: World) -> None:
    """kubelet retrying NodePublishVolume while the first call still binds (#14 item 1)."""
    world.kernel.bind_delay = 0.05
    managers = [world.manager() for _ in range(4)]  # like separate processes
    for trial in range(5):
        target = world.target(f"pod-{trial}")
        errors: list[BaseException] = []

        def publish(index: int, target: str = target, errors: list[BaseException] = errors) -> None:
            try:
                managers[index].publish(_spec(), Consumer("csi", target), target)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(world.kernel.at(target)) == 1, "one bind, none stacked"
        assert Path(target).is_dir()
        assert managers[0].unpublish(target)
        assert world.kernel.at(target) == [] and not Path(target).exists()
    assert world.kernel.binds == 5


def test_a_different_volume_at_a_used_target_is_refused_and_changes_nothing(
    world: World,
) -> None:
    manager, target = world.manager(), world.target("pod")
    manager.publish(_spec(), Consumer("csi", target), target)
    with pytest.raises(Conflict, match="already has a different volume"):
        manager.publish(_spec(tag="v1"), Consumer("csi", target), target)
    assert world.kernel.binds == 1 and world.backend.mounts == 1
    assert [s.key for s in manager.status()] == [_spec().key]


def test_republish_rebinds_a_target_the_kernel_lost(world: World) -> None:
    """The ledger says published, the kernel says not: the kernel is believed."""
    manager, target = world.manager(), world.target("pod")
    manager.publish(_spec(), Consumer("csi", target), target)
    world.kernel.unmount(target)  # an admin's umount, a crash half-way
    manager.publish(_spec(), Consumer("csi", target), target)
    assert len(world.kernel.at(target)) == 1 and world.kernel.binds == 2


def test_a_failed_mount_keeps_nothing(world: World) -> None:
    manager, target = world.manager(), world.target("pod")
    world.backend.failure = "repository not found"
    with pytest.raises(MountFailed, match="repository not found"):
        manager.publish(_spec(), Consumer("csi", target), target)
    assert manager.status() == [] and not Path(target).exists()
    assert world.kernel.entries == []


def test_last_consumer_unmounts_unless_an_idle_grace_is_set(tmp_path: Path) -> None:
    for idle, stays in ((0.0, False), (60.0, True)):
        world = World(tmp_path / str(idle), idle_unmount_seconds=idle)
        manager = world.manager()
        first, second = world.target("a"), world.target("b")
        for target in (first, second):
            manager.publish(_spec(), Consumer("csi", target), target)
        assert world.backend.mounts == 1
        manager.unpublish(first)
        assert len(world.kernel.entries) == 2  # backing mount + the other target
        manager.unpublish(second)
        backing = str(Path(world.config.mount_root) / _spec().key)
        assert bool(world.kernel.at(backing)) is stays
        assert manager.gc_idle(now=10**10) == ([_spec().key] if stays else [])
        assert world.kernel.entries == []


def test_docker_holds_count_each_mount(world: World) -> None:
    manager = world.manager()
    consumer = Consumer("docker", "m1")
    path = manager.acquire(_spec(), consumer)
    assert manager.acquire(_spec(), consumer) == path
    assert manager.release(consumer) and world.kernel.entries != []
    assert manager.release(consumer) and world.kernel.entries == []
    assert not manager.release(consumer)


def test_stats_answer_the_condition_without_a_front_probing(world: World) -> None:
    manager, target = world.manager(), world.target("pod")
    manager.publish(_spec(), Consumer("csi", target), target)
    assert not manager.stats(target).abnormal
    backing = str(Path(world.config.mount_root) / _spec().key)
    world.kernel.kill_server(backing)
    stats = manager.stats(target)
    assert stats.abnormal and "ENOTCONN" in stats.message and stats.readonly
