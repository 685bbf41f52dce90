"""#14 items 1, 5 and 6: identical publishes at once, a repair that cannot remount, state damage.

Real FUSE mounts and binds; every test is bounded by the configured timeouts.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition
from mount_core.spec import VolumeSpec
from tests.adversarial.conftest import WorldFactory
from tests.conftest import SAMPLE, HepvolEnv, wait_for

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)
TRIALS = 25
CALLERS = 4


def _binds_at(target: str) -> int:
    return sum(1 for e in MountTable().entries if e.mount_point == target)


def _read_error(path: Path) -> int | None:
    """The errno a consumer gets listing ``path``, None when it lists fine."""
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno
    return None


def test_identical_publishes_at_once_bind_exactly_once(hepvol_env: HepvolEnv) -> None:
    """kubelet retries NodePublishVolume while the first call runs: each trial, several
    identical calls on a fresh target (each its own core, as separate processes have)."""
    managers = [hepvol_env.manager() for _ in range(CALLERS)]
    managers[0].publish(SPEC, Consumer("cli", "keep-mounted"), str(hepvol_env.targets / "keep"))
    problems: list[str] = []
    for trial in range(TRIALS):
        target = str(hepvol_env.targets / f"pod-{trial}")
        start = threading.Barrier(CALLERS)
        failures: list[str] = []

        def publish(index: int, target: str = target, start: threading.Barrier = start,
                    failures: list[str] = failures) -> None:  # fmt: skip
            start.wait()
            try:
                managers[index].publish(SPEC, Consumer("csi", target), target)
            except Exception as exc:  # every caller must be answered OK
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        binds = _binds_at(target)
        readable = os.path.isdir(target) and "README" in os.listdir(target)
        if failures or binds != 1 or not readable:
            problems.append(f"trial {trial}: {failures} binds={binds} readable={readable}")
        managers[0].unpublish(target)
        if _binds_at(target) or os.path.exists(target):
            problems.append(f"trial {trial}: unpublish left {target} behind")
    assert problems == []


def test_a_repair_that_cannot_remount_leaves_an_io_error_not_an_empty_dir(
    make_env: WorldFactory,
) -> None:
    """#14 item 5: the FUSE server dies and the volume cannot be mounted again."""
    env = make_env()
    manager = env.manager()
    targets = [env.targets / name for name in ("a", "b")]
    for target in targets:
        manager.publish(SPEC, Consumer("csi", str(target)), str(target))
    [pid] = env.server_pids()
    os.kill(pid, signal.SIGKILL)
    hidden = env.repos / (SAMPLE + ".away")
    os.rename(env.repos / SAMPLE, hidden)  # the repository is gone: remounting fails
    monitor = HealthMonitor(manager)
    for _ in range(2):  # a failed repair, then another try that fails too
        monitor.run_once()
        for target in targets:
            assert _read_error(target) in (errno.ENOTCONN, errno.EIO), "never an empty dir"
            with pytest.raises(OSError):
                (target / "planted").write_text("x")
    [status] = manager.status()
    assert status.condition == Condition.FAILED and "repair failed" in status.message
    os.rename(hidden, env.repos / SAMPLE)  # the volume is back: the next pass serves it
    assert wait_for(lambda: bool(monitor.run_once()) and _read_error(targets[0]) is None, 20)
    assert all((t / "README").read_text() == "sample trunk\n" for t in targets)
    assert manager.status()[0].condition == Condition.HEALTHY


def test_removed_locks_dir_is_recreated_by_the_next_call(hepvol_env: HepvolEnv) -> None:
    """#14 item 6: `state/locks` removed while daemons run; later calls work without restart."""
    daemon = hepvol_env.manager()
    first = str(hepvol_env.targets / "first")
    daemon.publish(SPEC, Consumer("csi", first), first)
    shutil.rmtree(Path(hepvol_env.config.state_dir) / "locks")
    second = str(hepvol_env.targets / "second")
    daemon.publish(SPEC, Consumer("csi", second), second)
    assert daemon.unpublish(first) and daemon.unpublish(second)
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
