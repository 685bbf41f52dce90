"""kill -9 at any point: reconcile restores agreement, nothing leaks, no consumer is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv, start_publishing_daemon, wait_for

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)

# The child makes one operation and SIGKILLs itself at a chosen point, by wrapping
# the function that marks that point. Nothing in the product knows about this.
CHILD = """
import os, signal, sys
from mount_core import bind, targets
from mount_core.backends.local import LocalBackend
from mount_core.config import load
from mount_core.consumer import Consumer
from mount_core.ledger import Ledger
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec

action, point, target = sys.argv[1:4]

def die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)

def after(original):
    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        die()
    return wrapper

def before_state(original, state):
    def wrapper(self, row_id, new_state):
        if new_state == state:
            die()
        return original(self, row_id, new_state)
    return wrapper

points = {
    "after-backing-mount": lambda: setattr(LocalBackend, "mount", after(LocalBackend.mount)),
    "before-bind": lambda: setattr(bind, "bind_fd", die),
    "after-bind": lambda: setattr(bind, "bind_fd", after(bind.bind_fd)),
    "before-active": lambda: setattr(Ledger, "set_consumer_state",
                                     before_state(Ledger.set_consumer_state, "active")),
    "before-unbind": lambda: setattr(targets, "release", die),
    "after-unbind": lambda: setattr(targets, "release", after(targets.release)),
    "before-backing-unmount": lambda: setattr(LocalBackend, "unmount", die),
    "after-backing-unmount": lambda: setattr(LocalBackend, "unmount", after(LocalBackend.unmount)),
}
manager = MountManager(load())
points[point]()
spec = VolumeSpec(backend="cvmfs", repository=sys.argv[4])
if action == "publish":
    manager.publish(spec, Consumer("csi", target), target)
else:
    manager.unpublish(target)
