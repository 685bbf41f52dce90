"""No setuid program or device file of a repository ever works inside a consumer.

Issue #14 item 12: a setuid-root file in a repository ran as root in a non-root
pod, because the container runtime's own bind of the target is remounted without
``nosuid``. As the CVMFS client does by default, the embedded server shows no
setuid/setgid bits and no device files, whatever the mount flags of a bind made
later, and every mount hepvol makes (backing and target) is ``nosuid,nodev``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_core import bind
from mount_core.consumer import Consumer
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.adversarial.conftest import WorldFactory
from tests.conftest import HepvolEnv

REPOSITORY = "suid.hepvol.org"
NOBODY = 65534


@pytest.fixture
def setuid_world(make_env: WorldFactory) -> HepvolEnv:
    env = make_env()
    root = env.make_repo(REPOSITORY, {"README": "setuid test\n"})
    (root / "bin").mkdir()
    program = root / "bin" / "id"
    shutil.copy("/usr/bin/id", program)
    os.chown(program, 0, 0)
    os.chmod(program, 0o6755)  # setuid and setgid root
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "mem", 0o666 | stat.S_IFCHR, os.makedev(1, 1))
    return env


@pytest.fixture
def runtime_bind() -> Iterator[Path]:
    """A world-traversable place where the 'container runtime' binds a target."""
    place = Path(tempfile.mkdtemp(prefix="hepvol-ctr-", dir="/run"))
    place.chmod(0o755)
    try:
        yield place
    finally:
        bind.unmount(str(place), lazy=True)
        place.rmdir()


def _options(path: str) -> set[str]:
    entry = MountTable().at(path)
    assert entry is not None, f"nothing mounted at {path}"
    return set(entry.options.split(","))


def test_setuid_file_runs_as_the_caller_through_a_runtimes_bind_without_nosuid(
    setuid_world: HepvolEnv, runtime_bind: Path
) -> None:
    manager = setuid_world.manager()
    target = setuid_world.targets / "pod"
    spec = VolumeSpec(backend="cvmfs", repository=REPOSITORY)
    manager.publish(spec, Consumer("csi", "pod"), str(target))
    backing = manager.backends.local.path_for(spec)
    for path in (backing, str(target)):
        assert {"nosuid", "nodev"} <= _options(path), path
    # What containerd does with a read-only volume: bind, then remount read-only,
    # which drops the nosuid the bind inherited.
    bind.mount(str(target), str(runtime_bind), None, bind.MS_BIND)
    bind.mount(None, str(runtime_bind), None, bind.MS_BIND | bind.MS_REMOUNT | bind.MS_RDONLY)
    assert "nosuid" not in _options(str(runtime_bind))

    program = runtime_bind / "bin" / "id"
    assert not program.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    for flag in ("-u", "-g"):  # effective uid and gid of the program as it ran
        ran = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             str(program), flag],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert ran.stdout.strip() == str(NOBODY), f"id {flag} ran as {ran.stdout.strip()}"
    assert "mem" not in os.listdir(runtime_bind / "dev")
    assert not (runtime_bind / "dev" / "mem").exists()
