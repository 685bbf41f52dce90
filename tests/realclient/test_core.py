"""Every CVMFS path of the core with the real client: revisions, readers, failures, cleanup."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mount_core.backends import Backends
from mount_core.consumer import Consumer
from mount_core.errors import InvalidSpec, NotFound
from mount_core.health import HealthMonitor
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import HepvolEnv
from tests.realclient.conftest import (
    REPO,
    V2_ONLY,
    Stratum0,
    client_pids,
    read_as,
    wait_readable,
)


def specs(stratum0: Stratum0) -> dict[str, tuple[VolumeSpec, str]]:
    """Each CVMFS path with the revision it must show."""
    return {
        "plain": (VolumeSpec(backend="cvmfs", repository=REPO), "v2"),
        "tag": (VolumeSpec(backend="cvmfs", repository=REPO, tag="v1"), "v1"),
        "hash": (VolumeSpec(backend="cvmfs", repository=REPO, hash=stratum0.v1_hash), "v1"),
        "date": (VolumeSpec(backend="cvmfs", repository=REPO, date=stratum0.v1_date), "v1"),
        "clientConfig": (
            VolumeSpec(backend="cvmfs", repository=REPO, client_config="CVMFS_TIMEOUT=7\n"),
            "v2",
        ),
    }


PATHS = ["plain", "tag", "hash", "date", "clientConfig"]


def shows(target: Path, revision: str) -> None:
    """The target shows ``revision`` to root and to nobody."""
    assert (target / "VERSION").read_text() == f"{revision}\n"
    assert (target / V2_ONLY).exists() == (revision == "v2")
    as_nobody = read_as("nobody", target / "VERSION")
    assert (as_nobody.returncode, as_nobody.stdout) == (0, f"{revision}\n"), as_nobody.stderr


def nothing_left(env: HepvolEnv) -> None:
    assert list(MountTable().under(str(env.workdir))) == []
    assert os.listdir(env.config.mount_root) == []
    assert not os.path.exists(env.config.cvmfs.cache_root) or not os.listdir(
        env.config.cvmfs.cache_root
    )
    assert [p for p in os.listdir("/proc") if p.isdigit() and _names(p, env)] == []


def _names(pid: str, env: HepvolEnv) -> bool:
    try:
        return str(env.workdir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("path", PATHS)
def test_each_path_shows_its_revision_to_root_and_nobody(
    real_env: HepvolEnv, stratum0: Stratum0, path: str
) -> None:
    spec, revision = specs(stratum0)[path]
    manager = real_env.manager()
    target = real_env.targets / path
    manager.publish(spec, Consumer("csi", str(target)), str(target))
    shows(target, revision)
    backing = MountTable().at(os.path.join(real_env.config.mount_root, spec.key))
    assert backing is not None and backing.fstype == "fuse"
    assert backing.source == ("cvmfs2" if path == "plain" else f"hepvol:{spec.key}")
    manager.unpublish(str(target))
    nothing_left(real_env)


@pytest.mark.parametrize(
    ("pin", "missing"),
    [
        ({"tag": "nosuch"}, "has no tag 'nosuch'"),
        ({"hash": "0123456789abcdef0123456789abcdef01234567"}, "has no revision with root hash"),
        ({"repository": "nosuch.hepvol.org"}, "nosuch.hepvol.org is not known on this node"),
        (
            {
                "repository": "nosuch.hepvol.org",
                "client_config": "CVMFS_SERVER_URL=http://127.0.0.1/cvmfs/@fqrn@\n",
            },
            "nosuch.hepvol.org does not exist on http://127.0.0.1/cvmfs/nosuch.hepvol.org",
        ),
    ],
)
def test_what_does_not_exist_is_not_found_and_leaves_nothing(
    real_env: HepvolEnv, pin: dict[str, str], missing: str
) -> None:
    spec = VolumeSpec(backend="cvmfs", **{"repository": REPO, **pin})
    target = real_env.targets / "t"
    with pytest.raises(NotFound, match=missing):
        real_env.manager().publish(spec, Consumer("csi", str(target)), str(target))
    assert real_env.manager().status() == []
    nothing_left(real_env)


@pytest.mark.parametrize("date", ["2024-05-01", "2024-05-01T00:00:00+00:00", "yesterday"])
def test_a_date_the_client_cannot_take_is_refused_at_the_request(date: str) -> None:
    with pytest.raises(InvalidSpec, match="YYYY-MM-DDTHH:MM:SSZ"):
        VolumeSpec(backend="cvmfs", repository=REPO, date=date)


@pytest.mark.parametrize("path", ["plain", "tag"], ids=["system", "private"])
def test_killed_client_is_readable_again_within_5_s(
    real_env: HepvolEnv, stratum0: Stratum0, path: str, repair_times: dict[str, float]
) -> None:
    spec, revision = specs(stratum0)[path]
    manager = real_env.manager()
    target = real_env.targets / "t"
    manager.publish(spec, Consumer("csi", str(target)), str(target))
    backing = os.path.join(real_env.config.mount_root, spec.key)
    pids = client_pids(backing)
    assert pids, "the client serving the backing mount runs"
    monitor = HealthMonitor(manager)
    monitor.start()
    try:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        took = wait_readable(target / "VERSION", timeout=5)
    finally:
        monitor.stop()
    assert took is not None, "not readable within 5 s of kill -9"
    repair_times[f"core {path}"] = took
    shows(target, revision)


def test_stopped_client_answers_within_bounds_and_says_why(
    real_env: HepvolEnv, stratum0: Stratum0
) -> None:
    spec, _ = specs(stratum0)["tag"]
    manager = real_env.manager()
    target = real_env.targets / "t"
    manager.publish(spec, Consumer("csi", str(target)), str(target))
    pids = client_pids(os.path.join(real_env.config.mount_root, spec.key))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        results = HealthMonitor(manager).run_once()
        assert time.monotonic() - start < real_env.config.probe_timeout_seconds + 5
        assert "not responding" in results[spec.key].message
        [status] = manager.status()
        assert status.condition == "failed" and "hung FUSE server" in status.message
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _bare_cvmfs2(env: HepvolEnv, mount_point: Path) -> None:
    """What an older hepvol left: ``cvmfs2 -o config=FILE`` with no fsname (``/dev/fuse``)."""
    user = pwd.getpwnam("cvmfs")
    base = env.workdir / "bare"
    for owned in ("cache", "run"):
        (base / owned).mkdir(parents=True)
        os.chown(base / owned, user.pw_uid, user.pw_gid)
    config = base / "client.conf"
    config.write_text(
        f"CVMFS_SERVER_URL=http://127.0.0.1/cvmfs/{REPO}\nCVMFS_HTTP_PROXY=DIRECT\n"
        f"CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/{REPO}.pub\nCVMFS_NFILES=16384\n"
        f"CVMFS_CACHE_BASE={base}/cache\nCVMFS_RELOAD_SOCKETS={base}/run\nCVMFS_SHARED_CACHE=no\n"
    )
    mount_point.mkdir()
    options = f"config={config},uid={user.pw_uid},gid={user.pw_gid}"
    subprocess.run(
        ["cvmfs2", "-o", options, REPO, str(mount_point)],
        extra_groups=os.getgrouplist("cvmfs", user.pw_gid), check=True, capture_output=True,
    )  # fmt: skip


def test_reconcile_reports_fuse_mounts_it_does_not_know_and_removes_its_own(
    real_env: HepvolEnv, stratum0: Stratum0
) -> None:
    mounts = Path(real_env.config.mount_root)
    bare, stray = mounts / "bare", mounts / "stray"
    _bare_cvmfs2(real_env, bare)
    spec, _ = specs(stratum0)["tag"]
    made = mounts / spec.key
    Backends(real_env.config).named("cvmfs2").mount(spec, str(made))  # no ledger row
    stray.mkdir()
    subprocess.run(["mount", "--move", str(made), str(stray)], check=True)
    assert MountTable().at(str(stray)).source == f"hepvol:{spec.key}"  # type: ignore[union-attr]

    report = real_env.manager().reconcile()
    assert report.foreign == [str(bare)], "reported, not touched: it is not hepvol's"
    assert report.unmounted == [str(stray)], "hepvol's naming: removed with its client"
    assert MountTable().at(str(bare)) is not None and MountTable().at(str(stray)) is None
    assert client_pids(stray) == [] and client_pids(bare) != []
    for pid in client_pids(bare):
        os.kill(pid, signal.SIGKILL)


def test_a_client_left_on_the_cache_does_not_fake_a_mount(
    real_env: HepvolEnv, stratum0: Stratum0
) -> None:
    """A cvmfs2 still serving a copy of a given-up mount holds the cache; a new one
    would print "already mounted" and exit 0 without mounting."""
    spec, _ = specs(stratum0)["tag"]
    backend = Backends(real_env.config).named("cvmfs2")
    path = Path(real_env.config.mount_root, spec.key)
    backend.mount(spec, str(path))
    copy = real_env.workdir / "copy"
    copy.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(copy)], check=True)
    subprocess.run(["umount", "-l", str(path)], check=True)
    assert client_pids(path), "the copy keeps the client (and its cache) alive"

    backend.mount(spec, str(path))
    entry = MountTable().at(str(path))
    assert entry is not None and entry.source == f"hepvol:{spec.key}"
    assert (path / "VERSION").read_text() == "v1\n"
    subprocess.run(["umount", "-l", str(copy)], check=True)
    backend.unmount(str(path))
    assert client_pids(path) == []
