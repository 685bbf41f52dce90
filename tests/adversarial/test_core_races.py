"""#14 items 1, 5 and 6: identical publishes at once, a repair that cannot remount, state damage.

Real FUSE mounts and binds; every test is bounded by the configured timeouts.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
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


# One short-lived core process (a FlexVolume call): publish a pod's target, then unpublish it.
FLEX_CALL = """
import sys
from mount_core.config import load
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec
target = sys.argv[1]
manager = MountManager(load())
spec = VolumeSpec(backend="cvmfs", repository=sys.argv[2])
manager.publish(spec, Consumer("flex", target), target)
manager.unpublish(target)
"""


@pytest.mark.parametrize("first", ["a FlexVolume call", "the daemon"])
@pytest.mark.parametrize("removed", [("",), ("", "-wal", "-shm")], ids=["db", "db-wal-shm"])
def test_a_deleted_ledger_never_takes_mounts_from_live_consumers(
    hepvol_env: HepvolEnv, first: str, removed: tuple[str, ...]
) -> None:
    """#14 item 6: ledger.db deleted while a daemon runs, then a FlexVolume call and a restart.

    Whoever touches the ledger first: the daemon writes back its open copy; a new
    process rebuilds it from the mount table and the daemon adds what it knew.
    """
    daemon = hepvol_env.manager()
    live = [hepvol_env.targets / name for name in ("csi-a", "csi-b")]
    for target in live:
        daemon.publish(SPEC, Consumer("csi", str(target)), str(target))
    for suffix in removed:
        os.unlink(hepvol_env.config.ledger_path + suffix)
    if first == "the daemon":
        [status] = daemon.status()  # its health loop or any call notices at once
        assert sorted(c.id for c in status.consumers) == sorted(f"csi:{t}" for t in live)
        assert os.path.exists(hepvol_env.config.ledger_path)
    pod = hepvol_env.targets / "flex-pod"
    pod.mkdir()
    call = subprocess.run([sys.executable, "-c", FLEX_CALL, str(pod), SAMPLE],
                          env=hepvol_env.environ(), capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert call.returncode == 0, call.stderr
    assert all((t / "README").read_text() == "sample trunk\n" for t in live), "mount taken away"
    # What anyone asks now sees the live consumers, and a restart's reconcile keeps them.
    restarted = hepvol_env.manager()
    assert sorted(c.target or "" for s in restarted.status() for c in s.consumers) == sorted(
        str(t) for t in live
    )
    restarted.reconcile()
    assert all((t / "README").read_text() == "sample trunk\n" for t in live), "unbound at restart"
    # The daemon that kept running goes on without a restart; the last one out unmounts.
    assert daemon.unpublish(str(live[0]))
    [status] = restarted.status()
    assert [c.id for c in status.consumers] == [f"csi:{live[1]}"], "the daemon's records are back"
    assert restarted.unpublish(str(live[1]))
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
    assert hepvol_env.manager().status() == []
