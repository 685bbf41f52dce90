"""A FUSE server that dies under running pods: the repair replaces the host's mount,
the pods published before keep their copy of the dead bind and are told so.

Real ``hepvol csi`` (its own health loop repairs), real FUSE servers killed with
SIGKILL, stats over gRPC, metrics over HTTP, ``hepvol status`` as a child process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli, wait_for
from tests.integration.test_csi_node import CsiProcess, start_csi

#: The daemon's health loop runs every 0.5 s here; a repair takes well under a second.
REPAIR_BOUND = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def metrics_port() -> int:
    return _free_port()


@pytest.fixture
def csi(hepvol_env: HepvolEnv, metrics_port: int) -> Iterator[CsiProcess]:
    yield from start_csi(hepvol_env, "--mode", "node", "--node-id", "node-1",
                         "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1")  # fmt: skip


def _pod_target(env: HepvolEnv, uid: str) -> Path:
    volume_dir = env.targets / "pods" / uid / "volumes" / "kubernetes.io~csi" / "sw"
    volume_dir.mkdir(parents=True)
    return volume_dir / "mount"


def _stale_metric(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("hepvol_stale_consumers{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('kind="')[1].split('"')[0]] = float(value)
    return found


def _generation(env: HepvolEnv) -> int:
    [backing] = json.loads(hepvol_cli(env, "status", "--json").stdout)["backing_mounts"]
    return int(backing["generation"])


def test_pods_published_before_a_repair_turn_abnormal_and_are_counted(
    csi: CsiProcess, hepvol_env: HepvolEnv, metrics_port: int
) -> None:
    old = _pod_target(hepvol_env, "11111111-aaaa")
    csi.client.publish("vol-old", str(old), {"repository": SAMPLE,
                       "csi.storage.k8s.io/pod.name": "reader-old",
                       "csi.storage.k8s.io/pod.namespace": "physics"})  # fmt: skip
    assert _stale_metric(metrics_port) == {"csi": 0, "docker": 0, "flex": 0}
    assert _generation(hepvol_env) == 1

    for pid in hepvol_env.server_pids():
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: _generation(hepvol_env) == 2, REPAIR_BOUND, 0.2), "not repaired"
    assert (old / "README").read_text() == "sample trunk\n", "the host's target was re-bound"

    condition = csi.client.stats("vol-old", str(old)).volume_condition
    assert condition.abnormal
    assert condition.message.startswith("stale: ") and "restart the pod" in condition.message
    new = _pod_target(hepvol_env, "22222222-bbbb")
    csi.client.publish("vol-new", str(new), {"repository": SAMPLE})
    assert not csi.client.stats("vol-new", str(new)).volume_condition.abnormal
    # kubelet publishing the old pod's volume again (after its own restart) changes
    # nothing: the pod's containers still hold their copy.
    csi.client.publish("vol-old", str(old), {"repository": SAMPLE})
    assert csi.client.stats("vol-old", str(old)).volume_condition.abnormal

    assert _stale_metric(metrics_port) == {"csi": 1, "docker": 0, "flex": 0}
    table = hepvol_cli(hepvol_env, "status").stdout
    stale_line = table.split(f"{old}", 1)[1].splitlines()[1]
    assert stale_line.strip().startswith("! stale:") and "restart the pod" in stale_line
    [backing] = json.loads(hepvol_cli(hepvol_env, "status", "--json").stdout)["backing_mounts"]
    assert {c["target"]: c["stale"] for c in backing["consumers"]} == {
        str(old): True,
        str(new): False,
    }

    csi.client.unpublish("vol-old", str(old))
    assert _stale_metric(metrics_port)["csi"] == 0, "the restarted pod's old consumer is gone"
    csi.client.unpublish("vol-new", str(new))
