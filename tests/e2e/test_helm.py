"""The Helm chart and the plain manifests, checked with the real tools.

``helm lint`` and ``helm template`` (pinned, built by ``make tools``) on the
defaults and on every values file in ``deploy/helm/hepvol/ci/``; every rendered
object validated strictly against the OpenAPI schema of the pinned Kubernetes
release by kubeconform; the committed ``deploy/kubernetes/`` compared with a fresh
render; and what a node would run: the config file loaded by hepvol's own config
loader, the container arguments parsed by hepvol's own CLI.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hepvol import cli
from mount_core import config as config_module
from mount_core.backends import eos_config
from tests.conftest import REPO

CHART = REPO / "deploy" / "helm" / "hepvol"
TOOLS = REPO / ".tools"
HELM = TOOLS / "bin" / "helm"
KUBECONFORM = TOOLS / "bin" / "kubeconform"
VALUES = [None, *sorted(p.name for p in (CHART / "ci").glob("*.yaml"))]


def _k8s_version() -> str:
    """The pinned release (``K8S_VERSION`` in the Makefile, the one source)."""
    found = re.search(r"^K8S_VERSION := v(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, "Makefile has no K8S_VERSION pin"
    return found.group(1)


K8S_VERSION = _k8s_version()
SCHEMAS = TOOLS / "k8s-schemas" / f"v{K8S_VERSION}"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    for path in (HELM, KUBECONFORM, SCHEMAS / "daemonset-apps-v1.json"):
        if not path.exists():
            pytest.fail(f"{path} is missing: run `make tools` (pinned helm, kubeconform, schemas)")


def _run(*argv: str | Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input,
                          timeout=120, check=False)  # fmt: skip


def render(values: str | None, *extra: str) -> str:
    argv: list[str | Path] = [HELM, "template", "hepvol", CHART, "--namespace", "kube-system",
                              "--kube-version", K8S_VERSION, *extra]  # fmt: skip
    if values:
        argv += ["-f", CHART / "ci" / values]
    result = _run(*argv)
    assert result.returncode == 0, f"helm template failed: {result.stderr}"
    return result.stdout


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate(text: str) -> subprocess.CompletedProcess[str]:
    location = f"{SCHEMAS}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"
    return _run(KUBECONFORM, "-strict", "-summary", "-schema-location", location, "-", input=text)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def values_of(values: str | None) -> dict[str, Any]:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if values:
        _merge(base, yaml.safe_load((CHART / "ci" / values).read_text()))
    return base


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_is_clean(values: str | None) -> None:
    argv: list[str | Path] = [HELM, "lint", "--strict", CHART, "--kube-version", K8S_VERSION]
    if values:
        argv += ["-f", CHART / "ci" / values]
    result = _run(*argv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_object_matches_the_kubernetes_schema(values: str | None) -> None:
    text = render(values, "--set", "examples.enabled=true")
    count = len(objects(text))
    result = validate(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} resources found" in result.stdout
    assert f"Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0" in result.stdout


def test_the_validator_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    text = render(None)
    misspelt = text.replace("mountPropagation: Bidirectional", "mountPropagaton: Bidirectional")
    result = validate(misspelt)
    assert result.returncode != 0
    assert "additional properties 'mountPropagaton' not allowed" in result.stdout
    wrong = validate(text.replace("attachRequired: false", 'attachRequired: "false"'))
    assert wrong.returncode != 0 and "want boolean" in wrong.stdout


def test_plain_manifests_are_the_charts_defaults(tmp_path: Path) -> None:
    result = _run(CHART.parent / "render-manifests", tmp_path)
    assert result.returncode == 0, result.stderr
    committed = REPO / "deploy" / "kubernetes"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in committed.glob("*.yaml"))
    for name in names:
        assert (committed / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/kubernetes/{name} differs from the chart: run `make manifests` and commit"
        )
    assert validate((committed / "hepvol.yaml").read_text()).returncode == 0


def test_csi_drivers_are_declared_for_read_only_node_local_volumes() -> None:
    docs = objects(render("eos-flexvolume-examples-values.yaml"))
    drivers = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "CSIDriver")}
    assert sorted(drivers) == ["cvmfs.csi.cern.ch", "eos.csi.cern.ch"]
    for spec in drivers.values():
        assert spec == {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "None",
                        "volumeLifecycleModes": ["Persistent", "Ephemeral"]}  # fmt: skip


@pytest.mark.parametrize("values", VALUES)
def test_node_config_is_accepted_by_hepvol(values: str | None, tmp_path: Path) -> None:
    docs = objects(render(values))
    (config_map,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "hepvol-config"
    ]
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    loaded = config_module.load(str(path), env={})
    chosen = values_of(values)
    assert loaded.target_roots == (chosen["kubeletDir"].rstrip("/") + "/pods",)
    assert loaded.state_dir == chosen["hepvol"]["stateDir"]
    assert loaded.server_cgroups == (chosen["hepvol"]["serverCgroup"],)
    assert loaded.cvmfs.automount is chosen["cvmfs"]["automount"]
    assert [dict(i) for i in loaded.eos.instances] == chosen["eos"]["instances"]
    assert sorted(eos_config.parse_instances(loaded.eos.instances)) == sorted(
        i["name"] for i in chosen["eos"]["instances"]
    )


def _node_daemonsets(values: str | None) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    chosen = values_of(values)
    for ds in by_kind(objects(render(values)), "DaemonSet"):
        yield ds["metadata"]["name"], ds, chosen


@pytest.mark.parametrize("values", VALUES)
def test_node_daemons_share_mounts_with_the_host(values: str | None) -> None:
    found = 0
    for name, ds, chosen in _node_daemonsets(values):
        found += 1
        pod = ds["spec"]["template"]["spec"]
        hepvol = containers(ds)["hepvol"]
        assert hepvol["securityContext"]["privileged"] is True
        mounts = {m["mountPath"]: m for m in hepvol["volumeMounts"]}
        kubelet = chosen["kubeletDir"].rstrip("/")
        for shared in (f"{kubelet}/pods", chosen["hepvol"]["mountRoot"]):
            assert mounts[shared].get("mountPropagation") == "Bidirectional", (name, shared)
        assert "/dev/fuse" in mounts
        host = {v["name"]: v.get("hostPath", {}).get("path") for v in pod["volumes"]}
        assert host[mounts[chosen["hepvol"]["stateDir"]]["name"]] == chosen["hepvol"]["stateDir"]
        assert pod["priorityClassName"] == "system-node-critical"
        assert pod["tolerations"] == chosen["node"]["tolerations"]
        assert ds["spec"]["updateStrategy"]["type"] == chosen["node"]["updateStrategy"]["type"]
        # FUSE servers must not die with the pod's PID namespace (and eosxd reads /proc).
        assert pod["hostPID"] is True, name
    assert found


@pytest.mark.parametrize("values", VALUES)
def test_node_daemons_hold_no_hidden_copies_and_start_servers_outside_the_pod(
    values: str | None,
) -> None:
    """Mounts under a hostPath mounted without propagation are copied into the pod at
    its start and kept there after the host unmounts them: the mount root and the
    pods dir must lie under no such mount. FUSE servers go to the host's cgroup."""
    for name, ds, chosen in _node_daemonsets(values):
        hepvol = containers(ds)["hepvol"]
        private = [m["mountPath"].rstrip("/") + "/" for m in hepvol["volumeMounts"]
                   if m.get("mountPropagation") != "Bidirectional"]  # fmt: skip
        kubelet = chosen["kubeletDir"].rstrip("/")
        for shared in (f"{kubelet}/pods", chosen["hepvol"]["mountRoot"]):
            assert not [p for p in private if shared.startswith(p)], (name, shared, private)
        mounts = {m["mountPath"]: m["name"] for m in hepvol["volumeMounts"]}
        host = {v["name"]: v.get("hostPath", {}).get("path") for v in
                ds["spec"]["template"]["spec"]["volumes"]}  # fmt: skip
        assert host[mounts["/host/sys/fs/cgroup"]] == "/sys/fs/cgroup", name
    (config_map,) = [d for d in by_kind(objects(render(values)), "ConfigMap")
                     if d["metadata"]["name"] == "hepvol-config"]  # fmt: skip
    assert (
        f'server_cgroups = ["{chosen["hepvol"]["serverCgroup"]}"]'
        in config_map["data"]["config.toml"]
    )


