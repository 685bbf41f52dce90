"""The node image built here and what runs from it, with a real dockerd.

``images/local/build`` makes the image in the test engine (Debian base from
debootstrap, cached under .tools/; hepvol from host-built wheels); the
session fixture ``node_image`` (tests/conftest.py) builds it once per run for this
module, test_managed_plugin.py, test_images_chart.py and tests/k8s/. Then:
- the image holds hepvol for every front and no compiler;
- the Docker plugin runs from the image as a container sharing its socket dir
  and mount root with the host (``rshared``), and ``docker run -v
  <repo>:/cvmfs/<repo>`` reads through it;
- the chart's FlexVolume init container, run from the image, installs drivers
  that kubelet (here: the test, on the host) can call.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import IMAGE, PLUGIN_DIR, Dockerd
from tests.e2e.test_helm import by_kind, containers, objects, render

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# This machine's capability bounding set lacks CAP_SYS_RESOURCE, so runc refuses
# --privileged; the plugin needs exactly what its managed form gets: CAP_SYS_ADMIN
# and /dev/fuse (plus no seccomp/AppArmor filter on mount(2)).
PLUGIN_PRIVILEGES = [
    "--cap-add", "SYS_ADMIN", "--device", "/dev/fuse",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
]  # fmt: skip


def unique(prefix: str) -> str:
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
    driver = unique("hepvolimage")
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
