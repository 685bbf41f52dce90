"""The lock directory removed while a call holds its locks (the chaos run's state damage).

Another process then locks a fresh file and runs alongside the holder; the holder
must never answer a plain failure (CSI INTERNAL) for it, nor leave a target bound
but unrecorded or recorded but unbound. Real FUSE mounts and binds; the kernel
seam only picks the moment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mount_core.consumer import Consumer
from mount_core.kernel import Kernel
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)

# Another process (a FlexVolume call, a restarted daemon) unpublishes a target.
UNPUBLISH = """
import sys
from mount_core.config import load
from mount_core.manager import MountManager
MountManager(load()).unpublish(sys.argv[1])
"""


class _DamageBeforeFirstBind(Kernel):
    """Before the first bind: the lock directory goes, and another process unpublishes
    the target being published (it finds the publish's row and removes its directory)."""

    def __init__(self, env: HepvolEnv, target: str) -> None:
        super().__init__(env.config.probe_timeout_seconds)
        self.env, self.target, self.done = env, target, False

    def bind(self, source_fd: int, target_fd: int, *, readonly: bool, recursive: bool) -> None:
        if not self.done:
            self.done = True
            shutil.rmtree(Path(self.env.config.state_dir) / "locks")
            subprocess.run([sys.executable, "-c", UNPUBLISH, self.target],
                           env=self.env.environ(), check=True, timeout=60)  # fmt: skip
        super().bind(source_fd, target_fd, readonly=readonly, recursive=recursive)


def test_publish_whose_lock_was_removed_under_it_starts_over(hepvol_env: HepvolEnv) -> None:
    keep = str(hepvol_env.targets / "keep")
    hepvol_env.manager().publish(SPEC, Consumer("csi", keep), keep)
    target = str(hepvol_env.targets / "pod")
    kernel = _DamageBeforeFirstBind(hepvol_env, target)
    manager = hepvol_env.manager(kernel=kernel)

    manager.publish(SPEC, Consumer("csi", target), target)

    assert kernel.done, "the damage was not injected"
    assert (Path(target) / "README").read_text() == "sample trunk\n"
    row = manager.consumer_at(target)
    assert row is not None and row.state == "active", row
    assert manager.unpublish(target) and manager.unpublish(keep)
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