@pytest.mark.parametrize("values", VALUES)
def test_csi_node_plugin_is_registered_and_probed(values: str | None) -> None:
    for name, ds, chosen in _node_daemonsets(values):
        if name.endswith("flexvolume"):
            continue
        driver = name.removeprefix("hepvol-").removesuffix("-node")
        kubelet = chosen["kubeletDir"].rstrip("/")
        parts = containers(ds)
        assert set(parts) == {"hepvol", "node-driver-registrar", "liveness-probe"}
        registrar = parts["node-driver-registrar"]["args"]
        socket = f"{kubelet}/plugins/{driver}.csi.cern.ch/csi.sock"
        assert f"--kubelet-registration-path={socket}" in registrar
        host = {v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"]
                if "hostPath" in v}  # fmt: skip
        assert host["registration-dir"] == f"{kubelet}/plugins_registry"
        assert host["socket-dir"] == os.path.dirname(socket)
        # kubelet's probe hits the healthz port, answered by the livenessprobe
        # sidecar, which calls the driver's Probe over the socket.
        hepvol = parts["hepvol"]
        port = {p["name"]: p["containerPort"] for p in hepvol["ports"]}["healthz"]
        assert hepvol["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
        assert f"--health-port={port}" in parts["liveness-probe"]["args"]
        args = cli.build_parser().parse_args(hepvol["args"])
        assert (args.command, args.driver, args.mode) == ("csi", driver, "node")
        env = {e["name"]: e for e in hepvol["env"]}
        assert env["CSI_ENDPOINT"]["value"] == "unix:///csi/csi.sock"
        assert env["NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_controller_and_flexvolume_commands_are_hepvols_own() -> None:
    docs = objects(render("eos-flexvolume-examples-values.yaml"))
    for deployment in by_kind(docs, "Deployment"):
        parts = containers(deployment)
        args = cli.build_parser().parse_args(parts["hepvol"]["args"])
        assert (args.command, args.mode) == ("csi", "controller")
        assert "--csi-address=/csi/csi.sock" in parts["csi-provisioner"]["args"]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "hepvol-controller"
    (flex,) = [
        d for d in by_kind(docs, "DaemonSet") if d["metadata"]["name"] == "hepvol-flexvolume"
    ]
    parts = containers(flex)
    script = parts["install"]["command"][-1]
    (line,) = [ln for ln in script.splitlines() if ln.startswith("exec hepvol ")]
    install = cli.build_parser().parse_args(shlex.split(line)[2:])
    assert (install.command, install.action) == ("flexvolume", "install")
    assert (install.plugin_dir, install.config) == ("/flexvolume", "/opt/hepvol/etc/config.toml")
    plugin = {v["name"]: v for v in flex["spec"]["template"]["spec"]["volumes"]}["plugin-dir"]
    assert plugin["hostPath"]["path"] == values_of(None)["flexVolume"]["pluginDir"]
    assert cli.build_parser().parse_args(parts["hepvol"]["args"]).command == "watch"
    binding = by_kind(docs, "ClusterRoleBinding")[0]
    assert binding["subjects"][0]["name"] == "hepvol-controller"


def test_example_pods_see_repairs_through_host_to_container_propagation() -> None:
    docs = objects(render("eos-flexvolume-examples-values.yaml"))
    pods = by_kind(docs, "Pod")
    kinds = {next(iter(set(v) - {"name"})) for p in pods for v in p["spec"]["volumes"]}
    assert kinds == {"csi", "persistentVolumeClaim", "flexVolume"}
    for pod in pods:
        for container in pod["spec"]["containers"]:
            for mount in container["volumeMounts"]:
                assert mount["mountPropagation"] == "HostToContainer", pod["metadata"]["name"]
    classes = {s["metadata"]["name"]: s for s in by_kind(docs, "StorageClass")}
    assert classes["cvmfs-atlas"]["provisioner"] == "cvmfs.csi.cern.ch"
    assert classes["cvmfs-atlas"]["parameters"] == {"repository": "atlas.cern.ch"}


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("kubeletDir=var/lib/kubelet", "/kubeletDir"),
        ("cvmfs.client=cvmfs", "/cvmfs/client"),
        ("hepvol.statedir=/srv/hepvol", "'statedir' not allowed"),
        ("eos.instances[0].name=CMS", "/eos/instances/0"),
        ("node.updateStrategy.type=Recreate", "/node/updateStrategy/type"),
        ("hepvol.mountRoot=/var/lib/hepvol/mounts", "must lie outside hepvol.stateDir"),
        ("hepvol.serverCgroup=../x", "/hepvol/serverCgroup"),
    ],
)
def test_bad_values_are_refused_naming_the_field(setting: str, named: str) -> None:
    argv = [HELM, "template", "hepvol", CHART, "--kube-version", K8S_VERSION, "--set", setting]
    result = _run(*argv)
    assert result.returncode != 0 and result.stdout == ""
    assert named in result.stderr, result.stderr


def test_stale_pod_eviction_is_off_by_default_and_grants_only_eviction() -> None:
    def node(docs: list[dict[str, Any]]) -> dict[str, Any]:
        (ds,) = [
            d for d in by_kind(docs, "DaemonSet") if d["metadata"]["name"] == "hepvol-cvmfs-node"
        ]
        return ds

    default = objects(render(None))
    assert not [
        r for r in by_kind(default, "ClusterRole") if r["metadata"]["name"].endswith("-evict")
    ]
    pod = node(default)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert (
        not cli.build_parser()
        .parse_args(containers(node(default))["hepvol"]["args"])
        .evict_stale_pods
    )

    enabled = objects(render(None, "--set", "node.evictStalePods=true"))
    pod = node(enabled)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert (
        cli.build_parser().parse_args(containers(node(enabled))["hepvol"]["args"]).evict_stale_pods
    )
    (role,) = [
        r for r in by_kind(enabled, "ClusterRole") if r["metadata"]["name"] == "hepvol-node-evict"
    ]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}
    ]
    (binding,) = [b for b in by_kind(enabled, "ClusterRoleBinding")
                  if b["roleRef"]["name"] == "hepvol-node-evict"]  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "kube-system"}
    ]
