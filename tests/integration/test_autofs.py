"""Autofs mode with the real automount: repositories mount on first access.

autofs answers a lookup by running the shipped program map, then mount(8), which
runs ``/sbin/mount.cvmfs``: the stand-in is laid over ``/sbin`` (``/usr/sbin``
where it is a link) with an overlay mount, in this test process's private mount
namespace only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_core import bind
from mount_core.consumer import Consumer
from mount_core.errors import MountFailed
from mount_core.health import HealthMonitor
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition
from mount_core.spec import VolumeSpec
from tests.conftest import REPO, SAMPLE, HepvolEnv, readme_errno, wait_for
from tests.standins.world import Standins, install

TREE = VolumeSpec(backend="cvmfs")
TRUNK = VolumeSpec(backend="cvmfs", repository=SAMPLE)
OTHER = "other.hepvol.org"


def _automount_pid(env: HepvolEnv) -> int | None:
    try:
        pid = int((Path(env.config.state_dir) / "autofs" / "automount.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@pytest.fixture
def autofs(
    hepvol_env: HepvolEnv, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Standins]:
    """Stand-ins in autofs mode; ``request.param`` (indirect) is autofs' idle timeout."""
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        pytest.fail("the autofs tests overlay /sbin: run them in a private mount namespace")
    clients = install(hepvol_env, automount=True, idle_timeout=getattr(request, "param", 300))
    root = hepvol_env.config.cvmfs.root
    overlaid: list[str] = []
    try:
        # automount keeps a one-per-machine flag file and its fifos in /run: a /run
        # of this namespace's own keeps the machine's /run (and autofs service) apart.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
        overlaid.append("/run")
        upper, work = tmp_path / "sbin-upper", tmp_path / "sbin-work"
        upper.mkdir()
        work.mkdir()
        shutil.copy2(clients.bin / "mount.cvmfs", upper / "mount.cvmfs")
        # mount(8) runs /sbin/mount.<type>: /usr/sbin on merged-/usr systems, but a
        # directory of its own where the real client installed /sbin/mount.cvmfs.
        sbin = os.path.realpath("/sbin")
        options = f"lowerdir={sbin},upperdir={upper},workdir={work}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, sbin], check=True)
        overlaid.append(sbin)
        yield clients
    finally:
        pid = _automount_pid(hepvol_env)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # never SIGTERM: the root is removed below
        for entry in sorted(MountTable().under(root), key=lambda e: -len(e.mount_point)):
            with contextlib.suppress(OSError):
                bind.unmount(entry.mount_point, lazy=True)
        for path in reversed(overlaid):
            bind.unmount(path, lazy=True)


def csi(target: Path) -> Consumer:
    return Consumer("csi", str(target))


def _read(path: Path) -> str:
    return (path / "README").read_text()


def test_whole_tree_target_sees_repositories_mounted_after_publish(
    hepvol_env: HepvolEnv, autofs: Standins
) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "tree"
    manager.publish(TREE, csi(target), str(target))
    root = hepvol_env.config.cvmfs.root
    assert autofs.calls() == [], "nothing is mounted before it is accessed"
    assert _read(target / SAMPLE) == "sample trunk\n"
    hepvol_env.make_repo(OTHER, {"README": "published later\n"})
    assert _read(target / OTHER) == "published later\n"
    assert [c["argv"][:2] for c in autofs.calls("mount.cvmfs")] == [
        [SAMPLE, f"{root}/{SAMPLE}"],
        [OTHER, f"{root}/{OTHER}"],
    ]
    for name in (SAMPLE, OTHER):
        entry = MountTable().at(f"{root}/{name}")
        assert entry is not None and (entry.fstype, entry.source) == ("fuse", "cvmfs2")
    assert not (target / "not-a-repository").exists()
    assert len(autofs.calls()) == 2, "the map answers repository names only"
    entry = MountTable().at(str(target))
    assert entry is not None and entry.fstype == "autofs" and entry.propagation == "slave"
    assert manager.unpublish(str(target)) is True
    assert MountTable().at(root) is not None, "the autofs root stays for the node"


def test_repository_from_autofs_is_repaired_after_its_client_dies(
    hepvol_env: HepvolEnv, autofs: Standins
) -> None:
    manager = hepvol_env.manager()
    one, tree = hepvol_env.targets / "one", hepvol_env.targets / "tree"
    manager.publish(TRUNK, csi(one), str(one))
    manager.publish(TREE, csi(tree), str(tree))
    assert _read(one) == _read(tree / SAMPLE) == "sample trunk\n"
    [server] = autofs.server_pids()
    os.kill(server, signal.SIGKILL)

    assert wait_for(lambda: readme_errno(one) == errno.ENOTCONN, timeout=5)
    results = HealthMonitor(manager).run_once()
    assert results[TRUNK.key].dead
    assert _read(one) == "sample trunk\n"
    assert _read(tree / SAMPLE) == "sample trunk\n", "the whole tree sees the new mount"
    assert len(autofs.calls("mount.cvmfs")) == 2
    assert {s.key: s.condition for s in manager.status()} == {
        TRUNK.key: Condition.HEALTHY,
        TREE.key: Condition.HEALTHY,
    }


_DAEMON = """
import sys, time
from mount_core import config
from mount_core.consumer import Consumer
from mount_core.errors import MountFailed
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec
manager = MountManager(config.load(sys.argv[1]))
manager.publish(VolumeSpec(backend="cvmfs"), Consumer("csi", sys.argv[2]), sys.argv[2])
manager.publish(VolumeSpec(backend="cvmfs", repository=sys.argv[4]), Consumer("csi", sys.argv[3]),
                sys.argv[3])
print("ready", flush=True)
time.sleep(600)
"""


