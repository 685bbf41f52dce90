"""Repository names: the documented rule and every path built from a name agree.

Issue #14 item 11: names of 238-253 characters passed the rule ("at most 253
characters") and then failed with three different misleading errors, one a
crash, because lock, pid, log and mount-point names are built from them and a
file name holds 255 bytes. The rule now says 200, every front refuses a longer
name at the request with that one line and changes nothing, and a name of
exactly 200 characters (with a tag: the longest file names hepvol builds) works.
"""

from __future__ import annotations

import grpc
import pytest

from csi_driver.generated import csi_pb2
from mount_core.spec import MAX_REPOSITORY
from tests.conftest import HepvolEnv
from tests.e2e.dockerd import Plugin
from tests.integration.test_csi_node import CsiProcess, code_of, mounts_under
from tests.integration.test_flexvolume import Kubelet, kubelet_options

LIMIT = f"at most {MAX_REPOSITORY} characters"


def name_of(length: int) -> str:
    """A valid-looking fully qualified name of exactly ``length`` characters."""
    labels, left = [], length
    while left > 63:
        label = "a" * min(62, left - 2)
        labels.append(label)
        left -= len(label) + 1
    return ".".join([*labels, "b" * left])


def test_the_documented_limit_is_200() -> None:
    assert MAX_REPOSITORY == 200
    for length in (200, 238, 253):
        assert len(name_of(length)) == length


@pytest.mark.parametrize("length", [201, 238, 245, 253])
def test_a_longer_name_is_refused_at_every_front_with_the_limit(
    world: HepvolEnv, csi: CsiProcess, plugin: Plugin, kubelet: Kubelet, length: int
) -> None:
    name = name_of(length)
    target = world.targets / "csi-pod"
    code, details = code_of(csi.client.publish, "vol-long", str(target), {"repository": name})
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "repository" in details and LIMIT in details, details

    for tagged in (name, f"{name}@v1"):
        reply = plugin.call("VolumeDriver.Create", {"Name": tagged, "Opts": {}})
        # Past 255 characters Docker's own name limit speaks first.
        limit = LIMIT if len(tagged) <= 255 else "use 1-255 printable characters"
        assert limit in str(reply["Err"]), reply

    pod = kubelet.pod_dir()
    reply = kubelet.mount(pod, kubelet_options(repository=name))
    assert reply["status"] == "Failure"
    assert "repository" in reply["message"] and LIMIT in reply["message"], reply

    assert mounts_under(world) == []
    assert plugin.call("VolumeDriver.List")["Volumes"] == []
    assert kubelet.status() == []


def test_a_name_of_exactly_the_limit_works_pinned_and_not(
    world: HepvolEnv, csi: CsiProcess
) -> None:
    name = name_of(MAX_REPOSITORY)
    for volume, tag in ((name, None), (f"{name}@v1", "v1")):
        world.make_repo(volume, {"README": f"{volume[-6:]}\n"})
        target = world.targets / f"pod-{tag or 'trunk'}"
        context = {"repository": name, **({"tag": tag} if tag else {})}
        csi.client.publish(f"vol-{tag}", str(target), context)
        assert (target / "README").read_text() == f"{volume[-6:]}\n"
        stats = csi.client.stats(f"vol-{tag}", str(target))
        assert not stats.volume_condition.abnormal
        csi.client.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=f"vol-{tag}", target_path=str(target))
        )
    assert mounts_under(world) == []


def test_a_tag_too_long_for_the_local_backends_directory_is_refused_with_why(
    world: HepvolEnv, csi: CsiProcess
) -> None:
    name = name_of(MAX_REPOSITORY)
    code, details = code_of(csi.client.publish, "vol-tag", str(world.targets / "pod"),
                            {"repository": name, "tag": "t" * 100})  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "use a shorter tag" in details and "255 bytes" in details, details
    assert mounts_under(world) == []
