"""The Kubernetes suite's node: one cluster per run, the chart installed on it.

``node`` (session) brings up :mod:`tests.k8s.cluster`, imports the images (the
node image is built once per run by ``images/local/build`` in the suite's private
dockerd, saved under two tags so that an upgrade is a real rolling update),
installs ``deploy/helm/hepvol`` with both drivers (cvmfs and eos on the embedded
backend) and FlexVolume, and runs the CSI controller and the real csi-provisioner
on the host (pods cannot reach the API server here). Torn down at the end of the
session, whatever happened; a test that leaves a process, mount or cgroup fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SAMPLE
from tests.e2e.dockerd import Dockerd
from tests.k8s import images
from tests.k8s.cluster import NODE, Cluster, running, wait_until

HELM = REPO / ".tools" / "bin" / "helm"
NODE_IMAGE = "docker.io/library/hepvol-node"
#: The chart is installed with the first tag and upgraded to the second.
TAGS = ("k8s-a", "k8s-b")
NAMESPACE = "hepvol"
HELLO = "hello from hepvol sample.hepvol.org\n"
EOS_HELLO = "hello from the eos stand-in\n"
#: Binaries the suite needs in the build cache (make k8s-binaries).
BINARIES = ("kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
            "etcd", "csi-node-driver-registrar", "livenessprobe", "csi-provisioner")  # fmt: skip


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Kubernetes suite must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    path = Path(os.environ.get("HEPVOL_K8S_BIN", "/var/cache/hepvol/k8s-v1.35.4/bin"))
    missing = [b for b in BINARIES if not os.access(path / b, os.X_OK)]
    if missing:
        unavailable(f"no {', '.join(missing)} in {path}: run `make k8s-binaries` (needs ../shared)")
    if not HELM.exists():
        unavailable(f"no {HELM}: run `make tools`")
    return path


@pytest.fixture(scope="session")
def node_image_archive(
    dockerd: Dockerd, node_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The run's node image (images/local/build), under two tags, as a ``docker save`` archive."""
    tags = [f"{NODE_IMAGE.rsplit('/', 1)[1]}:{tag}" for tag in TAGS]
    for tag in tags:
        dockerd.docker("tag", node_image, tag)
    archive = tmp_path_factory.mktemp("k8s-images") / "hepvol-node.tar"
    dockerd.docker("save", "-o", str(archive), *tags, timeout=300)
    return archive


def chart_values(cluster: Cluster, tag: str) -> dict[str, Any]:
    w = cluster.work
    return {
        "kubeletDir": str(cluster.kubelet_dir),
        "drivers": {"cvmfs": {"enabled": True}, "eos": {"enabled": True}},
        "csi": {"controller": {"enabled": False}},
        "flexVolume": {"enabled": True, "pluginDir": str(w / "flexvolume")},
        "hepvol": {
            "stateDir": str(w / "chart-state"),
            "mountRoot": str(w / "chart-mounts"),
            "logLevel": "DEBUG",
            # Backing mounts go with their last consumer (the tests watch that happen).
            "idleUnmountSeconds": 0,
            "serverCgroup": cluster.server_cgroup,
        },
        "cvmfs": {"client": "local", "cacheDir": str(w / "chart-cvmfs-cache")},
        "eos": {"client": "local"},
        "local": {"root": str(w / "repos")},
        "image": {"repository": NODE_IMAGE, "tag": tag, "pullPolicy": "Never"},
        # Pods get a 127.0.0.N address kubelet cannot reach: an httpGet probe never succeeds.
        "node": {
            "livenessProbe": {
                "failureThreshold": 100000,
                "initialDelaySeconds": 10,
                "periodSeconds": 20,
                "timeoutSeconds": 3,
            }
        },
    }


