"""Configuration precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mount_core.config import dumps, load
from mount_core.errors import ConfigError


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'state_dir = "/srv/file-state"\nmount_root = "/srv/file-mounts"\n'
        'idle_unmount_seconds = 5\n[local]\nroot = "/srv/file-repos"\n'
    )
    env = {"HEPVOL_MOUNT_ROOT": "/srv/env-mounts", "HEPVOL_LOCAL_ROOT": "/srv/env-repos"}
    config = load(str(path), env=env, overrides={"state_dir": "/srv/flag-state"})
    assert config.state_dir == "/srv/flag-state"
    assert config.mount_root == "/srv/env-mounts"
    assert config.local.root == "/srv/env-repos"
    assert config.idle_unmount_seconds == 5.0
    assert config.health_interval_seconds == 3.0


def test_environment_forms(tmp_path: Path) -> None:
    env = {
        "HEPVOL_CONFIG": str(tmp_path / "none.toml"),
        "HEPVOL_TARGET_ROOTS": "/var/lib/kubelet:/srv/pods",
        "HEPVOL_CVMFS_CLIENT": "cvmfs2",
        "HEPVOL_CVMFS_AUTOMOUNT": "true",
    }
    (tmp_path / "none.toml").write_text("")
    config = load(env=env)
    assert config.target_roots == ("/var/lib/kubelet", "/srv/pods")
    assert config.cvmfs.client == "cvmfs2" and config.cvmfs.automount is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stat_dir = '/x'", "unknown config key stat_dir"),
        ("[local]\nrot = '/x'", "unknown config key local.rot"),
        ("idle_unmount_seconds = 'soon'", "idle_unmount_seconds has a bad value"),
        ("target_roots = '/x'", "config key target_roots has a bad value '/x': expected a list of"),
        ("target_roots = ['/x', 3]", "target_roots has a bad value .*expected a list of strings"),
        (
            "mount_timeout_seconds = '30'",
            "mount_timeout_seconds has a bad value '30': expected a nu",
        ),
        ("[cvmfs]\nautomount = 'yes'", "cvmfs.automount has a bad value 'yes': expected true or"),
        ("state_dir = 5", "state_dir has a bad value 5: expected a string"),
        ("log_level = 'verbose'", "log_level is 'verbose': use one of DEBUG, INFO, WARNING, ERROR"),
        ("[eos]\ninstances = 'x'", "eos.instances must be a list of tables"),
        ("state_dir = 'relative'", "state_dir must be an absolute path"),
        ("target_roots = ['/var/lib/hepvol/x']", "overlaps"),
        ("[cvmfs]\nclient = 'cvmfs3'", "cvmfs.client"),
        ("state_dir = ", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(str(path), env={})


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(env={"HEPVOL_CONFIG": str(tmp_path / "missing.toml")})


def test_dumps_round_trips_every_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'state_dir = "/srv/s"\ntarget_roots = ["/srv/a b", "/srv/\\"q\\""]\n'
        "idle_unmount_seconds = 2.5\n[cvmfs]\nautomount = true\n"
        '[[eos.instances]]\nname = "eospublic"\nhostport = "eospublic.cern.ch"\n'
    )
    config = load(str(path), env={})
    again = tmp_path / "again.toml"
    again.write_text(dumps(config))
    assert load(str(again), env={}) == config


def test_environment_and_flags_are_strings_and_are_converted(tmp_path: Path) -> None:
    env = {"HEPVOL_MOUNT_TIMEOUT_SECONDS": "12", "HEPVOL_LOG_LEVEL": "debug"}
    empty = tmp_path / "config.toml"
    empty.write_text("")
    config = load(str(empty), env=env)
    assert config.mount_timeout_seconds == 12.0 and config.log_level == "debug"
    with pytest.raises(ConfigError, match="log_level is 'verbose'"):
        load(str(empty), env={}, overrides={"log_level": "verbose"})
