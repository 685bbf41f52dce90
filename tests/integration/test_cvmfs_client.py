"""The cvmfs2 backend driving the CVMFS client's command lines (stand-ins, real FUSE mounts)."""

from __future__ import annotations

import errno
import json
import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest

from mount_core.backends import Backends
from mount_core.consumer import Consumer
from mount_core.errors import InvalidSpec, MountFailed, Unavailable
from mount_core.health import HealthMonitor
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli, readme_errno, wait_for
from tests.standins.world import Standins, install

TRUNK = VolumeSpec(backend="cvmfs", repository=SAMPLE)
TAGGED = VolumeSpec(backend="cvmfs", repository=SAMPLE, tag="v1")
HASH = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def clients(hepvol_env: HepvolEnv) -> Standins:
    return install(hepvol_env)


def csi(target: Path) -> Consumer:
    return Consumer("csi", str(target))


def _read(path: Path) -> str:
    return (path / "README").read_text()


def _ours(env: HepvolEnv) -> list[str]:
    return [e.mount_point for e in MountTable().under(str(env.workdir))]


def test_plain_repository_is_one_helper_mount_shared_by_binds(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    manager = hepvol_env.manager()
    a, b = hepvol_env.targets / "a", hepvol_env.targets / "b"
    manager.publish(TRUNK, csi(a), str(a))
    manager.publish(TRUNK, csi(b), str(b))
    assert _read(a) == _read(b) == "sample trunk\n"
    path = os.path.join(hepvol_env.config.mount_root, TRUNK.key)
    assert [c["argv"] for c in clients.calls()] == [[SAMPLE, path]], "mounted once, by the helper"
    entry = MountTable().at(path)
    assert entry is not None and (entry.fstype, entry.source) == ("fuse", "cvmfs2")
    [status] = manager.status()
    assert status.backend == "cvmfs2" and len(status.consumers) == 2
    manager.unpublish(str(a))
    assert _read(b) == "sample trunk\n", "the second consumer keeps the mount"
    manager.unpublish(str(b))
    assert _ours(hepvol_env) == [] and manager.status() == []


def test_pinned_tag_is_a_private_cvmfs2_mount_with_a_generated_config(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    manager = hepvol_env.manager()
    trunk, pinned = hepvol_env.targets / "trunk", hepvol_env.targets / "pinned"
    manager.publish(TRUNK, csi(trunk), str(trunk))
    manager.publish(TAGGED, csi(pinned), str(pinned))
    assert _read(trunk) == "sample trunk\n" and _read(pinned) == "sample v1\n"
    private = Path(hepvol_env.config.cvmfs.cache_root) / TAGGED.key
    config_file = private / "client.conf"
    path = os.path.join(hepvol_env.config.mount_root, TAGGED.key)
    [call] = clients.calls("cvmfs2")
    user = pwd.getpwnam("cvmfs")
    options = (
        f"config={config_file},fsname=hepvol:{TAGGED.key},allow_other,"
        f"uid={user.pw_uid},gid={user.pw_gid}"
    )
    assert call["argv"] == ["-o", options, SAMPLE, path]
    assert call["config"] == (
        f"# hepvol private mount of {SAMPLE}@v1; generated, do not edit\n"
        "CVMFS_CLIENT_PROFILE='single'\n"
        "CVMFS_HTTP_PROXY='http://squid1.example.org:3128|http://squid2.example.org:3128;DIRECT'\n"
        "CVMFS_KEYS_DIR='/etc/cvmfs/keys/hepvol.org'\n"
        "CVMFS_QUOTA_LIMIT='20000'\n"
        f"CVMFS_SERVER_URL='http://stratum1.example.org/cvmfs/{SAMPLE}'\n"
        "CVMFS_USER='cvmfs'\n"
        f"CVMFS_CACHE_BASE='{private}/cache'\n"
        f"CVMFS_RELOAD_SOCKETS='{private}/run'\n"
        "CVMFS_SHARED_CACHE='no'\n"
        "CVMFS_REPOSITORY_TAG='v1'\n"
    )
    assert (private / "cache").stat().st_uid == user.pw_uid, "the client's user owns its cache"
    assert MountTable().at(path).source == f"hepvol:{TAGGED.key}"  # type: ignore[union-attr]
    assert len(manager.status()) == 2, "trunk and pin coexist"
    manager.unpublish(str(pinned))
    assert not private.exists(), "config, cache and sockets go with the mount"
    assert _read(trunk) == "sample trunk\n"
    manager.unpublish(str(trunk))
    assert _ours(hepvol_env) == []


def test_hash_and_date_pins_and_client_config(hepvol_env: HepvolEnv, clients: Standins) -> None:
    hepvol_env.make_repo(f"{SAMPLE}#{HASH}", {"README": "by hash\n"})
    hepvol_env.make_repo(f"{SAMPLE}@2024-05-01T00:00:00Z", {"README": "by date\n"})
    manager = hepvol_env.manager()
    by_hash = VolumeSpec(backend="cvmfs", repository=SAMPLE, hash=HASH)
    by_date = VolumeSpec(backend="cvmfs", repository=SAMPLE, date="2024-05-01T00:00:00Z")
    own = VolumeSpec(
        backend="cvmfs", repository=SAMPLE, client_config="CVMFS_HTTP_PROXY=http://mine:3128\n"
    )
    for name, spec in (("h", by_hash), ("d", by_date), ("c", own)):
        manager.publish(spec, csi(hepvol_env.targets / name), str(hepvol_env.targets / name))
    assert _read(hepvol_env.targets / "h") == "by hash\n"
    assert _read(hepvol_env.targets / "d") == "by date\n"
    assert _read(hepvol_env.targets / "c") == "sample trunk\n"
    configs = [c["config"] for c in clients.calls("cvmfs2")]
    assert f"CVMFS_ROOT_HASH='{HASH}'\nCVMFS_AUTO_UPDATE='no'\n" in configs[0]
    assert configs[1].endswith("CVMFS_REPOSITORY_DATE='2024-05-01T00:00:00Z'\n")
    assert "CVMFS_HTTP_PROXY='http://mine:3128'" in configs[2]
    assert "squid1" not in configs[2], "the volume's own setting wins over the site's"
    assert len({json.dumps(c["argv"]) for c in clients.calls("cvmfs2")}) == 3


def test_client_config_may_not_set_what_hepvol_controls(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE, client_config="CVMFS_CACHE_BASE=/tmp\n")
    target = hepvol_env.targets / "t"
    with pytest.raises(InvalidSpec, match=r"clientConfig.*CVMFS_CACHE_BASE"):
        hepvol_env.manager().publish(spec, csi(target), str(target))
    assert clients.calls() == [] and _ours(hepvol_env) == [] and not target.exists()


def test_helper_check_failures_exit_1_and_are_quoted(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    (clients.cvmfs_config_dir / "default.local").unlink()
    target = hepvol_env.targets / "t"
    with pytest.raises(MountFailed) as info:
        hepvol_env.manager().publish(TRUNK, csi(target), str(target))
    assert "a check failed before the client started: 'CVMFS_HTTP_PROXY required'" in str(
        info.value
    )
    assert hepvol_env.manager().status() == [] and not target.exists()
    assert _ours(hepvol_env) == []


def test_a_repository_mounted_outside_hepvol_is_refused_with_a_hint(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    site = hepvol_env.workdir / "site-cvmfs" / SAMPLE
    site.mkdir(parents=True)
    site_mount = [str(clients.bin / "mount.cvmfs"), SAMPLE, str(site)]  # the site's own mount
    assert subprocess.run(site_mount, capture_output=True, check=False).returncode == 0
    target = hepvol_env.targets / "t"
    with pytest.raises(MountFailed) as info:
        hepvol_env.manager().publish(TRUNK, csi(target), str(target))
    message = str(info.value)
    assert f"'Repository {SAMPLE} is already mounted on {site}'" in message
    assert "cvmfs.automount = true" in message
    assert [e.mount_point for e in MountTable().under(str(hepvol_env.workdir))] == [str(site)]


@pytest.mark.parametrize(("spec", "tool"), [(TRUNK, "mount.cvmfs"), (TAGGED, "cvmfs2")])
def test_client_failures_exit_32_with_the_clients_reason(
    hepvol_env: HepvolEnv, clients: Standins, spec: VolumeSpec, tool: str
) -> None:
    clients.fail(tool, "16 - file catalog failure")
    target = hepvol_env.targets / "t"
    with pytest.raises(MountFailed) as info:
        hepvol_env.manager().publish(spec, csi(target), str(target))
    started = "the client started and failed" if tool == "mount.cvmfs" else "exit code 16"
    assert started in str(info.value)
    assert "(16 - file catalog failure)" in str(info.value)
    assert hepvol_env.manager().status() == [] and _ours(hepvol_env) == []
    clients.fail(tool, None)
    hepvol_env.manager().publish(spec, csi(target), str(target))
    assert (target / "README").exists()


def test_missing_client_fails_at_start_up_saying_what_to_install(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    Backends(hepvol_env.config).check_available()
    (clients.bin / "mount.cvmfs").unlink()
    with pytest.raises(
        Unavailable, match=r"mount\.cvmfs is missing on this node: install the CVMFS client"
    ):
        Backends(hepvol_env.config).check_available()
    with pytest.raises(Unavailable, match=r"mount\.cvmfs is missing"):
        hepvol_env.manager().reconcile()  # what every daemon runs at start-up


@pytest.mark.parametrize("spec", [TRUNK, TAGGED], ids=["system", "private"])
def test_dead_client_is_repaired_like_a_local_mount(
    hepvol_env: HepvolEnv, clients: Standins, spec: VolumeSpec
) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "t"
    manager.publish(spec, csi(target), str(target))
    expected = _read(target)
    [server] = clients.server_pids()
    os.kill(server, signal.SIGKILL)

    assert wait_for(lambda: readme_errno(target) == errno.ENOTCONN, timeout=5)
    results = HealthMonitor(manager).run_once()
    assert results[spec.key].dead
    assert _read(target) == expected
    assert manager.status()[0].condition == Condition.HEALTHY
    assert len(clients.calls()) == 2, "the client was run again to remount"


def test_restarted_daemon_adopts_client_mounts_and_status_shows_them(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    target = hepvol_env.targets / "t"
    hepvol_env.manager().publish(TAGGED, csi(target), str(target))
    report = hepvol_env.manager().reconcile()
    assert report.remounted == [] and report.unmounted == []
    assert len(clients.calls()) == 1 and _read(target) == "sample v1\n"
    shown = hepvol_cli(hepvol_env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    [row] = json.loads(shown.stdout)["backing_mounts"]
    assert (row["backend"], row["source"], row["condition"]) == (
        "cvmfs2",
        f"{SAMPLE}@v1",
        Condition.HEALTHY,
    )
