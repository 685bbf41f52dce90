"""FUSE servers started in server_cgroups survive the death of the daemon's container.

A container runtime stops a container by killing every process in its cgroup. The
"pod" here is a cgroup of its own holding a daemon that publishes a volume; it is
killed with ``cgroup.kill``, the way a runtime does it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import HepvolEnv, start_publishing_daemon, wait_for, write_config


def _cgroup2_root() -> Path:
    for entry in MountTable().entries:
        if entry.fstype == "cgroup2":
            return Path(entry.mount_point)
    pytest.fail("no cgroup2 hierarchy is mounted on this machine")


@pytest.fixture
def cgroups(hepvol_env: HepvolEnv) -> Iterator[tuple[Path, Path]]:
    root = _cgroup2_root()
    pod, fuse = root / f"hepvol-test-{os.getpid()}-pod", root / f"hepvol-test-{os.getpid()}-fuse"
    try:
        yield pod, fuse
    finally:
        for group in (pod, fuse):
            if group.exists():
                (group / "cgroup.kill").write_text("1")
                wait_for(lambda g=group: not (g / "cgroup.procs").read_text().strip(), timeout=5)
                with contextlib.suppress(OSError):
                    group.rmdir()


def _run_pod(env: HepvolEnv, pod: Path, target: str) -> subprocess.Popen[str]:
    wrapper = (sys.executable, "-m", "mount_core.cgroups", "--cgroup", str(pod), "--")
    return start_publishing_daemon(env, target, wrapper)


def _kill_pod(pod: Path, daemon: subprocess.Popen[str]) -> None:
    (pod / "cgroup.kill").write_text("1")
    daemon.wait(timeout=10)
    assert wait_for(lambda: not (pod / "cgroup.procs").read_text().strip(), timeout=5)


def _read_errno(target: str) -> int:
    try:
        Path(target, "README").read_text()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_servers_in_server_cgroups_outlive_the_daemons_container(
    hepvol_env: HepvolEnv, cgroups: tuple[Path, Path]
) -> None:
    pod, fuse = cgroups
    hepvol_env.config = replace(hepvol_env.config, server_cgroups=(str(fuse),)).validate()
    write_config(hepvol_env.workdir, hepvol_env.config)
    target = str(hepvol_env.targets / "pod")
    daemon = _run_pod(hepvol_env, pod, target)
    [server] = hepvol_env.server_pids()
    assert str(server) in (fuse / "cgroup.procs").read_text().split()

    _kill_pod(pod, daemon)
    assert _read_errno(target) == 0, "the volume broke when the daemon's container died"
    assert Path(target, "README").read_text() == "sample trunk\n"
    manager = hepvol_env.manager()
    assert manager.reconcile().remounted == []
    assert manager.unpublish(target) is True
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


def test_without_server_cgroups_the_container_takes_its_servers_along(
    hepvol_env: HepvolEnv, cgroups: tuple[Path, Path]
) -> None:
    """The control: what server_cgroups prevents (and what reconcile then repairs)."""
    pod, _fuse = cgroups
    target = str(hepvol_env.targets / "pod")
    daemon = _run_pod(hepvol_env, pod, target)
    _kill_pod(pod, daemon)
    assert wait_for(lambda: _read_errno(target) == errno.ENOTCONN, timeout=5)
    manager = hepvol_env.manager()
    assert manager.reconcile().remounted == ["cvmfs-sample.hepvol.org"]
    assert Path(target, "README").read_text() == "sample trunk\n"
