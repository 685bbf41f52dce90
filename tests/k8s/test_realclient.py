"""A pod reads demo.hepvol.org through the real CernVM-FS client on the node.

The node image has no cvmfs2, so this driver (``cvmfs-real.csi.cern.ch``) is
hepvol's CSI node plugin run on the node itself with ``cvmfs.client = "cvmfs2"``,
registered with kubelet by the real node-driver-registrar, as a site without the
node image would run it. The repository comes from the local stratum 0 that
``make cvmfs-client`` sets up (tag v1: a private cvmfs2 mount with its own cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.k8s.cluster import NODE, Cluster, wait_until
from tests.k8s.conftest import delete_pods, start_reader, unavailable

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

DRIVER = "cvmfs-real.csi.cern.ch"
DEMO = "demo.hepvol.org"


@pytest.fixture(scope="module")
def real_driver(node: Cluster, k8s_bin: Path) -> Iterator[str]:
    cvmfs2 = shutil.which("cvmfs2")
    if cvmfs2 is None or subprocess.run([cvmfs2, "--version"], capture_output=True,
                                        check=False).returncode != 0:  # fmt: skip
        unavailable("the CVMFS client is not installed (make cvmfs-client sets it up)")
    try:
        urllib.request.urlopen(f"http://127.0.0.1/cvmfs/{DEMO}/.cvmfspublished", timeout=5)
    except OSError as exc:
        unavailable(f"no stratum 0 serves {DEMO} on 127.0.0.1 ({exc}): run make cvmfs-client")
    w = node.work
    config = w / "etc" / "real-client.toml"
    config.write_text(
        f'state_dir = "{w}/real-state"\nmount_root = "{w}/real-mounts"\n'
        f'target_roots = ["{node.kubelet_dir}/pods"]\nlog_level = "DEBUG"\n'
        f'[local]\nroot = "{w}/repos"\n'
        f'[cvmfs]\nclient = "cvmfs2"\ncvmfs2 = "{cvmfs2}"\nroot = "{w}/real-cvmfs"\n'
        f'cache_root = "{w}/real-cache"\n'
    )
    socket = node.kubelet_dir / "plugins" / DRIVER / "csi.sock"
    socket.parent.mkdir(parents=True)
    hepvol = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "hepvol"
    node.start("hepvol-real", str(hepvol), f"--config={config}", "csi", "--driver=cvmfs",
               f"--name={DRIVER}", "--mode=node", f"--endpoint=unix://{socket}",
               f"--node-id={NODE}")  # fmt: skip
    wait_until("the real-client node plugin", socket.exists, 60)
    node.start("registrar-real", str(k8s_bin / "csi-node-driver-registrar"), "--v=2",
               f"--csi-address={socket}", f"--kubelet-registration-path={socket}",
               f"--plugin-registration-path={node.kubelet_dir}/plugins_registry")  # fmt: skip
    node.apply({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER},
        "spec": {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "None",
                 "volumeLifecycleModes": ["Ephemeral"]},
    })  # fmt: skip
    wait_until(f"kubelet to register {DRIVER}", lambda: DRIVER in {
        d["name"] for d in node.get("csinode", NODE)["spec"].get("drivers") or []}, 60)  # fmt: skip
    yield DRIVER
    node.stop("registrar-real")
    node.stop("hepvol-real")


def test_a_pod_reads_a_tag_through_the_real_client(node: Cluster, real_driver: str) -> None:
    volume = {"csi": {"driver": real_driver, "readOnly": True,
                      "volumeAttributes": {"repository": DEMO, "tag": "v1"}}}  # fmt: skip
    start_reader(node, "real-client", volume, file="VERSION", expect="v1\n", timeout=120)
    delete_pods(node, "real-client")
    wait_until("the private cvmfs2 mount to go with its last consumer",
               lambda: not node.mounts_under(node.work / "real-mounts"), 60)  # fmt: skip
