"""Pods on a real kubelet read hepvol volumes through every way Kubernetes offers them.

Static PersistentVolume + claim, dynamic provisioning (StorageClass -> the real
csi-provisioner -> hepvol's controller), inline ephemeral CSI volumes, FlexVolume,
and EOS on its stand-in, all served by the chart's DaemonSets from the node image.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SAMPLE
from tests.k8s.cluster import Cluster, wait_until
from tests.k8s.conftest import (
    EOS_HELLO,
    NAMESPACE,
    daemonsets_ready,
    delete_pods,
    start_reader,
)  # fmt: skip

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

CVMFS_INLINE = {"csi": {"driver": "cvmfs.csi.cern.ch", "readOnly": True,
                        "volumeAttributes": {"repository": SAMPLE}}}  # fmt: skip


def test_inline_ephemeral_volume(node: Cluster) -> None:
    start_reader(node, "inline", CVMFS_INLINE)
    delete_pods(node, "inline")


def test_static_persistent_volume_and_claim(node: Cluster) -> None:
    node.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "sample-pv"},
        "spec": {"accessModes": ["ReadOnlyMany"], "capacity": {"storage": "1Gi"},
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "csi": {"driver": "cvmfs.csi.cern.ch", "volumeHandle": "sample-pv",
                         "readOnly": True, "volumeAttributes": {"repository": SAMPLE}}},
    })  # fmt: skip
    node.apply(_claim("static-claim", storage_class="", volume="sample-pv"))
    start_reader(node, "static", _claimed("static-claim"))
    delete_pods(node, "static")
    node.kubectl("delete", "pvc", "static-claim")
    node.kubectl("delete", "pv", "sample-pv")


def test_dynamic_provisioning_through_the_real_provisioner(node: Cluster) -> None:
    """csi-provisioner writes its identity into the PV's attributes; the pod still mounts."""
    node.apply(_claim("dynamic-claim", storage_class="cvmfs-sample"))
    claim = wait_until("the claim to be bound",
                       lambda: _bound(node, "dynamic-claim"), 60)  # fmt: skip
    pv = node.get("pv", claim["spec"]["volumeName"])
    attributes = pv["spec"]["csi"]["volumeAttributes"]
    assert attributes["repository"] == SAMPLE
    assert "storage.kubernetes.io/csiProvisionerIdentity" in attributes
    start_reader(node, "dynamic", _claimed("dynamic-claim"))
    delete_pods(node, "dynamic")
    node.kubectl("delete", "pvc", "dynamic-claim")


def test_flexvolume(node: Cluster) -> None:
    volume = {"flexVolume": {"driver": "cern/cvmfs", "readOnly": True,
                             "options": {"repository": SAMPLE}}}  # fmt: skip
    start_reader(node, "flex", volume)
    delete_pods(node, "flex")


def test_eos_on_its_stand_in(node: Cluster) -> None:
    volume = {"csi": {"driver": "eos.csi.cern.ch", "readOnly": True,
                      "volumeAttributes": {"instance": "home", "path": "/"}}}  # fmt: skip
    start_reader(node, "eos", volume, file="hello.txt", expect=EOS_HELLO)
    delete_pods(node, "eos")


def test_fuse_servers_belong_to_the_host_not_to_a_node_pod(node: Cluster) -> None:
    """Servers started by both DaemonSets (cvmfs, eos) and by a FlexVolume call are all in
    the host's PID namespace and in the servers' cgroup, none in a pod's cgroup (which a
    pod restart would kill) and none in kubelet's."""
    start_reader(node, "owner-cvmfs", CVMFS_INLINE)
    eos = {"csi": {"driver": "eos.csi.cern.ch", "readOnly": True,
                   "volumeAttributes": {"instance": "home", "path": "/"}}}  # fmt: skip
    start_reader(node, "owner-eos", eos, file="hello.txt", expect=EOS_HELLO)
    flex = {"flexVolume": {"driver": "cern/cvmfs", "readOnly": True,
                           "options": {"repository": SAMPLE, "tag": "v1"}}}  # fmt: skip
    start_reader(node, "owner-flex", flex)
    servers = server_pids(node)
    assert len(servers) == 3, servers
    host_pid_ns = os.stat("/proc/self/ns/pid").st_ino
    for pid in servers:
        groups = Path(f"/proc/{pid}/cgroup").read_text()
        # In the servers' cgroup in every hierarchy: none of a pod (below cgroup_root).
        paths = {line.split(":", 2)[2] for line in groups.splitlines()}
        assert paths == {f"/{node.server_cgroup}"}, groups
        assert os.stat(f"/proc/{pid}/ns/pid").st_ino == host_pid_ns
    delete_pods(node, "owner-cvmfs", "owner-eos", "owner-flex")


def test_a_volume_mounted_again_after_a_node_pod_restart_is_the_repository(node: Cluster) -> None:
    """A node pod started while a backing mount exists, which the host then unmounts
    (last consumer gone), must not keep a hidden copy that a later publish takes
    for the live mount: the next pod gets the repository, not an empty directory."""
    start_reader(node, "before-restart", CVMFS_INLINE)
    node.kubectl("delete", "pod", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=cvmfs-node",
                 "--wait=true", "--timeout=120s", timeout=150)  # fmt: skip
    wait_until("the cvmfs node pod back", lambda: daemonsets_ready(node), 180)
    delete_pods(node, "before-restart")
    wait_until("the backing mount to go (last consumer left)",
               lambda: not node.mounts_under(node.work / "chart-mounts"), 60)  # fmt: skip
    start_reader(node, "after-restart", CVMFS_INLINE)
    delete_pods(node, "after-restart")


def server_pids(node: Cluster) -> list[int]:
    """The embedded FUSE servers of the chart's state dir that are alive."""
    pids = []
    for pidfile in (node.work / "chart-state" / "run").glob("*.pid"):
        pid = int(pidfile.read_text().split()[0])
        if os.path.exists(f"/proc/{pid}"):
            pids.append(pid)
    return pids


def _claim(name: str, storage_class: str, volume: str = "") -> dict[str, object]:
    spec: dict[str, object] = {"accessModes": ["ReadOnlyMany"], "storageClassName": storage_class,
                               "resources": {"requests": {"storage": "1Gi"}}}  # fmt: skip
    if volume:
        spec["volumeName"] = volume
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}  # fmt: skip


def _claimed(claim: str) -> dict[str, object]:
    return {"persistentVolumeClaim": {"claimName": claim, "readOnly": True}}


def _bound(node: Cluster, claim: str) -> dict[str, object] | None:
    found = node.get("pvc", claim)
    return found if found["status"].get("phase") == "Bound" else None
