"""mount_core.statedir: the state dir and its directories are root's alone, or refused in one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mount_core.errors import StateError
from mount_core.statedir import StateDir


def test_made_private_and_every_path_is_inside(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "state")).ensure()
    logs = state.private("logs")
    for path in (state.path, logs):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    for path in (state.ledger, state.locks, state.run, state.logs, state.credentials,
                 state.eos, state.autofs, state.relay_socket):  # fmt: skip
        assert os.path.dirname(path) == state.path


@pytest.mark.parametrize("planted", ["symlink", "group-writable"])
def test_a_planted_logs_dir_is_refused_naming_the_fix(tmp_path: Path, planted: str) -> None:
    state = StateDir(str(tmp_path / "state")).ensure()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "symlink":
        Path(state.logs).symlink_to(elsewhere)
    else:
        os.mkdir(state.logs, 0o770)
        os.chmod(state.logs, 0o770)
    with pytest.raises(StateError) as info:
        state.private("logs")
    assert f"logs directory {state.logs}" in str(info.value)
    assert "\n" not in str(info.value)
    assert list(elsewhere.iterdir()) == []


def test_a_file_where_the_state_dir_belongs_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(StateError) as info:
        StateDir(str(tmp_path / "state")).ensure()
    assert "state directory" in str(info.value) and "not a directory" in str(info.value)
