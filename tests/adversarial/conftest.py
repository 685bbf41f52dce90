"""Fixtures of the adversarial suite: a world whose settings a test may choose.

Each case of issue #14 that broke a consumer's volume is reproduced here as it was
found, bounded in time, with the world torn down (servers killed, mounts
detached) even when the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HepvolEnv, make_world, teardown_world

WorldFactory = Callable[..., HepvolEnv]

#: The settings of the shared ``hepvol_env`` fixture; a test overrides what it needs.
DEFAULTS: dict[str, Any] = {
    "health_interval_seconds": 0.5,
    "probe_timeout_seconds": 1.0,
    "mount_timeout_seconds": 20.0,
    "lock_timeout_seconds": 60.0,
}


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[WorldFactory]:
    """Build worlds with chosen settings; every one is torn down at the end."""
    made: list[HepvolEnv] = []

    def build(name: str = "world", **settings: Any) -> HepvolEnv:
        env = make_world(tmp_path / name, **{**DEFAULTS, **settings})
        made.append(env)
        return env

    try:
        yield build
    finally:
        for env in made:
            teardown_world(env.workdir, env.server_pids())


# The fault suite's world served by all three fronts (csi, plugin, kubelet).
from tests.faults.conftest import csi, kubelet, plugin, world  # noqa: E402, F401
