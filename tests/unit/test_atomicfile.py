"""mount_core.atomicfile: readers see the old file or the new one, never a part, never a link."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mount_core.atomicfile import write_atomically


def test_replaces_with_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "client.conf"
    path.write_text("old\n")
    write_atomically(str(path), "CVMFS_REPOSITORIES=a\n", 0o640)
    assert path.read_text() == "CVMFS_REPOSITORIES=a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["client.conf"]


def test_a_failed_replace_leaves_what_was_there_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "cvmfs.map"
    path.mkdir()  # something the rename cannot replace
    (path / "kept").write_text("kept\n")
    with pytest.raises(OSError):
        write_atomically(str(path), "new\n", 0o755)
    assert (path / "kept").read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cvmfs.map"]


def test_a_symlink_planted_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    path = tmp_path / "eos.conf"
    path.symlink_to(victim)
    write_atomically(str(path), "new\n")
    assert victim.read_text() == "untouched\n"
    assert not path.is_symlink() and path.read_text() == "new\n"
