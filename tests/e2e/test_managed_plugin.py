"""The Docker managed (v2) plugin assembled from the node image, with a real dockerd.

``deploy/docker/managed/create`` turns the image's root file system and
``deploy/docker/managed/config.json`` into a plugin; the test drives it through
create, set, enable, volume create, a read, disable (its mounts gone) and enable
again (volumes still listed, and readable).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import REPO, SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import IMAGE, Dockerd
from tests.e2e.test_images import unique

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def managed_plugin(dockerd: Dockerd, node_image: str, hepvol_env: HepvolEnv) -> Iterator[str]:
    """The managed plugin, created from the image and configured for this world."""
    name = f"{unique('hepvolmanaged')}:test"
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
