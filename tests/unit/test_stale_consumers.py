"""Generations: who still holds a replaced backing mount (stand-in kernel, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.probe import Condition
from mount_core.spec import VolumeSpec
from tests.unit.standin_kernel import World

SPEC = VolumeSpec(backend="cvmfs", repository="sample.hepvol.org")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _kill_and_repair(world: World) -> None:
    manager = world.manager()
    world.kernel.kill_server(str(Path(world.config.mount_root) / SPEC.key))
    assert HealthMonitor(manager).run_once()[SPEC.key].dead


def _stale(world: World) -> dict[str, bool]:
    [backing] = world.manager().status()
    return {c.id: c.stale for c in backing.consumers}


def test_consumers_of_every_container_kind_published_before_a_repair_are_stale(
    world: World,
) -> None:
    manager = world.manager()
    csi, flex = world.target("csi"), world.target("flex")
    manager.publish(SPEC, Consumer("csi", csi), csi)
    manager.publish(SPEC, Consumer("flex", flex), flex)
    manager.acquire(SPEC, Consumer("docker", "m1"))
    manager.acquire(SPEC, Consumer("cli", "shell"))
    _kill_and_repair(world)
    assert _stale(world) == {
        f"csi:{csi}": True, f"flex:{flex}": True, "docker:m1": True,
        "cli:shell": False,  # no container: the host's view is the repaired one
    }  # fmt: skip
    stats = manager.stats(csi)
    assert stats.condition == Condition.STALE and stats.abnormal
    assert "restart the pod" in stats.message

    later = world.target("later")
    manager.publish(SPEC, Consumer("csi", later), later)
    assert not manager.stats(later).abnormal
    manager.publish(SPEC, Consumer("csi", csi), csi)  # kubelet publishing again
    assert manager.stats(csi).condition == Condition.STALE


def test_a_second_repair_makes_the_first_repairs_consumers_stale_too(world: World) -> None:
    manager = world.manager()
    first, second = world.target("first"), world.target("second")
    manager.publish(SPEC, Consumer("csi", first), first)
    _kill_and_repair(world)
    manager.publish(SPEC, Consumer("csi", second), second)
    assert _stale(world) == {f"csi:{first}": True, f"csi:{second}": False}
    _kill_and_repair(world)
    assert _stale(world) == {f"csi:{first}": True, f"csi:{second}": True}
    assert world.manager().status()[0].generation == 3


def test_a_remount_after_a_reboot_leaves_nobody_stale(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot every container is new: nobody can hold the mount of the old boot."""
    manager = world.manager()
    target = world.target("pod")
    manager.publish(SPEC, Consumer("csi", target), target)
    monkeypatch.setattr(world.kernel, "boot_id", lambda: "the next boot")
    world.kernel.entries.clear()  # nothing survives a reboot
    manager.reconcile()
    assert world.manager().status()[0].generation == 2
    assert _stale(world) == {f"csi:{target}": False}
    assert not manager.stats(target).abnormal


def test_a_ledger_of_schema_1_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    from mount_core.ledger import Ledger
    from mount_core.ledger_schema import MIGRATIONS

    path = str(tmp_path / "ledger.db")
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[1] + ";PRAGMA user_version=1;")
    db.execute("INSERT INTO backing_mounts (key, backend, spec, path, state, created_at) "
               "VALUES ('k', 'local', '{}', '/m/k', 'mounted', 0)")  # fmt: skip
    db.execute("INSERT INTO consumers (key, consumer, kind, readonly, state, created_at) "
               "VALUES ('k', 'docker:1', 'docker', 1, 'active', 0)")  # fmt: skip
    db.commit()
    db.close()
    ledger = Ledger(path)
    [backing], [consumer] = ledger.backings(), ledger.consumers()
    assert (backing.generation, consumer.generation) == (1, 1)
    assert ledger.new_generation("k", "this boot") == 2
    assert ledger.consumers()[0].generation == 2, "no boot recorded: they move along"
