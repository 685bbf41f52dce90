"""The node image built here and the Docker plugin run from it, with a real dockerd.

``images/local/build`` makes the image in the test engine (Debian base from
debootstrap, cached under .tools/; hepvol from host-built wheels). Then:
- the plugin runs from the image as a container sharing its socket dir and mount
  root with the host (``rshared``), and ``docker run -v <repo>:/cvmfs/<repo>``
  reads through it;
- the managed (v2) plugin is assembled from the image by
  ``deploy/docker/managed/create`` and driven through create, enable, volume
  create, a read, disable (mounts gone) and enable again (volumes still listed).
"""

from __future__ import annotations

import contextlib
import json
import os
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
from tests.conftest import REPO, SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import IMAGE, PLUGIN_DIR, Dockerd, dockerd
from tests.e2e.test_helm import by_kind, containers, objects, render

pytestmark = [pytest.mark.docker, pytest.mark.slow]
__all__ = ["dockerd"]

NODE_IMAGE = "hepvol-node:local"
# This machine's capability bounding set lacks CAP_SYS_RESOURCE, so runc refuses
# --privileged; the plugin needs exactly what its managed form gets: CAP_SYS_ADMIN
# and /dev/fuse (plus no seccomp/AppArmor filter on mount(2)).
PLUGIN_PRIVILEGES = [
    "--cap-add", "SYS_ADMIN", "--device", "/dev/fuse",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
]  # fmt: skip


