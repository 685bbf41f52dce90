"""No consumer gets an empty or wrong directory: real mounts hidden under a tmpfs.

A tmpfs over a pod's directory hides the target's bind, a tmpfs over the mount
root hides the backing mount (what a container's state volume does to the mounts
inside it); their mountinfo rows stay and look right. Publish and reconcile go by
what the paths really reach.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mount_core import bind
from mount_core.consumer import Consumer
from mount_core.errors import InvalidTarget
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)


def _cover(path: Path) -> None:
    bind.mount("tmpfs", str(path), "tmpfs", bind.MS_NOSUID | bind.MS_NODEV)


def _readme(target: Path) -> str:
    return (target / "README").read_text()


def test_a_target_hidden_by_a_mount_over_its_pod_dir_is_refused_then_rebound(
    hepvol_env: HepvolEnv,
) -> None:
    manager = hepvol_env.manager()
    pod = hepvol_env.targets / "pod"
    pod.mkdir()
    target = pod / "vol"
    manager.publish(SPEC, Consumer("csi", str(target)), str(target))
    _cover(pod)
    assert MountTable().at(str(target)) is not None, "mountinfo still shows the bind"
    with pytest.raises(InvalidTarget, match="does not exist"):
        manager.publish(SPEC, Consumer("csi", str(target)), str(target))
    target.mkdir()  # kubelet makes the directory again
    manager.publish(SPEC, Consumer("csi", str(target)), str(target))
    assert _readme(target) == "sample trunk\n"

    _cover(pod)
    target.mkdir()
    assert manager.reconcile().rebound == [f"csi:{target}"]
    assert _readme(target) == "sample trunk\n"


def test_a_new_consumer_never_gets_the_empty_directory_of_a_hidden_backing_mount(
    hepvol_env: HepvolEnv,
) -> None:
    manager = hepvol_env.manager()
    first, second = hepvol_env.targets / "first", hepvol_env.targets / "second"
    manager.publish(SPEC, Consumer("csi", str(first)), str(first))
    _cover(Path(hepvol_env.config.mount_root))
    [row] = manager.ledger.backings()
    assert MountTable().at(row.path) is not None, "mountinfo still shows the backing mount"
    assert not os.path.exists(row.path), "but its path is gone"
    os.mkdir(row.path, 0o755)  # as an empty copy of the mount root would have it
    assert os.listdir(row.path) == []

    manager.publish(SPEC, Consumer("csi", str(second)), str(second))
    assert _readme(second) == "sample trunk\n"
    assert _readme(first) == "sample trunk\n"
    assert os.listdir(row.path) != [], "mounted again where the path now leads"
