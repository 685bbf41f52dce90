"""``hepvol status`` names the pod of every Kubernetes consumer and says when it
runs outside kubelet's mount namespace (real ``hepvol csi`` and real processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli, wait_for
from tests.integration.test_csi_node import CsiProcess, start_csi

POD_UID = "5b0c1d3e-8f2a-4c51-9e7d-0a1b2c3d4e5f"
OTHER_UID = "0f9e8d7c-6b5a-4321-8765-43210fedcba9"


@pytest.fixture
def csi(hepvol_env: HepvolEnv) -> Iterator[CsiProcess]:
    yield from start_csi(hepvol_env, "--mode", "node", "--node-id", "node-1")


def _target(env: HepvolEnv, uid: str, volume: str) -> Path:
    """kubelet's target path for a pod's CSI volume (kubelet makes its parent)."""
    volume_dir = env.targets / "pods" / uid / "volumes" / "kubernetes.io~csi" / volume
    volume_dir.mkdir(parents=True)
    return volume_dir / "mount"


def test_csi_consumers_show_their_pod_from_pod_info_or_the_target_path(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    pod_info = {
        "csi.storage.k8s.io/pod.name": "analysis-0",
        "csi.storage.k8s.io/pod.namespace": "physics",
        "csi.storage.k8s.io/pod.uid": POD_UID,
    }
    with_info = _target(hepvol_env, POD_UID, "sw")
    without_info = _target(hepvol_env, OTHER_UID, "sw")
    csi.client.publish("vol-a", str(with_info), {"repository": SAMPLE, **pod_info})
    csi.client.publish("vol-b", str(without_info), {"repository": SAMPLE})

    table = hepvol_cli(hepvol_env, "status").stdout
    assert f"pod physics/analysis-0 (uid {POD_UID})" in table
    assert f"pod uid {OTHER_UID}" in table, "no podInfoOnMount: the uid from kubelet's path"
    [backing] = json.loads(hepvol_cli(hepvol_env, "status", "--json").stdout)["backing_mounts"]
    pods = {c["target"]: (c["info"].get("pod"), c["info"]["pod_uid"]) for c in backing["consumers"]}
    assert pods == {
        str(with_info): ("physics/analysis-0", POD_UID),
        str(without_info): (None, OTHER_UID),
    }
    csi.client.unpublish("vol-a", str(with_info))
    csi.client.unpublish("vol-b", str(without_info))


@pytest.fixture
def kubelet_binary(tmp_path: Path) -> Path:
    """A stand-in named ``kubelet`` (a copy of sleep): the check looks at names and namespaces."""
    binary = tmp_path / "bin" / "kubelet"
    binary.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    return binary


def _run(*command: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the loop body is done; yields once it is named kubelet."""
    process = subprocess.Popen([str(c) for c in command])
    comm = Path(f"/proc/{process.pid}/comm")
    try:
        assert wait_for(lambda: comm.read_text() == "kubelet\n", 10)
        yield process
    finally:
        process.kill()
        process.wait(10)


def test_status_is_quiet_in_kubelets_mount_namespace(
    hepvol_env: HepvolEnv, kubelet_binary: Path
) -> None:
    for kubelet in _run(kubelet_binary, "300"):
        status = json.loads(hepvol_cli(hepvol_env, "status", "--json").stdout)["mount_namespace"]
        assert {"pid": kubelet.pid, "namespace": status["self"]} in status["kubelets"]
        assert status["outside_kubelet"] is False
        assert hepvol_cli(hepvol_env, "status").stdout == "no backing mounts\n"


def test_status_warns_outside_kubelets_mount_namespace(
    hepvol_env: HepvolEnv, kubelet_binary: Path
) -> None:
    # kubelet in a mount namespace of its own, as when hepvol runs in a container
    # that does not share the host's.
    for kubelet in _run("unshare", "--mount", "--propagation", "private", kubelet_binary, "300"):
        status = json.loads(hepvol_cli(hepvol_env, "status", "--json").stdout)["mount_namespace"]
        if not any(k["pid"] == kubelet.pid for k in status["kubelets"]):
            pytest.fail(f"the stand-in kubelet {kubelet.pid} was not found: {status}")
        assert status["outside_kubelet"] is True
        table = hepvol_cli(hepvol_env, "status").stdout
        assert table.startswith(f"! this runs in mount namespace {status['self']}, kubelet (pid ")
        assert "nsenter -t " in table and "-m -- hepvol status" in table