"""


def _crash(env: HepvolEnv, action: str, point: str, target: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, action, point, target, SAMPLE],
        env=env.environ(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, f"the child did not die at {point}: {child.stderr}"


def assert_agreement(env: HepvolEnv) -> None:
    """Ledger and mountinfo agree; every published target reads; nothing else is mounted."""
    manager = env.manager()
    table = MountTable()
    expected = set()
    for backing in manager.ledger.backings():
        assert backing.state == "mounted", backing
        entry = table.at(backing.path)
        assert entry is not None, f"ledger says {backing.key} is mounted but it is not"
        expected.add(backing.path)
        for consumer in manager.ledger.consumers(backing.key):
            assert consumer.state == "active", consumer
            if consumer.target:
                bound = table.at(consumer.target)
                assert bound is not None and bound.device == entry.device, consumer.target
                with open(os.path.join(consumer.target, "README")) as handle:
                    assert handle.read() == "sample trunk\n"
                expected.add(consumer.target)
    mounted = {e.mount_point for e in table.under(str(env.workdir))}
    assert mounted == expected, f"leaked: {mounted - expected}, missing: {expected - mounted}"


BIND_POINTS = ["before-bind", "after-bind", "before-active"]
UNBIND_POINTS = ["before-unbind", "after-unbind"]
BACKING_UNMOUNT_POINTS = ["before-backing-unmount", "after-backing-unmount"]


@pytest.mark.parametrize(
    ("point", "first"),
    [("after-backing-mount", True)]
    + [(p, True) for p in BIND_POINTS]
    + [(p, False) for p in BIND_POINTS],
)
def test_kill_9_during_publish(hepvol_env: HepvolEnv, point: str, first: bool) -> None:
    manager = hepvol_env.manager()
    keeper = str(hepvol_env.targets / "keeper")
    if not first:
        manager.publish(SPEC, Consumer("csi", keeper), keeper)
    target = str(hepvol_env.targets / "crashing")
    _crash(hepvol_env, "publish", point, target)
    report = manager.reconcile()
    assert not report.failed
    assert_agreement(hepvol_env)
    if not first:
        assert manager.consumer_at(keeper) is not None, "a consumer that was published was lost"
    # Whatever was half-done, the caller's retry succeeds and the target reads.
    manager.publish(SPEC, Consumer("csi", target), target)
    assert_agreement(hepvol_env)
    assert manager.consumer_at(target) is not None


@pytest.mark.parametrize(
    ("point", "last"),
    [(p, True) for p in UNBIND_POINTS + BACKING_UNMOUNT_POINTS]
    + [(p, False) for p in UNBIND_POINTS],
)
def test_kill_9_during_unpublish(hepvol_env: HepvolEnv, point: str, last: bool) -> None:
    manager = hepvol_env.manager()
    keeper = str(hepvol_env.targets / "keeper")
    target = str(hepvol_env.targets / "leaving")
    if not last:
        manager.publish(SPEC, Consumer("csi", keeper), keeper)
    manager.publish(SPEC, Consumer("csi", target), target)
    _crash(hepvol_env, "unpublish", point, target)
    report = manager.reconcile()
    assert not report.failed
    assert_agreement(hepvol_env)
    assert manager.consumer_at(target) is None, "an interrupted release was finished"
    if last:
        assert manager.status() == []
    else:
        assert manager.consumer_at(keeper) is not None
    assert manager.unpublish(target) is False


def test_mounts_outlive_a_killed_daemon_and_are_adopted(hepvol_env: HepvolEnv) -> None:
    target = str(hepvol_env.targets / "pod")
    daemon = start_publishing_daemon(hepvol_env, target)
    daemon.kill()
    daemon.wait()
    [server] = hepvol_env.server_pids()
    time.sleep(0.2)
    with open(f"{target}/README") as handle:
        assert handle.read() == "sample trunk\n", "the target broke when its daemon died"

    manager = hepvol_env.manager()
    report = manager.reconcile()
    assert report.remounted == [] and report.dropped == [] and not report.failed
    assert hepvol_env.server_pids() == [server], "the surviving FUSE server was adopted"
    assert_agreement(hepvol_env)
    assert manager.unpublish(target) is True
    assert wait_for(lambda: not os.path.exists(f"/proc/{server}"))
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


def test_reconcile_drops_consumers_whose_target_is_gone(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    kept, gone = str(hepvol_env.targets / "kept"), hepvol_env.targets / "gone"
    manager.publish(SPEC, Consumer("csi", kept), kept)
    manager.publish(SPEC, Consumer("csi", str(gone)), str(gone))
    # What a node reboot or a kubelet cleanup leaves: the bind and the directory gone.
    subprocess.run(["umount", "-l", str(gone)], check=True)
    gone.rmdir()
    subprocess.run(["umount", "-l", kept], check=True)
    report = manager.reconcile()
    assert report.dropped == [f"csi:{gone}"]
    assert report.rebound == [f"csi:{kept}"]
    assert_agreement(hepvol_env)


def test_reconcile_unmounts_orphaned_binds_but_not_foreign_mounts(
    hepvol_env: HepvolEnv,
) -> None:
    manager = hepvol_env.manager()
    target = str(hepvol_env.targets / "pod")
    manager.publish(SPEC, Consumer("csi", target), target)
    foreign = hepvol_env.targets / "foreign"
    foreign.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(foreign)], check=True)
    # A bind of ours that the ledger does not know (its consumer's row is gone).
    orphan = hepvol_env.targets / "orphan"
    orphan.mkdir()
    backing = manager.backing_path(SPEC)
    assert backing is not None
    subprocess.run(["mount", "--bind", backing, str(orphan)], check=True)
    report = hepvol_env.manager().reconcile()
    assert report.unmounted == [str(orphan)]
    remaining = sorted(e.mount_point for e in MountTable().under(str(hepvol_env.workdir)))
    assert remaining == sorted([backing, target, str(foreign)])


def test_a_lost_ledger_is_rebuilt_from_the_mount_table_not_taken_for_orphans(
    hepvol_env: HepvolEnv,
) -> None:
    """Losing the ledger used to make every mount of ours an "orphan" for the next
    start-up to unmount, live consumers or not (#14 item 6)."""
    manager = hepvol_env.manager()
    target = str(hepvol_env.targets / "pod")
    manager.publish(SPEC, Consumer("csi", target), target)
    manager.ledger.close()
    for suffix in ("", "-wal", "-shm"):
        path = hepvol_env.config.ledger_path + suffix
        if os.path.exists(path):
            os.unlink(path)
    restarted = hepvol_env.manager()
    report = restarted.reconcile()
    assert report.unmounted == [] and report.failed == {}
    assert (Path(target) / "README").read_text() == "sample trunk\n"
    [status] = restarted.status()
    assert [(c.kind, c.target) for c in status.consumers] == [("recovered", target)]
    # Its holder publishing again claims it (no second bind); unpublishing takes all down.
    restarted.publish(SPEC, Consumer("csi", target), target)
    assert [e.mount_point for e in MountTable().entries].count(target) == 1
    assert [c.id for c in restarted.status()[0].consumers] == [f"csi:{target}"]
    assert restarted.unpublish(target)
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
