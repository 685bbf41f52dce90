"""The ``hepvol`` command as an operator meets it: version, option placement, one
verb for installing, human text by default and JSON on request, and one line (never
a traceback) for ordinary mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE, HepvolEnv, hepvol_cli
from tests.e2e.dockerd import Dockerd, make_plugin


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_version(hepvol_env: HepvolEnv) -> None:
    result = hepvol_cli(hepvol_env, "--version")
    assert result.returncode == 0 and result.stdout.startswith("hepvol 0."), result


def test_global_options_go_before_or_after_the_command(hepvol_env: HepvolEnv) -> None:
    other = hepvol_env.workdir / "other-state"
    before = hepvol_cli(hepvol_env, "--state-dir", str(other), "status", "--json")
    after = hepvol_cli(hepvol_env, "status", "--state-dir", str(other), "--json")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert before.stdout == after.stdout
    assert (other / "ledger.db").exists(), "the option took effect"
    refused = hepvol_cli(hepvol_env, "gc", "--log-level", "verbose")
    assert "log_level is 'verbose': use one of DEBUG, INFO, WARNING, ERROR" in _one_line(refused)


def test_reconcile_and_gc_print_text_and_json_on_request(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    from mount_core.consumer import Consumer
    from mount_core.spec import VolumeSpec

    target = hepvol_env.targets / "t1"
    manager.publish(VolumeSpec(backend="cvmfs", repository=SAMPLE), Consumer("csi", "t1"),
                    str(target))  # fmt: skip
    subprocess.run(["umount", "-l", str(target)], check=True)  # a target lost, as on a reboot
    text = hepvol_cli(hepvol_env, "reconcile")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "reconcile:"
    assert "  rebound: 1\n    csi:t1\n" in text.stdout and "  failed: none\n" in text.stdout
    again = hepvol_cli(hepvol_env, "reconcile", "--json")
    assert json.loads(again.stdout)["rebound"] == []
    assert hepvol_cli(hepvol_env, "reconcile").stdout == "reconcile: nothing to do\n"
    gc = hepvol_cli(hepvol_env, "gc")
    assert gc.stdout.startswith("gc:\n") and "unmounted idle: none" in gc.stdout, gc.stdout
    assert "unmounted_idle" in json.loads(hepvol_cli(hepvol_env, "gc", "--json").stdout)
    manager.unpublish(str(target))


def test_one_verb_installs_and_uninstalls_flexvolume_and_docker(
    hepvol_env: HepvolEnv, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    installed = hepvol_cli(hepvol_env, "install", "flexvolume", "--plugin-dir", str(plugins))
    assert installed.returncode == 0, installed.stderr
    assert os.access(plugins / "cern~cvmfs" / "cvmfs", os.X_OK)
    removed = hepvol_cli(hepvol_env, "uninstall", "flexvolume", "--plugin-dir", str(plugins))
    assert removed.returncode == 0 and not (plugins / "cern~cvmfs" / "cvmfs").exists()
    old = hepvol_cli(hepvol_env, "flexvolume", "install", "--plugin-dir", str(plugins))
    assert old.returncode == 0 and (plugins / "cern~eos" / "eos").exists(), "the old spelling"
    root = tmp_path / "host"
    docker = hepvol_cli(hepvol_env, "install", "docker", "--root", str(root))
    assert docker.returncode == 0, docker.stderr
    assert hepvol_cli(hepvol_env, "uninstall", "docker", "--root", str(root)).returncode == 0


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["reconcile"], ["gc"],
                                     ["credential", "list"]])  # fmt: skip
def test_as_another_user_every_command_says_it_must_run_as_root(
    hepvol_env: HepvolEnv, command: list[str]
) -> None:
    # The state dir is root's 0700, as hepvol makes it: no "chown" advice for it.
    hepvol_env.manager()
    result = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
         sys.executable, "-m", "hepvol", *command],
        env={**hepvol_env.environ(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60, check=False, cwd="/",
    )  # fmt: skip
    line = _one_line(result)
    assert line.startswith("hepvol must run as root (") and "chown" not in line


def test_a_plugin_socket_served_by_another_plugin_is_one_line(
    hepvol_env: HepvolEnv, tmp_path: Path
) -> None:
    for plugin in make_plugin(hepvol_env, Dockerd(tmp_path / "no-engine")):
        second = hepvol_cli(hepvol_env, "docker-plugin", "--driver", "cvmfs", "--name",
                            plugin.driver, timeout=120)  # fmt: skip
        line = _one_line(second)
        assert f"--socket {plugin.socket}: another process (pid" in line
        assert "stop it first or pick another --socket" in line
        assert plugin.answers(), "the running plugin is untouched"


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
         sys.executable, "-m", "hepvol", *args],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}, capture_output=True,
        text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip


def test_permission_denied_is_one_line_naming_the_fix(hepvol_env: HepvolEnv) -> None:
    config = hepvol_env.workdir / "private.toml"
    config.write_text("")
    config.chmod(0o600)
    hepvol_env.workdir.chmod(0o755)
    hepvol_env.workdir.parent.chmod(0o755)
    line = _one_line(_as_nobody("--config", str(config), "install", "docker", "--root", "/"))
    assert f"cannot read config file {config}: Permission denied (run hepvol as root)" in line
    root = hepvol_env.workdir / "host"
    root.mkdir(mode=0o755)
    line = _one_line(_as_nobody("--config", os.devnull, "install", "docker", "--root", str(root)))
    assert line.startswith("hepvol: Permission denied (") and "(run hepvol as root)" in line
