"""Dead and hung FUSE servers: detected without blocking, repaired at every target."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from mount_core.config import Config
from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli, wait_for

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)


def _publish_two(env: HepvolEnv) -> list[str]:
    manager = env.manager()
    targets = [str(env.targets / "pod-a"), str(env.targets / "pod-b")]
    for target in targets:
        manager.publish(SPEC, Consumer("csi", target), target)
    return targets


def _readme_errno(target: str) -> int:
    try:
        with open(os.path.join(target, "README")) as handle:
            handle.read()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_killed_fuse_server_is_detected_and_repaired_at_every_target(
    hepvol_env: HepvolEnv,
) -> None:
    targets = _publish_two(hepvol_env)
    [server] = hepvol_env.server_pids()
    os.kill(server, signal.SIGKILL)
    assert wait_for(lambda: _readme_errno(targets[0]) == errno.ENOTCONN, timeout=5)

    monitor = HealthMonitor(hepvol_env.manager())
    started = time.monotonic()
    results = monitor.run_once()
    assert results[SPEC.key].dead and "died" in results[SPEC.key].message
    assert time.monotonic() - started < 5
    for target in targets:
        with open(os.path.join(target, "README")) as handle:
            assert handle.read() == "sample trunk\n"
    assert hepvol_env.server_pids() != [server]
    [status] = hepvol_env.manager().status()
    assert status.condition == Condition.HEALTHY and len(status.consumers) == 2
    # The dead mounts were detached, not stacked under the new ones.
    points = [e.mount_point for e in MountTable().under(str(hepvol_env.workdir))]
    assert len(points) == len(set(points)) == 3


def test_background_loop_repairs_without_being_asked(hepvol_env: HepvolEnv) -> None:
    targets = _publish_two(hepvol_env)
    monitor = HealthMonitor(hepvol_env.manager(), interval=0.2)
    monitor.start()
    try:
        os.kill(hepvol_env.server_pids()[0], signal.SIGKILL)
        assert wait_for(
            lambda: (
                all(_readme_errno(t) == 0 for t in targets)
                and hepvol_env.manager().status()[0].condition == Condition.HEALTHY
            ),
            timeout=5,
        )
    finally:
        monitor.stop()


def test_hung_fuse_server_never_blocks_probe_or_status(hepvol_env: HepvolEnv) -> None:
    _publish_two(hepvol_env)
    [server] = hepvol_env.server_pids()
    os.kill(server, signal.SIGSTOP)
    try:
        monitor = HealthMonitor(hepvol_env.manager())
        started = time.monotonic()
        result = monitor.run_once()[SPEC.key]
        elapsed = time.monotonic() - started
        assert elapsed < hepvol_env.config.probe_timeout_seconds + 1.5
        assert result.condition == Condition.FAILED and not result.dead
        assert "not responding" in result.message
        # A second pass does not stack another stuck probe; it reports the age.
        assert "not responding" in monitor.run_once()[SPEC.key].message

        started = time.monotonic()
        out = hepvol_cli(hepvol_env, "status", "--json", timeout=10)
        assert out.returncode == 0 and time.monotonic() - started < 5
        assert '"condition": "failed"' in out.stdout and "not responding" in out.stdout
    finally:
        os.kill(server, signal.SIGCONT)
    assert wait_for(lambda: monitor.run_once()[SPEC.key].condition == Condition.HEALTHY, timeout=10)


def test_idle_grace_keeps_the_mount_until_gc(hepvol_env: HepvolEnv) -> None:
    config = Config(**{**vars(hepvol_env.config), "idle_unmount_seconds": 0.5}).validate()
    manager = MountManager(config)
    target = str(hepvol_env.targets / "pod")
    manager.publish(SPEC, Consumer("csi", target), target)
    backing = manager.backing_path(SPEC)
    manager.unpublish(target)
    assert backing is not None and MountTable().at(backing) is not None
    assert manager.gc_idle() == [], "not idle long enough yet"
    # A new consumer within the grace period reuses the mount.
    manager.publish(SPEC, Consumer("csi", target), target)
    manager.unpublish(target)
    time.sleep(0.6)
    assert manager.gc_idle() == [SPEC.key]
    assert MountTable().at(backing) is None and manager.status() == []


@pytest.mark.parametrize("command", [["reconcile"], ["gc"], ["status"]])
def test_cli_commands_answer(hepvol_env: HepvolEnv, command: list[str]) -> None:
    _publish_two(hepvol_env)
    result = hepvol_cli(hepvol_env, *command)
    assert result.returncode == 0, result.stderr
    if command == ["status"]:
        assert SAMPLE in result.stdout and "pod-a" in result.stdout
