"""Publishing and unpublishing with real FUSE and bind mounts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.errors import Conflict, InvalidTarget, NotFound, StateError
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv

TRUNK = VolumeSpec(backend="cvmfs", repository=SAMPLE)
PINNED = VolumeSpec(backend="cvmfs", repository=SAMPLE, tag="v1")


def csi(target: Path) -> Consumer:
    return Consumer("csi", str(target))


def test_publish_shows_repository_read_only_and_unpublish_removes_everything(
    hepvol_env: HepvolEnv,
) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "pod1"
    manager.publish(TRUNK, csi(target), str(target))
    assert (target / "README").read_text() == "sample trunk\n"
    entry = MountTable().at(str(target))
    assert entry is not None and entry.readonly
    assert {"nosuid", "nodev"} <= set(entry.options.split(","))
    with pytest.raises(OSError) as info:
        (target / "new").write_text("x")
    assert info.value.errno == errno.EROFS
    assert manager.unpublish(str(target)) is True
    assert not target.exists(), "the target directory hepvol created is removed"
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
    assert manager.status() == []


def test_every_operation_is_idempotent(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "pod"
    for _ in range(3):
        manager.publish(TRUNK, csi(target), str(target))
    [backing] = manager.status()
    assert len(backing.consumers) == 1
    assert len([e for e in MountTable().entries if e.mount_point == str(target)]) == 1
    assert manager.unpublish(str(target)) is True
    assert manager.unpublish(str(target)) is False
    assert manager.unpublish(str(hepvol_env.targets / "never-published")) is False
    assert manager.release(Consumer("flex", "/nothing")) is False


def test_pinned_tag_and_trunk_coexist(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    a, b = hepvol_env.targets / "a", hepvol_env.targets / "b"
    manager.publish(TRUNK, csi(a), str(a))
    manager.publish(PINNED, csi(b), str(b))
    assert (a / "README").read_text() == "sample trunk\n"
    assert (b / "README").read_text() == "sample v1\n"
    assert len(manager.status()) == 2
    manager.unpublish(str(a))
    manager.unpublish(str(b))
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


def test_different_volume_at_a_published_target_is_a_conflict(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "pod"
    manager.publish(TRUNK, csi(target), str(target))
    with pytest.raises(Conflict, match="already has a different volume"):
        manager.publish(PINNED, csi(target), str(target))
    assert (target / "README").read_text() == "sample trunk\n"
    assert len(manager.status()) == 1, "the refused spec was not mounted"


def test_target_with_spaces_and_unicode_round_trips(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "pod with\tspaces é"
    manager.publish(TRUNK, csi(target), str(target))
    assert (target / "README").read_text() == "sample trunk\n"
    assert MountTable().at(str(target)) is not None
    assert manager.unpublish(str(target)) is True
    assert MountTable().at(str(target)) is None


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("relative/path", "must be absolute"),
        ("/tmp/elsewhere/pod", "outside the allowed target roots"),
        ("{targets}/../escape", "must not contain"),
        ("{targets}/new\nline", "control characters"),
        ("{targets}/nul\x00byte", "control characters"),
        ("{targets}/missing-parent/pod", "does not exist"),
    ],
)
def test_bad_targets_are_refused_and_nothing_is_mounted(
    hepvol_env: HepvolEnv, target: str, message: str
) -> None:
    manager = hepvol_env.manager()
    target = target.format(targets=hepvol_env.targets)
    with pytest.raises(InvalidTarget, match=message):
        manager.publish(TRUNK, csi(Path("/x")), target)
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
    assert manager.status() == []


def test_symlinked_targets_are_refused(hepvol_env: HepvolEnv, tmp_path: Path) -> None:
    manager = hepvol_env.manager()
    outside = tmp_path / "outside"
    outside.mkdir()
    (hepvol_env.targets / "link").symlink_to(outside)
    (hepvol_env.targets / "parentlink").symlink_to(outside)
    for target in (hepvol_env.targets / "link", hepvol_env.targets / "parentlink" / "pod"):
        with pytest.raises(InvalidTarget, match="symlink"):
            manager.publish(TRUNK, csi(target), str(target))
    assert list(MountTable().under(str(tmp_path))) == []
    assert list(outside.iterdir()) == []


def test_unknown_repository_is_not_found_and_leaves_nothing(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "pod"
    spec = VolumeSpec(backend="cvmfs", repository="missing.cern.ch")
    with pytest.raises(NotFound, match=r"missing\.cern\.ch"):
        manager.publish(spec, csi(target), str(target))
    assert not target.exists()
    assert manager.status() == []
    assert os.listdir(hepvol_env.config.mount_root) == []


def test_existing_target_directory_is_kept_after_unpublish(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "kubelet-made"
    target.mkdir()
    manager.publish(TRUNK, csi(target), str(target))
    manager.unpublish(str(target))
    assert target.is_dir(), "a directory hepvol did not create is not removed"


def test_unpublish_of_a_target_whose_directory_is_gone(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    assert manager.unpublish(str(hepvol_env.targets / "gone" / "deeper")) is False


def test_state_dir_writable_by_others_is_refused(hepvol_env: HepvolEnv) -> None:
    state = Path(hepvol_env.config.state_dir)
    state.chmod(0o777)
    try:
        with pytest.raises(StateError, match="writable by a user other than root"):
            hepvol_env.manager()
    finally:
        state.chmod(0o700)
