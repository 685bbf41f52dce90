"""The chart's CSI node container run from the node image the way kubelet runs it.

The DaemonSet rendered by ``helm template`` becomes a ``docker run``: its args and
env, its hostPath mounts as binds (``Bidirectional`` as ``rshared``, kubelet's
pods dir and the mount root made shared mounts first, as on a node), its
ConfigMaps as files. The test then makes kubelet's calls on the socket the
registrar would name and checks what the host sees, before and after the pod is
replaced (the reason the chart's update strategy is RollingUpdate).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mount_core import bind
from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import Dockerd
from tests.e2e.test_helm import by_kind, containers, objects, render
from tests.e2e.test_images import PLUGIN_PRIVILEGES

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _docker_mounts(pod: dict[str, Any], container: dict[str, Any], scratch: Path) -> list[str]:
    """A container's volumeMounts as ``docker run`` arguments, the way kubelet would
    make them: hostPath as binds (Bidirectional -> rshared), ConfigMaps as files."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    argv: list[str] = []
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            source = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "CharDevice":
                argv += ["--device", str(source)]
                continue
            source.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume:
            source = scratch / volume["configMap"]["name"]
            if "subPath" in mount:
                source = source / mount["subPath"]
        else:
            raise AssertionError(f"no stand-in for volume {volume}")
        option = {"Bidirectional": ":rshared"}.get(mount.get("mountPropagation", ""), "")
        argv += ["-v", f"{source}:{mount['mountPath']}{option}"]
    return argv


@dataclass
class ChartNode:
    """The chart's cvmfs node container, run from the image as kubelet would run it."""

    dockerd: Dockerd
    kubelet: Path
    argv: list[str]
    container: str = ""

    @property
    def socket(self) -> Path:
        return self.kubelet / "plugins" / "cvmfs.csi.cern.ch" / "csi.sock"

    def channel(self) -> Any:
        import grpc

        return grpc.insecure_channel(f"unix://{self.socket}")

    def _ready(self) -> bool:
        import grpc

        from csi_driver.generated import csi_pb2, csi_pb2_grpc

        with self.channel() as channel:
            try:
                probe = csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(probe.ready.value)

    def start(self) -> None:
        self.container = self.dockerd.docker(*self.argv).stdout.strip()
        if not wait_for(self._ready, 30, 0.2):
            logs = self.dockerd.docker("logs", self.container, check=False)
            raise AssertionError(f"node plugin did not start: {logs.stdout}{logs.stderr}")

    def kill(self) -> None:
        """What replacing the pod does to the old one: every process of it dies."""
        self.dockerd.docker("rm", "-f", self.container)


@pytest.fixture
def chart_node(dockerd: Dockerd, node_image: str, hepvol_env: HepvolEnv) -> Iterator[ChartNode]:
    world, config = hepvol_env.workdir, hepvol_env.config
    # Short: the plugin socket's path must fit in a sockaddr_un (108 bytes).
    kubelet = Path(tempfile.mkdtemp(prefix="hvk-", dir="/tmp"))
    text = render(None, "--set", ",".join([
        f"kubeletDir={kubelet}", f"hepvol.stateDir={config.state_dir}",
        f"hepvol.mountRoot={config.mount_root}", f"local.root={hepvol_env.repos}",
        "cvmfs.client=local", f"cvmfs.cacheDir={world / 'cvmfs-cache'}",
        # docker run has no hostPID: FUSE servers die with the container here, as with
        # no serverCgroup (tests/k8s shows them outliving the pod on a real kubelet).
        "hepvol.serverCgroup=",
    ]))  # fmt: skip
    docs = objects(text)
    scratch = world / "configmaps"
    for config_map in by_kind(docs, "ConfigMap"):
        for key, value in config_map["data"].items():
            path = scratch / config_map["metadata"]["name"] / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value)
    (node,) = [
        d for d in by_kind(docs, "DaemonSet") if d["metadata"]["name"] == "hepvol-cvmfs-node"
    ]
    pod = node["spec"]["template"]["spec"]
    hepvol = containers(node)["hepvol"]
    # kubelet's own dirs are shared mounts on a node; make them so here.
    for shared in (kubelet / "pods", Path(config.mount_root)):
        shared.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    argv = ["run", "-d", "--network", "none", *PLUGIN_PRIVILEGES, "-e", "NODE_ID=node-1"]
    argv += [f"-e{e['name']}={e['value']}" for e in hepvol["env"] if "value" in e]
    argv += [*_docker_mounts(pod, hepvol, scratch), node_image, *hepvol["args"]]
    plugin = ChartNode(dockerd, kubelet, argv)
    try:
        plugin.start()
        yield plugin
    finally:
        dockerd.remove_containers()
        for entry in sorted(MountTable().under(str(kubelet)), key=lambda e: -len(e.mount_point)):
            with contextlib.suppress(OSError):
                bind.unmount(entry.mount_point, lazy=True)
        shutil.rmtree(kubelet, ignore_errors=True)


def _publish_request(target: Path) -> Any:
    from csi_driver.generated import csi_pb2

    capability = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(
            mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
        ),
    )
    return csi_pb2.NodePublishVolumeRequest(
        volume_id="sample", target_path=str(target), volume_capability=capability,
        readonly=True, volume_context={"repository": SAMPLE},
    )  # fmt: skip


def _target(kubelet: Path) -> Path:
    target = kubelet / "pods" / "7c1d" / "volumes" / "kubernetes.io~csi" / "sample" / "mount"
    target.parent.mkdir(parents=True, exist_ok=True)  # kubelet makes the parent
    return target


def _reads(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def test_chart_node_plugin_publishes_into_kubelets_pods_dir(chart_node: ChartNode) -> None:
    """kubelet's calls on the socket the registrar names; the bind lands on the host."""
    from csi_driver.generated import csi_pb2, csi_pb2_grpc

    target = _target(chart_node.kubelet)
    with chart_node.channel() as channel:
        identity, node = csi_pb2_grpc.IdentityStub(channel), csi_pb2_grpc.NodeStub(channel)
        info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
        assert info.name == "cvmfs.csi.cern.ch"
        assert node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10).node_id == "node-1"
        node.NodePublishVolume(_publish_request(target), timeout=60)
        # Made inside the plugin's container, seen by the host (as kubelet and the
        # container runtime would see it) through Bidirectional propagation.
        assert (target / "README").read_text() == "sample trunk\n"
        request = csi_pb2.NodeUnpublishVolumeRequest(volume_id="sample", target_path=str(target))
        node.NodeUnpublishVolume(request, timeout=60)
    assert not target.exists()


def test_replacing_the_node_pod_repairs_published_volumes(chart_node: ChartNode) -> None:
    """Why RollingUpdate is safe: the new pod re-serves what the old pod's death broke."""
    from csi_driver.generated import csi_pb2, csi_pb2_grpc

    target = _target(chart_node.kubelet)
    with chart_node.channel() as channel:
        csi_pb2_grpc.NodeStub(channel).NodePublishVolume(_publish_request(target), timeout=60)
    assert _reads(target / "README") == "sample trunk\n"
    chart_node.kill()
    assert _reads(target / "README") is None  # its FUSE server died with the pod
    chart_node.start()
    assert wait_for(lambda: _reads(target / "README") == "sample trunk\n", 30, 0.2)
    with chart_node.channel() as channel:
        request = csi_pb2.NodeUnpublishVolumeRequest(volume_id="sample", target_path=str(target))
        csi_pb2_grpc.NodeStub(channel).NodeUnpublishVolume(request, timeout=60)
    assert not target.exists()
