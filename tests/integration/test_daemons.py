"""The daemon scaffold every daemon runs on (``hepvol.daemon``): what an operator sees.

Real daemons (``hepvol docker-plugin``, ``csi``, ``watch``) started as the
operator starts them; real FUSE servers killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mount_core.consumer import Consumer
from mount_core.locks import LockDir
from mount_core.spec import VolumeSpec
from tests.conftest import REPO, SAMPLE, HepvolEnv, hepvol_cli, wait_for, write_config
from tests.e2e.dockerd import Dockerd, make_plugin
from tests.integration.test_flexvolume_watch import free_port, readme, scrape


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_docker_plugin_repairs_a_killed_server_even_when_its_start_up_reconcile_failed(
    hepvol_env: HepvolEnv, tmp_path: Path
) -> None:
    hepvol_env.config = replace(hepvol_env.config, lock_timeout_seconds=2.0)
    write_config(hepvol_env.workdir, hepvol_env.config)
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "held"
    manager.publish(VolumeSpec(backend="cvmfs", repository=SAMPLE), Consumer("cli", "t"),
                    str(target))  # fmt: skip
    [row] = manager.ledger.backings()
    plugins = make_plugin(hepvol_env, Dockerd(tmp_path / "no-engine"))
    try:
        # A hung operation holds the volume's lock: the start-up reconcile gives up.
        with LockDir(hepvol_env.config.state_dir).hold(row.key, 60):
            plugin = next(plugins)
            failed = lambda: any(  # noqa: E731
                e["msg"].startswith("start-up reconcile failed") for e in _events(plugin.log)
            )
            assert wait_for(failed, timeout=30), plugin.log.read_text()
        [pid] = hepvol_env.server_pids()
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: readme(target / "README") == "sample trunk\n", timeout=30), (
            plugin.log.read_text()
        )
        assert hepvol_env.server_pids() != [pid]
        repaired = [e for e in _events(plugin.log) if e["msg"] == "repaired"]
        assert [e["volume"] for e in repaired] == [row.key], plugin.log.read_text()
    finally:
        plugins.close()


def test_docker_plugin_serves_metrics(hepvol_env: HepvolEnv, tmp_path: Path) -> None:
    port = free_port()
    options = ("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    for plugin in make_plugin(hepvol_env, Dockerd(tmp_path / "no-engine"), options=options):
        assert plugin.call("VolumeDriver.Create", {"Name": SAMPLE})["Err"] == ""
        assert plugin.call("VolumeDriver.Mount", {"Name": SAMPLE, "ID": "c1"})["Err"] == ""
        assert wait_for(lambda: 'hepvol_consumers{kind="docker"} 1.0' in scrape(port), 20)
        text = scrape(port)
        assert 'hepvol_backing_mounts{backend="local",condition="healthy"} 1.0' in text
        assert "# TYPE hepvol_operations_total counter" in text
        assert plugin.call("VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "c1"})["Err"] == ""
        assert wait_for(lambda: "hepvol_consumers{" not in scrape(port), 20)


def _daemon_argv(env: HepvolEnv, daemon: str) -> list[str]:
    return {
        "docker-plugin": ["docker-plugin", "--driver", "eos", "--name", "hepvolmissing",
                          "--socket", str(env.workdir / "docker.sock")],
        "csi": ["csi", "--endpoint", f"unix://{env.workdir}/csi.sock", "--node-id", "n1"],
        "watch": ["watch", "--metrics-port", "0"],
    }[daemon]  # fmt: skip


@pytest.mark.parametrize("daemon", ["docker-plugin", "csi", "watch"])
def test_each_daemon_refuses_a_missing_client_with_one_line(
    hepvol_env: HepvolEnv, daemon: str
) -> None:
    missing = hepvol_env.workdir / "nowhere" / "eosxd"
    eos = replace(hepvol_env.config.eos, client="eosxd", eosxd=str(missing))
    write_config(hepvol_env.workdir, replace(hepvol_env.config, eos=eos))
    result = hepvol_cli(hepvol_env, *_daemon_argv(hepvol_env, daemon))
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"hepvol: {missing} is missing on this node: install "), result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "eos-fusex" in result.stderr
    assert not (hepvol_env.workdir / "docker.sock").exists()
    assert not (hepvol_env.workdir / "csi.sock").exists()


@pytest.mark.parametrize("daemon", ["docker-plugin", "csi", "watch"])
def test_each_daemon_refuses_to_run_as_another_user_than_root(
    hepvol_env: HepvolEnv, daemon: str
) -> None:
    state = hepvol_env.workdir / "state"
    result = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
         sys.executable, "-m", "hepvol", "--state-dir", str(state),
         *_daemon_argv(hepvol_env, daemon)],
        env={"HEPVOL_CONFIG": os.devnull, "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert result.stderr.startswith("hepvol must run as root ("), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
