"""Many first consumers at once, from threads and from separate processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from mount_core.consumer import Consumer
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)

CHILD = """
import sys
from mount_core.config import load
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.spec import VolumeSpec
manager = MountManager(load())
spec = VolumeSpec(backend="cvmfs", repository=sys.argv[2])
for target in sys.argv[3:]:
    if sys.argv[1] == "publish":
        manager.publish(spec, Consumer("csi", target), target)
    else:
        manager.unpublish(target)
print("done")
"""


def _children(
    env: HepvolEnv, action: str, targets: list[str], processes: int
) -> list[subprocess.Popen[str]]:
    chunk = len(targets) // processes
    return [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, action, SAMPLE, *targets[i * chunk : (i + 1) * chunk]],
            env=env.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]


def _run_mixed(env: HepvolEnv, action: str, targets: list[str]) -> None:
    """Half the targets from 16 threads here, half from 8 separate processes, all at once."""
    manager = env.manager()
    in_threads, in_children = targets[::2], targets[1::2]
    start = threading.Barrier(len(in_threads))

    def one(target: str) -> None:
        start.wait()
        if action == "publish":
            manager.publish(SPEC, Consumer("csi", target), target)
        else:
            manager.unpublish(target)

    children = _children(env, action, in_children, processes=8)
    with ThreadPoolExecutor(len(in_threads)) as pool:
        for future in [pool.submit(one, t) for t in in_threads]:
            future.result()
    for child in children:
        _out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err


def test_64_concurrent_first_consumers_make_exactly_one_mount(hepvol_env: HepvolEnv) -> None:
    targets = [str(hepvol_env.targets / f"pod-{i:02d}") for i in range(64)]
    _run_mixed(hepvol_env, "publish", targets)

    [backing] = hepvol_env.manager().status()
    assert len(backing.consumers) == 64
    backing_mounts = [
        e for e in MountTable().under(hepvol_env.config.mount_root) if e.fstype == "fuse.hepvol"
    ]
    assert len(backing_mounts) == 1, "concurrent first consumers produced more than one mount"
    assert len(hepvol_env.server_pids()) == 1
    for target in targets:
        with open(f"{target}/README") as handle:
            assert handle.read() == "sample trunk\n"

    _run_mixed(hepvol_env, "unpublish", targets)
    assert hepvol_env.manager().status() == []
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


def test_docker_consumers_are_a_multiset(hepvol_env: HepvolEnv) -> None:
    manager = hepvol_env.manager()
    consumer = Consumer("docker", "f" * 64)
    path = manager.acquire(SPEC, consumer)
    assert manager.acquire(SPEC, consumer) == path
    with open(f"{path}/README") as handle:
        assert handle.read() == "sample trunk\n"
    assert len(manager.status()[0].consumers) == 2
    assert manager.release(consumer) is True
    assert MountTable().at(path) is not None, "one hold remains: still mounted"
    assert manager.release(consumer) is True
    assert MountTable().at(path) is None
    assert manager.release(consumer) is False


def test_consumers_coming_and_going_while_the_mount_comes_and_goes(
    hepvol_env: HepvolEnv,
) -> None:
    """Publishes racing the last unpublish: every publish reads, nothing leaks."""
    manager = hepvol_env.manager()

    def cycle(worker: int) -> None:
        for round_ in range(15):
            target = str(hepvol_env.targets / f"w{worker}-{round_}")
            manager.publish(SPEC, Consumer("csi", target), target)
            with open(f"{target}/README") as handle:
                assert handle.read() == "sample trunk\n"
            manager.unpublish(target)

    with ThreadPoolExecutor(12) as pool:
        for future in [pool.submit(cycle, w) for w in range(12)]:
            future.result()
    assert manager.status() == []
    assert list(MountTable().under(str(hepvol_env.workdir))) == []
    assert hepvol_env.server_pids() == []
