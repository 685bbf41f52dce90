"""Named volumes (Docker volumes, CSI controller volumes) in the core, without root."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mount_core.errors import InUse, InvalidSpec
from mount_core.spec import Credential
from mount_core.volumes import NamedVolumes, VolumeExists
from tests.unit.standin_kernel import World


@pytest.fixture
def volumes(tmp_path: Path) -> NamedVolumes:
    return NamedVolumes(World(tmp_path).manager(), "csi-cvmfs")


def test_create_is_idempotent_and_refuses_another_record(volumes: NamedVolumes) -> None:
    first, created = volumes.create("pvc-1", {"parameters": {"repository": "a"}})
    assert created and volumes.get("pvc-1") == first
    assert volumes.create("pvc-1", {"parameters": {"repository": "a"}}) == (first, False)
    with pytest.raises(VolumeExists) as refused:
        volumes.create("pvc-1", {"parameters": {"repository": "b"}})
    assert refused.value.existing == first
    assert [v.name for v in volumes.list()] == ["pvc-1"]


def test_racing_creates_of_one_name_leave_one_winner(volumes: NamedVolumes) -> None:
    outcomes: list[str] = []

    def create(repository: str) -> None:
        try:
            volumes.create("pvc-race", {"parameters": {"repository": repository}})
            outcomes.append("created")
        except VolumeExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(str(i),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 7


@pytest.mark.parametrize("name", ["", "a/b", "..", "x\ny", "\u202eevil", "é" * 200])
def test_names_that_could_not_name_a_file_are_refused(volumes: NamedVolumes, name: str) -> None:
    with pytest.raises(InvalidSpec, match="volume name"):
        volumes.create(name, {})
    assert volumes.get(name) is None and volumes.remove(name) is False


def test_remove_asks_whether_in_use_and_keeps_a_used_volume(volumes: NamedVolumes) -> None:
    secret = Credential("eostoken", b"not-a-real-token")
    volumes.create("data", {"backend": "eos"}, secret)
    assert volumes.credential("data") == secret
    with pytest.raises(InUse, match="2 containers"):
        volumes.remove("data", lambda volume: "in use by 2 containers")
    assert volumes.get("data") is not None and volumes.credential("data") == secret
    assert volumes.remove("data", lambda volume: "")
    assert volumes.get("data") is None and volumes.credential("data") is None
    assert volumes.remove("data") is False
