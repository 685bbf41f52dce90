"""Two daemons (Docker plugin and CSI node) on one state dir with the real client.

Both run their health loops over the same ledger: a spec is mounted once whoever
asks, and one crash of its cvmfs2 is repaired once (the decision is taken under
the spec's lock from a fresh probe), not once per daemon.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import HepvolEnv
from tests.e2e.dockerd import Dockerd, Plugin, make_plugin
from tests.integration.test_csi_node import CsiProcess, start_csi
from tests.realclient.conftest import REPO, client_pids, wait_readable
from tests.realclient.fronts import CsiFront, DockerFront


@pytest.fixture
def daemons(real_env: HepvolEnv, dockerd: Dockerd) -> Iterator[tuple[Plugin, CsiProcess]]:
    for plugin in make_plugin(real_env, dockerd):
        for csi in start_csi(real_env, "--mode", "node", "--node-id", "node-1"):
            yield plugin, csi


def backing_mounts(env: HepvolEnv) -> list[str]:
    root = env.config.mount_root.rstrip("/") + "/"
    return [e.mount_point for e in MountTable().under(root) if e.fstype == "fuse"]


def repairs(logs: list[Path], key: str) -> int:
    """How many times the daemons' logs say ``key`` was repaired."""
    count = 0
    for log in logs:
        for line in log.read_text().splitlines():
            with_key = line.startswith("{") and json.loads(line)
            if with_key and with_key.get("msg") == "repaired" and with_key.get("volume") == key:
                count += 1
    return count


@pytest.mark.parametrize("volume", [{"repository": REPO}, {"repository": REPO, "tag": "v1"}],
                         ids=["system", "private"])  # fmt: skip
def test_one_mount_per_spec_and_one_repair_per_failure(
    real_env: HepvolEnv,
    daemons: tuple[Plugin, CsiProcess],
    volume: dict[str, str],
    repair_times: dict[str, float],
) -> None:
    plugin, csi = daemons
    docker, kube = DockerFront(plugin), CsiFront(real_env, csi)
    docker.publish(volume)
    kube.publish(volume)
    [backing] = backing_mounts(real_env)
    key = os.path.basename(backing)
    served = client_pids(backing)
    assert served, "the backing mount's cvmfs2 runs"

    for pid in served:
        os.kill(pid, signal.SIGKILL)
    took = wait_readable(kube.target / "VERSION", timeout=5)
    assert took is not None, "the CSI target is readable again within 5 s"
    name = "system" if "tag" not in volume else "private"
    repair_times[f"two daemons {name}"] = took
    # Let both health loops see the mount a few more times.
    time.sleep(3 * real_env.config.health_interval_seconds + 1)
    logs = [csi.log, plugin.log]
    assert repairs(logs, key) == 1, "one failure, one repair, whatever the number of daemons"
    assert backing_mounts(real_env) == [backing], "still one mount for the spec"
    assert len(client_pids(backing)) == len(served), "one client, not one per daemon"
    assert docker.read("VERSION", nonroot=True).returncode == 0
    kube.unpublish()
    docker.unpublish()
    assert backing_mounts(real_env) == []
