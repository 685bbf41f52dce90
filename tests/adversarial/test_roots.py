"""Every root hepvol creates or mounts into is checked like the state dir.

Issue #14 item 8: ``mount_root`` had no ownership check, so if others could write
it a planted symlink made root mount over any directory; under umask 0 it was
created 0777. Now the state dir, mount root, its mount points and the lock, run
and log directories are created with their exact mode whatever the umask, and a
root that is a symlink, or writable by someone other than root, is refused with
one line naming it and the fix, before anything is mounted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mount_core.config import Config
from mount_core.consumer import Consumer
from mount_core.errors import StateError
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.adversarial.conftest import WorldFactory
from tests.conftest import SAMPLE, HepvolEnv

TRUNK = VolumeSpec(backend="cvmfs", repository=SAMPLE)
NOBODY = 65534


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _fresh(env: HepvolEnv, root: Path) -> Config:
    """The world's config with a state dir and mount root that do not exist yet."""
    return Config(
        state_dir=str(root / "state"),
        mount_root=str(root / "deep" / "mounts"),
        target_roots=env.config.target_roots,
        local=env.config.local,
        mount_timeout_seconds=20.0,
    ).validate()


def test_roots_created_under_umask_0_get_their_exact_modes(make_env: WorldFactory) -> None:
    env = make_env()
    config = _fresh(env, env.workdir / "fresh")
    old = os.umask(0)
    try:
        manager = MountManager(config)
        manager.publish(TRUNK, Consumer("csi", "pod"), str(env.targets / "pod"))
    finally:
        os.umask(old)
    assert _mode(config.state_dir) == 0o700
    assert _mode(os.path.dirname(config.mount_root)) == 0o755
    assert _mode(config.mount_root) == 0o755
    for name in ("locks", "run", "logs"):
        assert _mode(os.path.join(config.state_dir, name)) == 0o700, name
    assert (env.targets / "pod" / "README").read_text() == "sample trunk\n"
    manager.unpublish(str(env.targets / "pod"))


@pytest.mark.parametrize("damage", ["others may write", "owned by nobody"])
def test_mount_root_writable_by_others_is_refused(make_env: WorldFactory, damage: str) -> None:
    env = make_env()
    if damage == "others may write":
        os.chmod(env.config.mount_root, 0o777)
    else:
        os.chown(env.config.mount_root, NOBODY, NOBODY)
    with pytest.raises(StateError) as refused:
        env.manager()
    message = str(refused.value)
    assert f"mount_root {env.config.mount_root} is writable by a user other than root" in message
    assert f"chown root:root {env.config.mount_root} && chmod 0755" in message
    assert "\n" not in message


def test_a_planted_symlink_in_the_mount_root_never_moves_a_mount(
    make_env: WorldFactory,
) -> None:
    env = make_env()
    elsewhere = env.workdir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("host file\n")
    manager = env.manager()
    planted = Path(manager.backends.local.path_for(TRUNK))
    planted.symlink_to(elsewhere)
    target = env.targets / "pod"

    with pytest.raises(StateError, match=f"mount point {planted} is a symlink .* rm {planted}"):
        manager.publish(TRUNK, Consumer("csi", "pod"), str(target))

    assert MountTable().at(str(elsewhere)) is None
    assert (elsewhere / "precious").read_text() == "host file\n"
    assert list(MountTable().under(str(env.workdir))) == []
    assert manager.ledger.backings() == [] and manager.ledger.consumers() == []
    assert not target.exists()


@pytest.mark.parametrize("root", ["state_dir", "mount_root", "target root"])
def test_a_root_that_is_a_symlink_is_refused(make_env: WorldFactory, root: str) -> None:
    env = make_env()
    real = env.workdir / "real"
    if root == "target root":
        real.mkdir()
        link = Path(env.config.target_roots[0])
        link.rmdir()
        link.symlink_to(real)
        manager = env.manager()
        with pytest.raises(StateError, match=f"target root {link} is a symlink"):
            manager.publish(TRUNK, Consumer("csi", "pod"), str(link / "pod"))
        assert list(MountTable().under(str(env.workdir))) == []
        return
    link = Path(getattr(env.config, root))
    link.rename(real)
    link.symlink_to(real)
    with pytest.raises(StateError, match=f"{link} is a symlink"):
        env.manager()
