"""A full state-dir file system: clear errors, the ledger intact, nothing half-done."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.errors import HepvolError
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv

TRUNK = VolumeSpec(backend="cvmfs", repository=SAMPLE)
PINNED = VolumeSpec(backend="cvmfs", repository=SAMPLE, tag="v1")


@pytest.fixture
def small_state(hepvol_env: HepvolEnv) -> Iterator[Path]:
    state = hepvol_env.workdir / "small-state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)],
                   check=True)  # fmt: skip
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        for i in range(10000):
            (directory / f"f{i}").touch()


def test_full_state_dir(hepvol_env: HepvolEnv, small_state: Path) -> None:
    config = replace(hepvol_env.config, state_dir=str(small_state)).validate()
    manager = MountManager(config)
    first = str(hepvol_env.targets / "first")
    manager.publish(TRUNK, Consumer("csi", first), first)
    mounts_before = sorted(e.mount_point for e in MountTable().under(str(hepvol_env.workdir)))

    _fill(small_state)
    second = str(hepvol_env.targets / "second")
    for spec in (TRUNK, PINNED):
        with pytest.raises(HepvolError) as info:
            manager.publish(spec, Consumer("csi", second), second)
        message = str(info.value)
        assert "full" in message or "space" in message, message
    with pytest.raises(HepvolError, match=r"full|space"):
        manager.unpublish(first)

    mounts_after = sorted(e.mount_point for e in MountTable().under(str(hepvol_env.workdir)))
    assert mounts_after == mounts_before, "nothing half-done is left mounted"
    assert not Path(second).exists()
    with open(f"{first}/README") as handle:
        assert handle.read() == "sample trunk\n"

    (small_state / "filler").unlink()
    for leftover in small_state.glob("f*"):
        leftover.unlink()
    fresh = MountManager(config)
    [backing] = fresh.status()
    assert [c.target for c in backing.consumers] == [first], "the ledger is intact"
    assert fresh.reconcile().failed == {}
    fresh.publish(PINNED, Consumer("csi", second), second)
    assert fresh.unpublish(second) and fresh.unpublish(first)
    assert list(MountTable().under(str(hepvol_env.config.mount_root))) == []
