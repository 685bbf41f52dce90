"""Fixtures of the fault suite: one hepvol world served by all three fronts at once.

The fronts are the real daemons and executables, started by the other suites'
helpers: ``hepvol csi`` (:func:`tests.integration.test_csi_node.start_csi`), the
Docker plugin daemon (:func:`tests.e2e.dockerd.make_plugin`, here without a Docker
engine unless a test brings one) and the installed FlexVolume drivers
(:class:`tests.integration.test_flexvolume.Kubelet`). Finalizers stop the daemons
and detach every mount, even when a test fails.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, HepvolEnv
from tests.e2e.dockerd import Dockerd, Plugin, make_plugin
from tests.faults.chaos_faults import Watch
from tests.integration.test_csi_node import CsiProcess, start_csi
from tests.integration.test_flexvolume import Kubelet

#: Repositories of the fault world: name -> README content.
REPOSITORIES = {
    SAMPLE: "sample trunk\n",
    f"{SAMPLE}@v1": "sample v1\n",
    "alpha.hepvol.org": "alpha trunk\n",
    "alpha.hepvol.org@v2": "alpha v2\n",
    "beta.hepvol.org": "beta trunk\n",
}
SEED_VARIABLE = "HEPVOL_FAULT_SEED"


def fault_seed() -> int:
    """The run's random seed: ``$HEPVOL_FAULT_SEED`` to replay a run, else a fresh one."""
    chosen = os.environ.get(SEED_VARIABLE)
    return int(chosen) if chosen else random.SystemRandom().randrange(1 << 32)


@pytest.fixture
def seed() -> int:
    value = fault_seed()
    print(f"fault seed: {value} (replay with {SEED_VARIABLE}={value})")
    return value


@pytest.fixture
def world(hepvol_env: HepvolEnv) -> HepvolEnv:
    for name, readme in REPOSITORIES.items():
        hepvol_env.make_repo(name, {"README": readme})
    return hepvol_env


@pytest.fixture
def csi(world: HepvolEnv) -> Iterator[CsiProcess]:
    yield from start_csi(world, "--mode", "all", "--node-id", "fault-node")


@pytest.fixture
def plugin(world: HepvolEnv, tmp_path: Path) -> Iterator[Plugin]:
    """The plugin daemon with no engine to ask: its stale-consumer check drops nothing."""
    yield from make_plugin(world, Dockerd(tmp_path / "no-engine"))


@pytest.fixture
def kubelet(world: HepvolEnv) -> Kubelet:
    return Kubelet(world)


@pytest.fixture
def watch(world: HepvolEnv) -> Iterator[Watch]:
    """``hepvol watch`` on the world's state dir: a second health loop beside the fronts'."""
    daemon = Watch(world)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.kill9()
