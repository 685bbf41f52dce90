"""The daemons' own defences: root-only sockets, a root-only state dir, targets only below the roots.

Every check runs the real front: the Docker plugin daemon, the CSI server, the
``hepvol watch`` daemon, the installed FlexVolume driver and the ``hepvol`` CLI.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli
from tests.e2e.dockerd import Dockerd, make_plugin
from tests.integration.test_csi_node import mounts_under, start_csi
from tests.integration.test_flexvolume import Kubelet, kubelet_options
from tests.standins.world import install

REFUSAL = "is writable by a user other than root"


def test_docker_socket_is_0660_root(hepvol_env: HepvolEnv, tmp_path: Path) -> None:
    for plugin in make_plugin(hepvol_env, Dockerd(tmp_path / "no-engine")):
        info = plugin.socket.lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert (info.st_uid, info.st_gid) == (0, 0)


def test_csi_socket_is_root_only(hepvol_env: HepvolEnv) -> None:
    for csi in start_csi(hepvol_env, "--mode", "node", "--node-id", "n1"):
        path = Path(csi.endpoint[len("unix://") :])
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode) and info.st_uid == 0
        assert stat.S_IMODE(info.st_mode) & 0o077 == 0, oct(info.st_mode)


def _loosen(state: Path, how: str) -> None:
    if how == "world-writable":
        state.chmod(0o777)
    elif how == "group-writable":
        state.chmod(0o770)
    else:
        os.chown(state, 65534, 65534)


def _run(env: HepvolEnv, front: str) -> tuple[int, str]:
    """Start ``front`` against ``env``; (exit status, what it told the operator)."""
    if front == "flexvolume":
        kubelet = Kubelet(env)
        reply = kubelet.call("mount", str(kubelet.pod_dir()), json.dumps({"repository": SAMPLE}))
        return (1 if reply["status"] == "Failure" else 0), str(reply.get("message"))
    if front == "status":
        result = hepvol_cli(env, "status")
        return result.returncode, result.stderr
    argv = {
        "docker-plugin": ["docker-plugin", "--driver", "cvmfs", "--name", "hepvolsecurity",
                          "--socket", str(env.workdir / "docker.sock")],
        "csi": ["csi", "--endpoint", f"unix://{env.workdir}/csi/csi.sock", "--node-id", "n1"],
        "watch": ["watch", "--metrics-port", "0"],
    }[front]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "hepvol", *argv], env=env.environ(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, result.stderr


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "owned-by-nobody"])
@pytest.mark.parametrize("front", ["docker-plugin", "csi", "watch", "flexvolume", "status"])
def test_every_front_refuses_a_state_dir_others_can_write(
    hepvol_env: HepvolEnv, front: str, how: str
) -> None:
    state = Path(hepvol_env.config.state_dir)
    _loosen(state, how)
    code, told = _run(hepvol_env, front)
    assert code != 0
    assert REFUSAL in told and f"chmod 0700 {state}" in told, told
    assert "Traceback" not in told and len(told.strip().splitlines()) == 1, told
    assert list(state.iterdir()) == [], "nothing is written into an untrusted state dir"
    assert not (hepvol_env.workdir / "docker.sock").exists()
    assert not (hepvol_env.workdir / "csi" / "csi.sock").exists()


class HostileTargets:
    """Targets every front must refuse, and the directory they would lead into."""

    def __init__(self, env: HepvolEnv) -> None:
        targets = env.targets
        self.outside = env.workdir / "outside"
        self.outside.mkdir()
        (targets / "real").mkdir()
        (targets / "link").symlink_to(self.outside)
        (targets / "linkvol").symlink_to(self.outside)
        (targets / "inlink").symlink_to(targets / "real")
        evil = Path(str(targets) + "-evil")  # shares the root's string prefix
        evil.mkdir()
        self.paths = {
            "symlink in the middle": f"{targets}/link/vol",
            "symlink as the target": f"{targets}/linkvol",
            "symlink back inside the root": f"{targets}/inlink/vol",
            "sibling with the root's prefix": f"{evil}/vol",
            "dot-dot out of the root": f"{targets}/real/../../outside/vol",
            "outside every root": f"{self.outside}/vol",
            "the root itself": str(targets),
            "relative": "targets/real/vol",
        }
        self.dirs = [self.outside, targets / "real", evil]

    def untouched(self) -> bool:
        return all(list(d.iterdir()) == [] for d in self.dirs)


def test_flexvolume_refuses_targets_outside_the_roots_or_through_symlinks(
    hepvol_env: HepvolEnv,
) -> None:
    kubelet = Kubelet(hepvol_env)
    hostile = HostileTargets(hepvol_env)
    for why, target in hostile.paths.items():
        reply = kubelet.call("mount", target, json.dumps({"repository": SAMPLE}))
        assert reply["status"] == "Failure", (why, reply)
        assert "target path" in reply["message"], (why, reply)
    assert hostile.untouched()
    assert kubelet.mounts() == [] and kubelet.status() == []
    # A real pod dir still works: the refusals are about the paths, not the driver.
    pod = kubelet.pod_dir()
    assert kubelet.mount(pod, kubelet_options(repository=SAMPLE))["status"] == "Success"
    assert kubelet.unmount(pod)["status"] == "Success"


def test_csi_refuses_targets_outside_the_roots_or_through_symlinks(hepvol_env: HepvolEnv) -> None:
    hostile = HostileTargets(hepvol_env)
    for csi in start_csi(hepvol_env, "--mode", "node", "--node-id", "n1"):
        for why, target in hostile.paths.items():
            with pytest.raises(grpc.RpcError) as info:
                csi.client.publish("vol", target, {"repository": SAMPLE})
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            assert "target path" in (info.value.details() or ""), (why, info.value.details())
        assert hostile.untouched()
        assert mounts_under(hepvol_env) == []
        assert hepvol_env.manager().ledger.consumers() == []


@pytest.mark.parametrize(
    "setting",
    ["CVMFS_DEBUGLOG=/etc/hepvol-pwn", "CVMFS_USER=root", "CVMFS_AUTHZ_HELPER=/bin/sh",
     "CVMFS_KEYS_DIR=/tmp", "CVMFS_SUID=yes"],
)  # fmt: skip
def test_a_pods_client_config_cannot_name_host_paths_users_or_programs(
    hepvol_env: HepvolEnv, setting: str
) -> None:
    install(hepvol_env)  # the cvmfs2 client (stand-in): it reads the generated config
    kubelet = Kubelet(hepvol_env)
    pod = kubelet.pod_dir()
    proxy = "CVMFS_HTTP_PROXY=http://squid.example.org:3128"
    options = kubelet_options(repository=SAMPLE, clientConfig=f"{proxy}\n{setting}\n")
    reply = kubelet.mount(pod, options)
    assert reply["status"] == "Failure", reply
    assert f'invalid clientConfig "{setting.split("=")[0]}"' in reply["message"]
    assert kubelet.mounts() == [] and kubelet.status() == []
    assert not Path("/etc/hepvol-pwn").exists()
    allowed = kubelet.mount(pod, kubelet_options(repository=SAMPLE, clientConfig=proxy))
    assert allowed["status"] == "Success", allowed
    assert kubelet.unmount(pod)["status"] == "Success"
