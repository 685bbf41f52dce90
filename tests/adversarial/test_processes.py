"""FUSE server processes: identified by more than a PID, and gone when their mount goes.

Issue #14 items 7 and 9. A pidfile outlives a server killed with ``kill -9``; when
its PID was reused by another volume's server, ``hepvol gc`` killed that server
(its pods saw ENOTCONN). An admin's ``umount -l`` of a backing mount left the
embedded server running after the repair that followed (one leaked process per
repair).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.spec import VolumeSpec
from tests.adversarial.conftest import WorldFactory
from tests.conftest import SAMPLE, hepvol_cli, wait_for
from tests.faults.invariants import fuse_servers, readable

TRUNK = VolumeSpec(backend="cvmfs", repository=SAMPLE)
PINNED = VolumeSpec(backend="cvmfs", repository=SAMPLE, tag="v1")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def test_gc_never_kills_the_server_that_reused_a_stale_pidfiles_pid(
    make_env: WorldFactory,
) -> None:
    env = make_env(idle_unmount_seconds=0.1)
    manager = env.manager()
    target = env.targets / "pod-b"
    manager.publish(PINNED, Consumer("csi", "pod-b"), str(target))
    manager.acquire(TRUNK, Consumer("cli", "idle-a"))
    manager.release(Consumer("cli", "idle-a"))  # trunk is now idle, still mounted
    backend = manager.backends.local
    trunk_path = backend.path_for(TRUNK)
    trunk_pid = backend.server_pid(trunk_path)
    pinned_pid = backend.server_pid(backend.path_for(PINNED))
    assert trunk_pid and pinned_pid
    # The trunk's server dies; its PID is reused by the pinned volume's server.
    os.kill(trunk_pid, signal.SIGKILL)
    Path(backend.pidfile(trunk_path)).write_text(f"{pinned_pid}\n")

    result = hepvol_cli(env, "gc", timeout=60)

    assert result.returncode == 0, result.stderr
    assert TRUNK.key in result.stdout
    assert _alive(pinned_pid), "gc killed another volume's FUSE server"
    assert readable(str(target)) is None
    assert (target / "README").read_text() == "sample v1\n"


def test_embedded_server_exits_after_an_admins_lazy_unmount_and_the_repair(
    make_env: WorldFactory,
) -> None:
    env = make_env()
    manager = env.manager()
    target = env.targets / "pod"
    manager.publish(TRUNK, Consumer("csi", "pod"), str(target))
    backend = manager.backends.local
    path = backend.path_for(TRUNK)
    first = backend.server_pid(path)
    assert first is not None

    for _ in range(3):  # each repair must leave exactly one server
        old = backend.server_pid(path)
        assert old is not None
        subprocess.run(["umount", "-l", path], check=True)
        HealthMonitor(manager).run_once()  # sees "not mounted" and repairs
        assert (target / "README").read_text() == "sample trunk\n"
        assert wait_for(lambda old=old: not _alive(old), timeout=10), (
            f"the server of the lazily unmounted {path} (pid {old}) is still running"
        )
    servers = fuse_servers(str(env.workdir))
    assert len(servers) == 1, servers