def test_daemon_killed_with_sigkill_reattaches(hepvol_env: HepvolEnv, autofs: Standins) -> None:
    tree, one = hepvol_env.targets / "tree", hepvol_env.targets / "one"
    command = [sys.executable, "-c", _DAEMON, str(hepvol_env.workdir / "config.toml"),
               str(tree), str(one), SAMPLE]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    daemon = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        automount = _automount_pid(hepvol_env)
        assert automount is not None
        daemon.kill()
        daemon.wait()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert _automount_pid(hepvol_env) == automount, "automount outlives the daemon"
    manager = hepvol_env.manager()
    report = manager.reconcile()
    assert report.remounted == [] and report.failed == {}
    assert _read(one) == _read(tree / SAMPLE) == "sample trunk\n"
    hepvol_env.make_repo(OTHER, {"README": "after the restart\n"})
    assert _read(tree / OTHER) == "after the restart\n"
    assert _automount_pid(hepvol_env) == automount, "adopted, not restarted"


def test_automount_killed_with_sigkill_is_replaced_and_the_root_kept(
    hepvol_env: HepvolEnv, autofs: Standins
) -> None:
    manager = hepvol_env.manager()
    tree = hepvol_env.targets / "tree"
    manager.publish(TREE, csi(tree), str(tree))
    assert _read(tree / SAMPLE) == "sample trunk\n"
    first = _automount_pid(hepvol_env)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: _automount_pid(hepvol_env) is None, timeout=5)
    HealthMonitor(manager).run_once()
    second = _automount_pid(hepvol_env)
    assert second is not None and second != first
    hepvol_env.make_repo(OTHER, {"README": "served by the new automount\n"})
    assert _read(tree / OTHER) == "served by the new automount\n"
    assert _read(tree / SAMPLE) == "sample trunk\n"


def test_another_automount_on_the_node_is_reported_with_the_fix(
    hepvol_env: HepvolEnv, autofs: Standins
) -> None:
    other_root, master = hepvol_env.workdir / "misc", hepvol_env.workdir / "auto.master.other"
    other_root.mkdir()
    master.write_text(f"{other_root} program:/bin/false\n")
    pidfile = hepvol_env.workdir / "other-automount.pid"
    subprocess.run(["/usr/sbin/automount", "-p", str(pidfile), str(master)], check=True)
    try:
        assert wait_for(pidfile.exists, timeout=5)
        target = hepvol_env.targets / "tree"
        with pytest.raises(MountFailed, match=r"already running.*systemctl disable --now autofs"):
            hepvol_env.manager().publish(TREE, csi(target), str(target))
        assert hepvol_env.manager().status() == [] and not target.exists()
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        bind.unmount(str(other_root), lazy=True)


@pytest.mark.parametrize("autofs", [2], indirect=True)
def test_idle_repositories_are_left_to_autofs_and_health_does_not_keep_them(
    hepvol_env: HepvolEnv, autofs: Standins
) -> None:
    manager = hepvol_env.manager()
    one, tree = hepvol_env.targets / "one", hepvol_env.targets / "tree"
    manager.publish(TRUNK, csi(one), str(one))
    manager.publish(TREE, csi(tree), str(tree))
    repo = f"{hepvol_env.config.cvmfs.root}/{SAMPLE}"
    assert MountTable().at(repo) is not None
    manager.unpublish(str(one))
    assert MountTable().at(repo) is not None, "hepvol leaves the repository to autofs"
    monitor = HealthMonitor(manager)

    def expired() -> bool:
        monitor.run_once()  # probes while the whole tree is published
        return MountTable().at(repo) is None

    assert wait_for(expired, timeout=20, interval=0.5), "autofs expired the idle repository"
    assert _read(tree / SAMPLE) == "sample trunk\n", "and mounts it again on the next access"


def test_dead_repository_in_a_whole_tree_volume_comes_back(
    hepvol_env: HepvolEnv, autofs: Standins
) -> None:
    manager = hepvol_env.manager()
    tree = hepvol_env.targets / "tree"
    manager.publish(TREE, csi(tree), str(tree))
    assert _read(tree / SAMPLE) == "sample trunk\n"
    [server] = autofs.server_pids()
    os.kill(server, signal.SIGKILL)

    assert wait_for(lambda: readme_errno(tree / SAMPLE) == errno.ENOTCONN, timeout=5)
    assert HealthMonitor(manager).run_once()[TREE.key].condition == Condition.HEALTHY
    assert _read(tree / SAMPLE) == "sample trunk\n", "autofs mounted it afresh"
    assert len(autofs.calls("mount.cvmfs")) == 2


@pytest.mark.parametrize(
    ("key", "answer"),
    [
        ("atlas.cern.ch", "-fstype=cvmfs :atlas.cern.ch\n"),
        ("atlas", ""),
        (".hidden", ""),
        ("atlas.cern.ch;reboot", ""),
        ("-fstype=bind", ""),
    ],
)
def test_program_map_answers_fully_qualified_repository_names_only(
    hepvol_env: HepvolEnv, autofs: Standins, key: str, answer: str
) -> None:
    hepvol_env.manager().publish(TREE, csi(hepvol_env.targets / "t"), str(hepvol_env.targets / "t"))
    program_map = Path(hepvol_env.config.state_dir) / "autofs" / "auto.cvmfs"
    result = subprocess.run([str(program_map), key], capture_output=True, text=True, check=False)
    assert (result.stdout, result.returncode) == (answer, 0 if answer else 1)
