"""Per-volume files go with their volume.

Issue #14 item 13 (second half): lock, ``.starting`` and log files were never
removed, so 100 pods left 200 files in the state dir. After every pod is gone the
state dir holds what it held before they came, whatever the front; and a lock
file removed while others wait for it never lets two holders in at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from csi_driver.generated import csi_pb2
from tests.conftest import SAMPLE, HepvolEnv
from tests.integration.test_csi_node import CsiProcess, mounts_under
from tests.integration.test_flexvolume import Kubelet, kubelet_options

VOLUMES = 10
PODS = 100


def _state_files(world: HepvolEnv) -> set[str]:
    state = Path(world.config.state_dir)
    return {
        str(path.relative_to(state))
        for path in state.rglob("*")
        if path.is_file() and not path.name.startswith("ledger.db")
    }


def test_hundred_pods_leave_no_file_behind(
    world: HepvolEnv, csi: CsiProcess, kubelet: Kubelet
) -> None:
    for n in range(VOLUMES):
        world.make_repo(f"{SAMPLE}@t{n}", {"README": f"t{n}\n"})
    # The fronts' own files (logs, sockets) exist once the first call came through.
    kubelet.mount(kubelet.pod_dir(uid="warm-up"), kubelet_options(repository=SAMPLE))
    kubelet.unmount(kubelet.root / "pods" / "warm-up" / "volumes" / "cern~cvmfs" / "cvmfs")
    before = _state_files(world)

    csi_pods = []
    for n in range(PODS):
        context = {"repository": SAMPLE, "tag": f"t{n % VOLUMES}"}
        if n % 2:
            pod = kubelet.pod_dir(uid=f"pod-{n}")
            reply = kubelet.mount(pod, kubelet_options(**context))
            assert reply["status"] == "Success", reply
        else:
            parent = world.targets / "csi" / f"pod-{n}"
            parent.mkdir(parents=True)
            pod = parent / "mount"
            csi.client.publish(f"vol-{n}", str(pod), context)
            csi_pods.append((f"vol-{n}", pod))
        assert (pod / "README").read_text() == f"t{n % VOLUMES}\n"
    during = _state_files(world) - before
    assert during, "per-volume files are expected while the volumes are mounted"

    for volume_id, pod in csi_pods:
        csi.client.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(pod))
        )
    for n in range(1, PODS, 2):
        reply = kubelet.unmount(
            kubelet.root / "pods" / f"pod-{n}" / "volumes" / "cern~cvmfs" / "cvmfs"
        )
        assert reply["status"] == "Success", reply

    assert mounts_under(world) == []
    left = sorted(_state_files(world) - before)
    assert left == [], f"{len(left)} files left by {PODS} pods: {left[:10]}"


#: Each process takes the lock, marks its stay in a shared log, and removes the lock
#: file as the last holder of a volume does.
_HOLDER = """
import os, sys, time
from mount_core.locks import LockDir
locks = LockDir(sys.argv[1])
log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)
for _ in range(int(sys.argv[3])):
    with locks.hold("k", 30):
        os.write(log, b"+")
        time.sleep(0.002)
        os.write(log, b"-")
        locks.discard("k")
"""


def test_a_discarded_lock_file_never_admits_two_holders(world: HepvolEnv) -> None:
    log = Path(world.workdir) / "stays"
    log.write_bytes(b"")
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLDER, world.config.state_dir, str(log), "300"],
            env=world.environ(),
        )
        for _ in range(4)
    ]
    for holder in holders:
        assert holder.wait(timeout=120) == 0
    stays = log.read_bytes()
    assert len(stays) == 4 * 300 * 2
    assert b"++" not in stays, "two processes held the lock at once"
    assert not os.path.exists(os.path.join(world.config.state_dir, "locks", "k.lock"))
