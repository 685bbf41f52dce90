"""``hepvol install docker`` / ``uninstall docker`` rendered into a temporary root.

Runs the real command, then checks what systemd would load: the units through
``systemd-analyze verify`` (when installed), the enable links, the config file
through hepvol's own loader, and the unit's command line through hepvol's parser.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hepvol import cli
from mount_core import config as config_module
from tests.conftest import REPO

UNITS = Path("etc/systemd/system")


def hepvol(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEPVOL_")}
    env["HEPVOL_CONFIG"] = os.devnull
    return subprocess.run([sys.executable, "-m", "hepvol", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)  # fmt: skip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    target = tmp_path / "root"
    target.mkdir()
    return target


def test_install_writes_enabled_units_config_and_state_dirs(root: Path) -> None:
    result = hepvol("install", "docker", "--drivers", "cvmfs,eos", "--root", str(root))
    assert result.returncode == 0, result.stderr
    for driver in ("cvmfs", "eos"):
        unit = root / UNITS / f"hepvol-docker-{driver}.service"
        text = unit.read_text()
        # Rendered from the one source: everything but ExecStart's program is the same.
        source = (REPO / "deploy/docker/systemd" / unit.name).read_text().splitlines()
        rendered = text.splitlines()[1:]
        assert [a for a, b in zip(source, rendered, strict=True) if a != b] == [
            line for line in source if line.startswith("ExecStart=")
        ]
        assert "Before=docker.service" in text and "KillMode=process" in text
        for target in ("multi-user.target", "docker.service"):
            link = root / UNITS / f"{target}.wants" / unit.name
            assert os.readlink(link) == f"../{unit.name}"
            assert link.resolve() == unit.resolve()
    loaded = config_module.load(str(root / "etc/hepvol/config.toml"), env={})
    assert (loaded.cvmfs.client, loaded.eos.client) == ("cvmfs2", "eosxd")
    state = root / loaded.state_dir.lstrip("/")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (root / loaded.mount_root.lstrip("/")).is_dir()


def test_unit_command_is_a_valid_hepvol_command_line(root: Path) -> None:
    assert hepvol("install", "docker", "--drivers", "eos", "--root", str(root)).returncode == 0
    text = (root / UNITS / "hepvol-docker-eos.service").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert os.access(argv[0], os.X_OK), argv[0]
    first = 3 if argv[1:3] == ["-m", "hepvol"] else 1
    args = cli.build_parser().parse_args(argv[first:])
    assert (args.command, args.driver) == ("docker-plugin", "eos")
    assert not (root / UNITS / "hepvol-docker-cvmfs.service").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(root: Path, tmp_path: Path) -> None:
    assert hepvol("install", "docker", "--root", str(root)).returncode == 0
    checked = tmp_path / "verify"
    checked.mkdir()
    for driver in ("cvmfs", "eos"):
        unit = root / UNITS / f"hepvol-docker-{driver}.service"
        result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # The same check notices a unit systemd would half-ignore.
    broken = checked / "hepvol-docker-broken.service"
    broken.write_text(unit.read_text().replace("KillMode=process", "KillMode=processes"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert "kill mode" in result.stderr


def test_reinstall_keeps_an_edited_config_and_uninstall_keeps_state(root: Path) -> None:
    assert hepvol("install", "docker", "--root", str(root)).returncode == 0
    config_file = root / "etc/hepvol/config.toml"
    config_file.write_text('state_dir = "/srv/hepvol"\nmount_root = "/srv/hepvol/mounts"\n')
    again = hepvol("install", "docker", "--drivers", "cvmfs", "--root", str(root))
    assert again.returncode == 0 and f"kept {config_file}" in again.stdout
    assert config_file.read_text().startswith('state_dir = "/srv/hepvol"')

    result = hepvol("uninstall", "docker", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not list((root / UNITS).glob("*.service"))
    for target in ("multi-user.target", "docker.service"):
        assert list((root / UNITS / f"{target}.wants").iterdir()) == []
    assert config_file.exists() and (root / "var/lib/hepvol").is_dir()
    assert hepvol("uninstall", "docker", "--root", str(root)).returncode == 0  # idempotent


def test_unknown_driver_is_refused_and_nothing_is_written(root: Path) -> None:
    result = hepvol("install", "docker", "--drivers", "cvmfs,nfs", "--root", str(root))
    assert result.returncode == 2
    assert "--drivers" in result.stderr and "cvmfs, eos" in result.stderr
    assert list(root.iterdir()) == []
