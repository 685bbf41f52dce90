"""The three fronts driven as their callers drive them, with the real client behind.

* :class:`CsiFront`: ``hepvol csi --mode node`` over gRPC; the target is read as
  root and as ``nobody``;
* :class:`FlexFront`: the *installed* FlexVolume launcher run with an empty
  environment, as kubelet runs it; the pod volume dir is read as root and ``nobody``;
* :class:`DockerFront`: ``hepvol docker-plugin`` on its socket behind a private
  dockerd; ``docker run`` reads the volume as root and as ``--user 1000``.

Each takes a volume as CSI/FlexVolume options (``repository``, ``tag``, ``hash``,
``date``, ``clientConfig``); Docker gets them as its name (``repo@tag``,
``repo#hash``) and ``-o`` options.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import HepvolEnv
from tests.e2e.dockerd import IMAGE, Dockerd, Plugin, make_plugin
from tests.integration.test_csi_node import CsiProcess, start_csi
from tests.integration.test_flexvolume import Kubelet, kubelet_options
from tests.realclient.conftest import read_as

Volume = dict[str, str]


class Front:
    """Publish one volume, read files from it as root or as a non-root user."""

    name = ""

    def publish(self, volume: Volume) -> None:
        raise NotImplementedError

    def read(self, relative: str, *, nonroot: bool = False) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def unpublish(self) -> None:
        raise NotImplementedError

    def refusal(self, volume: Volume) -> str:
        """Publish a volume that must be refused; the protocol's error (code and text)."""
        raise NotImplementedError


class _TargetFront(Front):
    """Fronts whose consumer is a directory on the host (CSI, FlexVolume)."""

    target: Path

    def read(self, relative: str, *, nonroot: bool = False) -> subprocess.CompletedProcess[str]:
        path = self.target / relative
        if nonroot:
            return read_as("nobody", path)
        return subprocess.run(["cat", str(path)], capture_output=True, text=True, check=False)


class CsiFront(_TargetFront):
    name = "csi"

    def __init__(self, env: HepvolEnv, server: CsiProcess) -> None:
        self.env, self.server = env, server
        self.target = env.targets / "pod" / "vol"

    def publish(self, volume: Volume) -> None:
        self.target.parent.mkdir(exist_ok=True)
        self.server.client.publish("vol", str(self.target), volume)

    def unpublish(self) -> None:
        self.server.client.unpublish("vol", str(self.target))

    def refusal(self, volume: Volume) -> str:
        import grpc

        self.target.parent.mkdir(exist_ok=True)
        try:
            self.server.client.publish("bad", str(self.target), volume)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        raise AssertionError("published")


class FlexFront(_TargetFront):
    name = "flexvolume"

    def __init__(self, env: HepvolEnv) -> None:
        self.kubelet = Kubelet(env)
        self.target = Path()

    def publish(self, volume: Volume) -> None:
        self.target = self.kubelet.pod_dir()
        reply = self.kubelet.mount(self.target, kubelet_options(**volume))
        assert reply["status"] == "Success", reply

    def unpublish(self) -> None:
        assert self.kubelet.unmount(self.target)["status"] == "Success"

    def refusal(self, volume: Volume) -> str:
        reply = self.kubelet.mount(self.kubelet.pod_dir(name="bad"), kubelet_options(**volume))
        assert reply["status"] == "Failure", reply
        return str(reply["message"])


def docker_volume(volume: Volume) -> tuple[str, list[str]]:
    """A volume as Docker names it: ``repo[@tag|#hash]`` and ``-o`` options."""
    name = volume["repository"]
    options = []
    for key, value in volume.items():
        if key == "tag":
            name += f"@{value}"
        elif key == "hash":
            name += f"#{value}"
        elif key != "repository":
            options += ["-o", f"{key}={value}"]
    return name, options


class DockerFront(Front):
    name = "docker"

    def __init__(self, plugin: Plugin) -> None:
        self.plugin, self.volume, self.holder = plugin, "", ""

    @property
    def engine(self) -> Dockerd:
        return self.plugin.engine

    def publish(self, volume: Volume) -> None:
        """Create the volume and keep it in use by a running container, as a job would."""
        self.volume, options = docker_volume(volume)
        self.engine.docker("volume", "create", "-d", self.plugin.driver, *options, self.volume)
        self.holder = self.engine.docker(
            "run", "-d", "--network", "none", "-v", f"{self.volume}:/cvmfs:ro", IMAGE,
            "sleep", "3600",
        ).stdout.strip()  # fmt: skip

    def read(self, relative: str, *, nonroot: bool = False) -> subprocess.CompletedProcess[str]:
        """Root reads in the running container; ``--user 1000`` in a new one."""
        if not nonroot:
            return self.engine.docker("exec", self.holder, "cat", f"/cvmfs/{relative}",
                                      check=False)  # fmt: skip
        return self.engine.docker(
            "run", "--rm", "--network", "none", "--user", "1000",
            "-v", f"{self.volume}:/cvmfs:ro", IMAGE, "cat", f"/cvmfs/{relative}", check=False,
        )  # fmt: skip

    def unpublish(self) -> None:
        self.engine.docker("rm", "-f", self.holder)
        self.engine.docker("volume", "rm", self.volume)

    def refusal(self, volume: Volume) -> str:
        name, options = docker_volume(volume)
        created = self.engine.docker(
            "volume", "create", "-d", self.plugin.driver, *options, name, check=False
        )
        if created.returncode != 0:
            return created.stderr.strip()
        result = self.engine.docker(
            "run", "--rm", "--network", "none", "-v", f"{name}:/cvmfs:ro", IMAGE, "true",
            check=False,
        )  # fmt: skip
        assert result.returncode != 0, "the container ran"
        self.engine.docker("volume", "rm", "-f", name, check=False)
        return result.stderr.strip()

    def get(self) -> dict[str, Any]:
        reply: dict[str, Any] = self.plugin.call("VolumeDriver.Get", {"Name": self.volume})
        return reply


def fronts(name: str, env: HepvolEnv, engine: Dockerd | None) -> Iterator[Front]:
    """Generator for a fixture: the front ``name`` serving ``env``, cleaned up after."""
    if name == "csi":
        for server in start_csi(env, "--mode", "node", "--node-id", "node-1"):
            yield CsiFront(env, server)
    elif name == "flexvolume":
        yield FlexFront(env)
    else:
        assert engine is not None
        for plugin in make_plugin(env, engine):
            yield DockerFront(plugin)
