"""Each CVMFS path through each front (Docker, FlexVolume, CSI) with the real client."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.conftest import HepvolEnv, write_config
from tests.e2e.dockerd import Dockerd
from tests.realclient.conftest import (
    REPO,
    V2_ONLY,
    Stratum0,
    client_pids,
)
from tests.realclient.fronts import CsiFront, DockerFront, Front, Volume, fronts

FRONTS = ["docker", "flexvolume", "csi"]
PATHS = ["plain", "tag", "hash", "date", "clientConfig", "automount"]


def volumes(stratum0: Stratum0) -> dict[str, tuple[Volume, str]]:
    """Each path as a front's options, with the revision it must show."""
    return {
        "plain": ({"repository": REPO}, "v2"),
        "tag": ({"repository": REPO, "tag": "v1"}, "v1"),
        "hash": ({"repository": REPO, "hash": stratum0.v1_hash}, "v1"),
        "date": ({"repository": REPO, "date": stratum0.v1_date}, "v1"),
        "clientConfig": ({"repository": REPO, "clientConfig": "CVMFS_TIMEOUT=7"}, "v2"),
        "automount": ({"repository": REPO}, "v2"),
    }


def automount(env: HepvolEnv) -> None:
    """hepvol's own autofs root (never /cvmfs) with the client's program map."""
    cvmfs = replace(env.config.cvmfs, automount=True, automount_map="/etc/auto.cvmfs")
    env.config = replace(env.config, cvmfs=cvmfs).validate()
    write_config(env.workdir, env.config)


@pytest.fixture
def front(request: pytest.FixtureRequest, real_env: HepvolEnv) -> Iterator[Front]:
    """The front named by the test's ``front`` parameter (a private dockerd for Docker)."""
    if request.node.callspec.params.get("path") == "automount":
        automount(real_env)
    engine: Dockerd | None = None
    if request.param == "docker":
        engine = request.getfixturevalue("dockerd")
    yield from fronts(request.param, real_env, engine)


def shows(front: Front, revision: str) -> None:
    for nonroot in (False, True):
        read = front.read("VERSION", nonroot=nonroot)
        assert (read.returncode, read.stdout) == (0, f"{revision}\n"), (nonroot, read.stderr)
    assert (front.read(V2_ONLY).returncode == 0) == (revision == "v2")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("front", FRONTS, indirect=True)
def test_path_through_front(front: Front, stratum0: Stratum0, path: str) -> None:
    volume, revision = volumes(stratum0)[path]
    front.publish(volume)
    shows(front, revision)
    front.unpublish()


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ({"tag": "nosuch"}, "has no tag 'nosuch'"),
        ({"hash": "0123456789abcdef0123456789abcdef01234567"}, "has no revision with root hash"),
    ],
    ids=["tag", "hash"],
)
@pytest.mark.parametrize("front", FRONTS, indirect=True)
def test_what_does_not_exist_is_the_protocols_not_found(
    front: Front, real_env: HepvolEnv, path: Volume, missing: str
) -> None:
    refusal = front.refusal({"repository": REPO, **path})
    assert missing in refusal
    if isinstance(front, CsiFront):
        assert refusal.startswith("NOT_FOUND")
    assert list(os.scandir(real_env.config.mount_root)) == []


@pytest.mark.parametrize("front", FRONTS, indirect=True)
def test_a_date_the_client_cannot_take_is_refused_naming_the_format(
    front: Front, real_env: HepvolEnv
) -> None:
    refusal = front.refusal({"repository": REPO, "date": "2024-05-01"})
    assert "YYYY-MM-DDTHH:MM:SSZ" in refusal and "date" in refusal
    assert list(os.scandir(real_env.config.mount_root)) == []


@pytest.mark.parametrize("path", ["plain", "tag"])
@pytest.mark.parametrize("front", ["docker", "csi"], indirect=True)
def test_killed_client_is_readable_again_within_5_s(
    front: Front, stratum0: Stratum0, real_env: HepvolEnv, path: str,
    repair_times: dict[str, float],
) -> None:  # fmt: skip
    volume, revision = volumes(stratum0)[path]
    front.publish(volume)
    shows(front, revision)
    [backing] = os.listdir(real_env.config.mount_root)
    pids = client_pids(os.path.join(real_env.config.mount_root, backing))
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    # Docker: a new container (a running one keeps its private copy of the dead
    # mount: Docker binds volumes rprivate, so no remount reaches it).
    fresh = isinstance(front, DockerFront)
    while time.monotonic() - start < 5 and front.read("VERSION", nonroot=fresh).returncode:
        time.sleep(0.05)
    took = time.monotonic() - start
    assert took < 5, "not readable within 5 s of kill -9"
    repair_times[f"{front.name} {'system' if path == 'plain' else 'private'}"] = took
    if not fresh:
        shows(front, revision)
    front.unpublish()


@pytest.mark.parametrize("path", ["tag"])
@pytest.mark.parametrize("front", FRONTS, indirect=True)
def test_stopped_client_every_call_answers_within_its_bound(
    front: Front, stratum0: Stratum0, real_env: HepvolEnv, path: str
) -> None:
    """SIGSTOP of cvmfs2: the condition says why (daemons) and unpublishing still ends."""
    volume, _ = volumes(stratum0)[path]
    front.publish(volume)
    [backing] = os.listdir(real_env.config.mount_root)
    pids = client_pids(os.path.join(real_env.config.mount_root, backing))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    config = real_env.config
    bound = config.probe_timeout_seconds + 5
    try:
        start = time.monotonic()
        if isinstance(front, CsiFront):
            stats = front.server.client.stats("vol", str(front.target), timeout=bound)
            condition = stats.volume_condition
            assert condition.abnormal and "not responding" in condition.message
        elif isinstance(front, DockerFront):
            time.sleep(config.health_interval_seconds * 2 + bound)
            start = time.monotonic()
            status = front.get()["Volume"]["Status"]
            assert "not responding" in str(status), status
        assert time.monotonic() - start < bound
        start = time.monotonic()
        front.unpublish()
        took = time.monotonic() - start
        # Unmounting a hung client: fusermount within mount_timeout_seconds, then a
        # lazy detach, then the client is given a few seconds before SIGKILL.
        assert took < config.mount_timeout_seconds + 10, f"unpublish took {took:.1f} s"
        assert os.listdir(config.mount_root) == []
        assert client_pids(os.path.join(config.mount_root, backing)) == []
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