def install_chart(cluster: Cluster, tag: str) -> None:
    values = cluster.work / "etc" / f"values-{tag}.json"
    values.write_text(json.dumps(chart_values(cluster, tag)))
    result = subprocess.run(
        [str(HELM), "upgrade", "--install", "hepvol", str(REPO / "deploy/helm/hepvol"),
         "--namespace", NAMESPACE, "--create-namespace", f"--kubeconfig={cluster.kubeconfig}",
         "-f", str(values)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def daemonsets_ready(cluster: Cluster, tag: str = "") -> bool:
    """Every node DaemonSet runs one ready pod (of ``tag``, if given), both CSI drivers
    are registered."""
    for ds in cluster.get("daemonsets", "-n", NAMESPACE)["items"]:
        status, image = ds["status"], ds["spec"]["template"]["spec"]["containers"][0]["image"]
        if (
            not image.endswith(f":{tag}" if tag else "")
            or status.get("observedGeneration") != ds["metadata"]["generation"]
        ):
            return False
        if (status.get("updatedNumberScheduled"), status.get("numberReady"),
                status.get("numberAvailable")) != (1, 1, 1):  # fmt: skip
            return False
    pods = cluster.get("pods", "-n", NAMESPACE)["items"]
    if any(p["metadata"].get("deletionTimestamp") for p in pods):
        return False
    drivers = cluster.get("csinode", NODE)["spec"].get("drivers") or []
    return {d["name"] for d in drivers} == {"cvmfs.csi.cern.ch", "eos.csi.cern.ch"}


def _repositories(cluster: Cluster) -> None:
    for name in (SAMPLE, f"{SAMPLE}@v1"):
        sample = cluster.work / "repos" / name / "data"
        sample.mkdir(parents=True)
        (sample / "hello.txt").write_text(HELLO)
    (cluster.work / "repos" / "home").mkdir()
    (cluster.work / "repos" / "home" / "hello.txt").write_text(EOS_HELLO)


def _host_controller(cluster: Cluster, k8s_bin: Path) -> None:
    """hepvol's CSI controller and csi-provisioner on the host, talking to the API server."""
    w = cluster.work
    config = w / "etc" / "controller.toml"
    config.write_text(
        f'state_dir = "{w}/ctrl-state"\nmount_root = "{w}/ctrl-mounts"\n'
        f'target_roots = ["{w}/ctrl-targets"]\n[local]\nroot = "{w}/repos"\n'
    )
    socket = w / "ctrl" / "csi.sock"
    socket.parent.mkdir()
    hepvol = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "hepvol"
    cluster.start("hepvol-controller", str(hepvol), f"--config={config}", "csi", "--driver=cvmfs",
                  "--mode=controller", f"--endpoint=unix://{socket}")  # fmt: skip
    wait_until("the host CSI controller", socket.exists, 60)
    cluster.start("csi-provisioner", str(k8s_bin / "csi-provisioner"), f"--csi-address={socket}",
                  f"--kubeconfig={cluster.kubeconfig}", "--leader-election=false", "--v=2")  # fmt: skip
    cluster.apply({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "cvmfs-sample"}, "provisioner": "cvmfs.csi.cern.ch",
        "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        "parameters": {"repository": SAMPLE},
    })  # fmt: skip


@pytest.fixture(scope="session")
def node(
    k8s_bin: Path, node_image_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    started = time.monotonic()
    logs = tmp_path_factory.mktemp("k8s-logs")
    print(f"\n[k8s] logs of the node: {logs}")
    with running(k8s_bin, logs) as cluster:
        archives = images.base_images(k8s_bin, cluster.work / "run")
        cluster.import_images([*archives, node_image_archive])
        _repositories(cluster)
        install_chart(cluster, TAGS[0])
        _host_controller(cluster, k8s_bin)
        wait_until("the chart's node pods", lambda: daemonsets_ready(cluster, TAGS[0]), 180)
        wait_until("the FlexVolume drivers",
                   lambda: (cluster.work / "flexvolume" / "cern~cvmfs" / "cvmfs").exists(), 60)  # fmt: skip
        print(f"\n[k8s] node up with the chart in {time.monotonic() - started:.0f} s")
        yield cluster


# --- pods -------------------------------------------------------------------------------
READ_LOOP = (
    "trap 'exit 0' TERM; "
    'while true; do if out=$(cat "$FILE" 2>&1) && [ "$out" = "$EXPECT" ]; then echo ok; '
    'else echo "FAIL: $out"; fi; sleep "$PERIOD"; done'
)


def reader_pod(name: str, volume: dict[str, Any], file: str, expect: str,
               period: float = 0.2) -> dict[str, Any]:  # fmt: skip
    """A pod (non-root, default mountPropagation) reading ``/data/<file>`` in a loop."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
            "containers": [
                {
                    "name": "reader",
                    "image": images.BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", READ_LOOP],
                    "env": [
                        {"name": "FILE", "value": f"/data/{file}"},
                        {"name": "EXPECT", "value": expect.rstrip("\n")},
                        {"name": "PERIOD", "value": str(period)},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "data", **volume}],
        },
    }


def pod_running(cluster: Cluster, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "pod", name, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    pod: dict[str, Any] = json.loads(result.stdout)
    statuses = pod["status"].get("containerStatuses") or []
    return pod if statuses and all(s.get("ready") for s in statuses) else None


def reads(cluster: Cluster, pod: dict[str, Any]) -> tuple[int, list[str]]:
    """(successful reads, failed read lines) in a reader pod's container log."""
    uid = pod["metadata"]["uid"]
    directory = (
        cluster.work / "logs" / "pods" / f"default_{pod['metadata']['name']}_{uid}" / "reader"
    )
    ok, failed = 0, []
    for log in sorted(directory.glob("*.log")):
        for line in log.read_text().splitlines():
            message = line.split(" ", 3)[-1]
            if message == "ok":
                ok += 1
            else:
                failed.append(message)
    return ok, failed


def start_reader(cluster: Cluster, name: str, volume: dict[str, Any], file: str = "data/hello.txt",
                 expect: str = HELLO, timeout: float = 90) -> dict[str, Any]:  # fmt: skip
    """Start a reader pod, wait for it and for its first successful reads."""
    cluster.apply(reader_pod(name, volume, file, expect))
    pod: dict[str, Any] = wait_until(f"pod {name} to run", lambda: pod_running(cluster, name),
                                     timeout)  # fmt: skip
    wait_until(f"pod {name} to read", lambda: reads(cluster, pod)[0] >= 2, 30)
    _ok, failed = reads(cluster, pod)
    assert not failed, f"{name}: {failed[:5]}"
    return pod


def delete_pods(cluster: Cluster, *names: str) -> None:
    cluster.kubectl("delete", "pod", "--wait=true", "--timeout=90s", *names, timeout=120)
