"""The stand-in clients against the real one: same volumes, same argv, mountinfo, exit codes.

The stand-ins (tests/standins/) remain for fault shapes the real client cannot
produce on demand (a forced ``(N - text)`` failure, a missing helper); this test
keeps them honest. Each volume is mounted through hepvol's cvmfs2 backend once
with the real client and once with the stand-ins, recording every client command
hepvol runs (tool, argv with the world's paths replaced, exit code, the error
hepvol made of it) and the backing mount's mountinfo shape; both runs must agree.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mount_core.backends import Backends
from mount_core.backends import cvmfs as cvmfs_backend
from mount_core.errors import HepvolError
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from tests.conftest import HepvolEnv, make_world, teardown_world
from tests.realclient.conftest import REPO, Stratum0
from tests.standins.world import install

VOLUMES = {
    "plain": VolumeSpec(backend="cvmfs", repository=REPO),
    "tag": VolumeSpec(backend="cvmfs", repository=REPO, tag="v1"),
    "missing tag": VolumeSpec(backend="cvmfs", repository=REPO, tag="nosuch"),
}

RUN_CLIENT = cvmfs_backend.run_client
#: (tool, argv without the world's directories, run with the user's groups, exit code)
Trace = list[tuple[str, tuple[str, ...], bool, int]]


def _mount(env: HepvolEnv, spec: VolumeSpec, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Mount ``spec`` through the backend, watching every client command it runs."""
    trace: Trace = []

    def watched(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = RUN_CLIENT(argv, **kwargs)
        words = tuple(a.replace(str(env.workdir), "<world>") for a in argv[1:])
        trace.append((os.path.basename(argv[0]), words, bool(kwargs.get("groups")),
                      result.returncode))  # fmt: skip
        return result

    monkeypatch.setattr(cvmfs_backend, "run_client", watched)
    backend = Backends(env.config).named("cvmfs2")
    path = os.path.join(env.config.mount_root, spec.key)
    outcome: dict[str, Any] = {"trace": trace}
    try:
        backend.mount(spec, path)
    except HepvolError as exc:
        outcome["error"] = (type(exc).__name__, str(exc).split(" (the client")[0])
        return outcome
    entry = MountTable().at(path)
    assert entry is not None
    outcome["mountinfo"] = (
        entry.fstype,
        entry.source,
        {o for o in entry.options.split(",") if o in ("ro", "nosuid", "nodev")},
        "allow_other" in entry.super_options.split(","),
    )
    outcome["VERSION"] = Path(path, "VERSION").read_text()
    backend.unmount(path)
    return outcome


@pytest.fixture
def standin_env(tmp_path: Path) -> Iterator[HepvolEnv]:
    env = make_world(tmp_path / "world", mount_timeout_seconds=30.0)
    clients = install(env)
    (clients.cvmfs_config_dir / "default.local").write_text("CVMFS_HTTP_PROXY=DIRECT\n")
    env.make_repo(REPO, {"VERSION": "v2\n"})
    env.make_repo(f"{REPO}@v1", {"VERSION": "v1\n"})
    try:
        yield env
    finally:
        teardown_world(env.workdir, [])


@pytest.mark.parametrize("name", list(VOLUMES))
def test_standins_run_like_the_real_client(
    name: str,
    real_env: HepvolEnv,
    standin_env: HepvolEnv,
    stratum0: Stratum0,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = VOLUMES[name]
    real = _mount(real_env, spec, monkeypatch)
    standin = _mount(standin_env, spec, monkeypatch)
    # Where the two worlds differ by design: their directories, and the stand-ins'
    # tools live in the world (their argv[0] is reduced to the tool's name).
    assert standin["trace"] == real["trace"]
    assert standin.get("error") == real.get("error")
    assert standin.get("mountinfo") == real.get("mountinfo")
    assert standin.get("VERSION") == real.get("VERSION")
