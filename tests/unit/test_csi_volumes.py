"""The CSI volume context as Kubernetes really sends it: its own keys are not the volume's."""

from __future__ import annotations

import pytest

from csi_driver import volumes
from mount_core.errors import InvalidSpec

#: What NodePublishVolume gets for a pod on a PVC of a hepvol StorageClass:
#: csi-provisioner writes its identity into every PV it creates, kubelet adds pod info.
PROVISIONED = {
    "repository": "sample.hepvol.org",
    "storage.kubernetes.io/csiProvisionerIdentity": "1764589023117-8081-cvmfs.csi.cern.ch",
    "csi.storage.k8s.io/pod.name": "reader",
    "csi.storage.k8s.io/pod.namespace": "default",
}


def test_a_provisioned_volume_context_parses_into_its_spec() -> None:
    spec = volumes.spec_from_context("cvmfs", PROVISIONED)
    assert spec.source == "sample.hepvol.org"
    assert volumes.parameters(PROVISIONED) == {"repository": "sample.hepvol.org"}
    assert volumes.kubernetes_info(PROVISIONED) == {
        "pod.name": "reader",
        "pod.namespace": "default",
    }


def test_an_unknown_key_outside_the_kubernetes_prefixes_is_still_refused() -> None:
    with pytest.raises(InvalidSpec) as refused:
        volumes.spec_from_context("cvmfs", {**PROVISIONED, "storage.example.org/x": "1"})
    assert "storage.example.org/x" in str(refused.value)