@pytest.fixture(scope="module")
def node_image(dockerd: Dockerd, request: pytest.FixtureRequest) -> str:
    result = subprocess.run([str(REPO / "images" / "local" / "build"), NODE_IMAGE],
                            env=dockerd.env(), capture_output=True, text=True, timeout=900,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"image build failed:\n{result.stdout}\n{result.stderr}"
    # Size and build time go to the terminal, past pytest's capture.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in result.stdout.splitlines():
            print(f"\n[images/local/build] {line}")
    return NODE_IMAGE


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{abs(hash(os.urandom(4))) % 10000}"


def test_image_has_hepvol_and_no_compiler(dockerd: Dockerd, node_image: str) -> None:
    help_text = dockerd.docker("run", "--rm", "--network", "none", node_image, "--help").stdout
    for command in ("csi", "docker-plugin", "flexvolume", "watch"):
        assert command in help_text
    probe = "import pyfuse3, grpc, flask, gunicorn; import csi_driver.generated.csi_pb2"
    dockerd.docker("run", "--rm", "--network", "none", "--entrypoint", "python3", node_image,
                   "-c", probe)  # fmt: skip
    for compiler in ("gcc", "cc", "x86_64-linux-gnu-gcc"):
        found = dockerd.docker("run", "--rm", "--network", "none", "--entrypoint", "sh",
                               node_image, "-c", f"command -v {compiler}", check=False)  # fmt: skip
        assert found.returncode != 0, f"{compiler} is in the image"


@pytest.fixture
def shared_world(hepvol_env: HepvolEnv) -> HepvolEnv:
    """The world's mount root made a shared mount, as ``rshared`` binds require."""
    root = hepvol_env.config.mount_root
    subprocess.run(["mount", "--bind", root, root], check=True)
    subprocess.run(["mount", "--make-shared", root], check=True)
    return hepvol_env


@pytest.fixture
def image_plugin(dockerd: Dockerd, node_image: str, shared_world: HepvolEnv) -> Iterator[str]:
    """``hepvol docker-plugin`` running from the image; yields its driver name."""
    config = shared_world.config
    driver = _unique("hepvolimage")
    socket = PLUGIN_DIR / f"{driver}.sock"
    binds = [f"{PLUGIN_DIR}:{PLUGIN_DIR}", f"{config.state_dir}:{config.state_dir}",
             f"{config.mount_root}:{config.mount_root}:rshared",
             f"{config.local.root}:{config.local.root}:ro"]  # fmt: skip
    environment = {"HEPVOL_STATE_DIR": config.state_dir, "HEPVOL_MOUNT_ROOT": config.mount_root,
                   "HEPVOL_LOCAL_ROOT": config.local.root,
                   "HEPVOL_TARGET_ROOTS": ":".join(config.target_roots)}  # fmt: skip
    argv = ["run", "-d", "--name", driver, "--network", "none", *PLUGIN_PRIVILEGES]
    for volume in binds:
        argv += ["-v", volume]
    for key, value in environment.items():
        argv += ["-e", f"{key}={value}"]
    argv += [node_image, "docker-plugin", "--driver", "cvmfs", "--name", driver,
             "--socket", str(socket)]  # fmt: skip
    try:
        PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        dockerd.docker(*argv)
        if not wait_for(socket.exists, 30, 0.2):
            logs = dockerd.docker("logs", driver, check=False)
            raise AssertionError(f"plugin in the image did not start: {logs.stdout}{logs.stderr}")
        yield driver
    finally:
        # Forget the volumes while the plugin still answers, or dockerd keeps them.
        for volume in dockerd.docker("volume", "ls", "-q", "-f", f"driver={driver}",
                                     check=False).stdout.split():  # fmt: skip
            dockerd.docker("volume", "rm", "-f", volume, check=False)
        dockerd.remove_containers()
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()


def test_docker_run_reads_through_the_plugin_running_in_the_image(
    dockerd: Dockerd, image_plugin: str, shared_world: HepvolEnv
) -> None:
    out = dockerd.docker("run", "--rm", "--network", "none", "-v", f"{SAMPLE}:/cvmfs/{SAMPLE}",
                         "--volume-driver", image_plugin, IMAGE, "cat",
                         f"/cvmfs/{SAMPLE}/README").stdout  # fmt: skip
    assert out == "sample trunk\n"
    # The backing mount was made inside the plugin's container, on the host's side
    # of the shared mount root, and went when the container's volume was released.
    mounts = shared_world.config.mount_root
    assert wait_for(
        lambda: not [e for e in MountTable().under(mounts) if e.fstype.startswith("fuse")], 10
    )


@pytest.fixture
def managed_plugin(dockerd: Dockerd, node_image: str, hepvol_env: HepvolEnv) -> Iterator[str]:
    """The managed plugin, created from the image and configured for this world."""
    name = f"{_unique('hepvolmanaged')}:test"
    state = hepvol_env.workdir / "plugin-state"
    state.mkdir(mode=0o700)
    result = subprocess.run([str(REPO / "deploy" / "docker" / "managed" / "create"), name,
                             node_image], env=dockerd.env(), capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        # A grace period keeps the backing mount up after a container leaves, so
        # that `disable` has a mount to clean up.
        dockerd.docker("plugin", "set", name, f"state.source={state}",
                       f"repositories.source={hepvol_env.repos}",
                       "HEPVOL_IDLE_UNMOUNT_SECONDS=300")  # fmt: skip
        yield name
    finally:
        dockerd.remove_containers()
        for volume in dockerd.docker("volume", "ls", "-q", "-f", f"driver={name}",
                                     check=False).stdout.split():  # fmt: skip
            dockerd.docker("volume", "rm", "-f", volume, check=False)
        dockerd.docker("plugin", "disable", "-f", name, check=False)
        dockerd.docker("plugin", "rm", "-f", name, check=False)


def _plugin_mounts(dockerd: Dockerd, name: str) -> set[str]:
    """FUSE mount points under the plugin's directories (propagation may show one twice)."""
    plugin_id = dockerd.docker("plugin", "inspect", "-f", "{{.Id}}", name).stdout.strip()
    return {e.mount_point for e in MountTable().entries if plugin_id in e.mount_point
            and e.fstype.startswith("fuse")}  # fmt: skip


def test_managed_plugin_serves_volumes_and_cleans_up_on_disable(
    dockerd: Dockerd, managed_plugin: str
) -> None:
    name = managed_plugin
    settings = json.loads(dockerd.docker("plugin", "inspect", name).stdout)[0]
    assert settings["Config"]["Interface"]["Types"] == ["docker.volumedriver/1.0"]
    assert settings["Config"]["PropagatedMount"] == "/var/lib/hepvol/mounts"
    dockerd.docker("plugin", "enable", name)
    dockerd.docker("volume", "create", "-d", name, SAMPLE)
    dockerd.docker("volume", "create", "-d", name, f"{SAMPLE}@v1")
    read = dockerd.docker("run", "--rm", "--network", "none", "--mount",
                          f"type=volume,source={SAMPLE},target=/cvmfs/{SAMPLE},readonly,volume-nocopy",
                          IMAGE, "cat", f"/cvmfs/{SAMPLE}/README").stdout  # fmt: skip
    assert read == "sample trunk\n"
    (held,) = _plugin_mounts(dockerd, name)  # kept for the grace period
    assert held.endswith(f"/propagated-mount/cvmfs-{SAMPLE}")

    # Volumes stay known to dockerd, so disabling needs -f; the plugin's mounts go.
    dockerd.docker("plugin", "disable", "-f", name)
    assert wait_for(lambda: not _plugin_mounts(dockerd, name), 15)

    dockerd.docker("plugin", "enable", name)
    listed = dockerd.docker("volume", "ls", "-q", "-f", f"driver={name}").stdout.split()
    assert sorted(listed) == [SAMPLE, f"{SAMPLE}@v1"]
    again = dockerd.docker("run", "--rm", "--network", "none", "-v", f"{SAMPLE}@v1:/data:ro",
                           IMAGE, "cat", "/data/README").stdout  # fmt: skip
    assert again == "sample v1\n"


@pytest.fixture
def host_opt(tmp_path: Path) -> Iterator[Path]:
    """/opt as an overlay for this test: the chart's installer may write to it."""
    upper, work = tmp_path / "opt-upper", tmp_path / "opt-work"
    upper.mkdir()
    work.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/opt,upperdir={upper},workdir={work}", "/opt"], check=True)  # fmt: skip
    try:
        yield upper
    finally:
        subprocess.run(["umount", "-l", "/opt"], check=False)


def test_flexvolume_installer_gives_kubelet_working_drivers(
    dockerd: Dockerd, node_image: str, hepvol_env: HepvolEnv, host_opt: Path, tmp_path: Path
) -> None:
    """The chart's init container, run from the image, installs drivers that work on the host."""
    kubelet = hepvol_env.workdir / "kubelet"
    config = hepvol_env.config
    text = render(None, "--set", ",".join([
        "flexVolume.enabled=true", f"kubeletDir={kubelet}", f"hepvol.stateDir={config.state_dir}",
        f"hepvol.mountRoot={config.mount_root}", f"local.root={hepvol_env.repos}",
        "cvmfs.client=local",
    ]))  # fmt: skip
    docs = objects(text)
    (flex,) = [
        d for d in by_kind(docs, "DaemonSet") if d["metadata"]["name"] == "hepvol-flexvolume"
    ]
    (config_map,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "hepvol-config"
    ]
    install = containers(flex)["install"]
    mounts = {m["name"]: m["mountPath"] for m in install["volumeMounts"]}
    config_dir, plugin_dir = tmp_path / "configmap", tmp_path / "plugins"
    config_dir.mkdir()
    plugin_dir.mkdir()
    (config_dir / "config.toml").write_text(config_map["data"]["config.toml"])
    volumes = {"config": config_dir, "host-opt": Path("/opt"), "plugin-dir": plugin_dir}
    argv = ["run", "--rm", "--network", "none", "--entrypoint", install["command"][0]]
    for name, source in volumes.items():
        argv += ["-v", f"{source}:{mounts[name]}"]
    dockerd.docker(*argv, node_image, *install["command"][1:])
    assert (host_opt / "hepvol" / "etc" / "config.toml").exists()

    # kubelet's calls, on the host, through the copied runtime.
    driver = plugin_dir / "cern~cvmfs" / "cvmfs"
    init = json.loads(subprocess.run([driver, "init"], capture_output=True, text=True,
                                     env={}, timeout=60, check=False).stdout)  # fmt: skip
    assert init["status"] == "Success" and init["capabilities"]["attach"] is False
    pod_dir = kubelet / "pods" / "0a1b" / "volumes" / "cern~cvmfs" / "sample"
    pod_dir.mkdir(parents=True, mode=0o750)
    options = {"repository": SAMPLE, "kubernetes.io/readwrite": "ro",
               "kubernetes.io/pod.uid": "0a1b", "kubernetes.io/fsType": ""}  # fmt: skip
    mounted = subprocess.run([driver, "mount", str(pod_dir), json.dumps(options)],
                             capture_output=True, text=True, env={}, timeout=60, check=False)  # fmt: skip
    assert json.loads(mounted.stdout)["status"] == "Success", mounted.stdout
    assert (pod_dir / "README").read_text() == "sample trunk\n"
    unmounted = subprocess.run([driver, "unmount", str(pod_dir)], capture_output=True, text=True,
                               env={}, timeout=60, check=False)  # fmt: skip
    assert json.loads(unmounted.stdout)["status"] == "Success", unmounted.stdout
    assert not [e for e in MountTable().under(str(kubelet))]


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
