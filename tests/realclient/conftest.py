"""The real CernVM-FS client against the local stratum 0 serving ``demo.hepvol.org``.

``make cvmfs-client`` (a dependency of ``make test``) sets both up. Without them
every test here is skipped with the reason, and with ``CI=true`` that skip fails.

Isolation from other runs on the same machine: the session bind-mounts its own
``/etc/cvmfs/default.local`` (the host's plus its own ``CVMFS_CACHE_BASE`` and
``CVMFS_RELOAD_SOCKETS``) over the host's, inside the test's private mount
namespace (``make test`` runs pytest under ``unshare``; outside one the suite
refuses to run), so system mounts made through ``mount.cvmfs`` never share a
cache with another run, and each world's private mounts live in its own
``cvmfs.cache_root``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mount_core import bind
from mount_core.backends import cvmfs_client
from mount_core.config import CvmfsConfig
from tests.conftest import HepvolEnv, make_world, teardown_world, write_config

REPO = "demo.hepvol.org"
V2_ONLY = "data/new-in-v2.txt"
SITE_LOCAL = "/etc/cvmfs/default.local"


@dataclass(frozen=True)
class Stratum0:
    """What the local server publishes: v1's root hash and a date that selects v1."""

    v1_hash: str
    v1_date: str
    v2_hash: str


def _skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"tests/realclient cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _tags() -> dict[str, tuple[str, int]]:
    """``cvmfs_server tag -l -x``: tag -> (root hash, publish time)."""
    listed = subprocess.run(
        ["cvmfs_server", "tag", "-l", "-x", REPO],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    tags = {}
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[4].isdigit():
            tags[fields[0]] = (fields[1], int(fields[4]))
    return tags


def _private_namespace() -> bool:
    """True under ``unshare --mount`` (the parent, make or a shell, is in another one)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


@pytest.fixture(scope="session")
def stratum0() -> Iterator[Stratum0]:
    """The real client and the local repository, or a skip saying what is missing."""
    version = subprocess.run(["cvmfs2", "--version"], capture_output=True, text=True, check=False)
    if shutil.which("cvmfs2") is None or version.returncode != 0:
        _skip("the CVMFS client is not installed (make cvmfs-client sets it up from ../shared)")
    try:
        urllib.request.urlopen(f"http://127.0.0.1/cvmfs/{REPO}/.cvmfspublished", timeout=5)
    except OSError as exc:
        _skip(f"no stratum 0 serves {REPO} on 127.0.0.1 ({exc}): run make cvmfs-client")
    tags = _tags()
    if not {"v1", "v2"} <= tags.keys():
        _skip(f"{REPO} has no tags v1 and v2 (cvmfs_server tag -l -x {REPO})")
    if not _private_namespace():
        _skip("tests/realclient overlay /etc/cvmfs/default.local: run them under "
              "`unshare --mount --propagation private` (make test does)")  # fmt: skip
    v1_hash, v1_time = tags["v1"]
    date = datetime.fromtimestamp(v1_time + 1, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    session = Path(tempfile.mkdtemp(prefix="hepvol-realclient-"))
    session.chmod(0o755)
    user = pwd.getpwnam("cvmfs")
    for owned in ("cache", "run"):
        (session / owned).mkdir()
        os.chown(session / owned, user.pw_uid, user.pw_gid)
    local = session / "default.local"
    local.write_text(
        Path(SITE_LOCAL).read_text()
        + f"\n# tests/realclient: this session's own\nCVMFS_CACHE_BASE={session}/cache\n"
        f"CVMFS_RELOAD_SOCKETS={session}/run\n"
    )
    local.chmod(0o644)
    subprocess.run(["mount", "--bind", str(local), SITE_LOCAL], check=True)
    try:
        yield Stratum0(v1_hash, date, tags["v2"][0])
    finally:
        with contextlib.suppress(OSError):
            bind.unmount(SITE_LOCAL, lazy=True)
        shutil.rmtree(session, ignore_errors=True)


def world_dir() -> Path:
    """A world others can traverse: non-root users read its targets."""
    path = Path(tempfile.mkdtemp(prefix="hepvol-rc-"))
    path.chmod(0o755)
    return path


def real_world(workdir: Path, **settings: object) -> HepvolEnv:
    """A hepvol world whose CVMFS volumes are served by the real client."""
    env = make_world(workdir, **settings)  # type: ignore[arg-type]
    for name in ("mounts", "targets"):
        (workdir / name).chmod(0o755)
    cvmfs = CvmfsConfig(
        client="cvmfs2",
        root=str(workdir / "cvmfs"),
        cvmfs2=shutil.which("cvmfs2") or "/usr/bin/cvmfs2",
        cache_root=str(workdir / "cvmfs-private"),
    )
    env.config = replace(env.config, cvmfs=cvmfs).validate()
    write_config(workdir, env.config)
    return env


def kill_clients(workdir: Path) -> None:
    """Kill every cvmfs2 and automount whose command line names ``workdir``."""
    marker = os.fsencode(str(workdir))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(marker in arg for arg in argv) and any(
                name in argv[0] for name in (b"cvmfs2", b"automount")
            ):
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def real_env(stratum0: Stratum0) -> Iterator[HepvolEnv]:
    workdir = world_dir()
    env = real_world(
        workdir / "world",
        health_interval_seconds=1.0,
        probe_timeout_seconds=2.0,
        mount_timeout_seconds=30.0,
        lock_timeout_seconds=60.0,
    )
    try:
        yield env
    finally:
        teardown_world(env.workdir, [])
        kill_clients(env.workdir)
        teardown_world(env.workdir, [])
        shutil.rmtree(workdir, ignore_errors=True)


def client_pids(path: str | Path) -> list[int]:
    """cvmfs2 processes serving ``path``."""
    return cvmfs_client.client_pids(mount_point=str(path))


def read_as(user: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``cat path`` as ``user`` (a non-root reader)."""
    entry = pwd.getpwnam(user)
    ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    return subprocess.run(
        ["setpriv", *ids, "cat", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def wait_readable(path: Path, timeout: float) -> float | None:
    """Seconds until ``path`` reads again, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(OSError):
            path.read_bytes()
            return time.monotonic() - start
        time.sleep(0.05)
    return None


#: Measured "kill -9 → readable again" times of this run, printed at the end.
REPAIR_TIMES: dict[str, float] = {}


@pytest.fixture
def repair_times() -> dict[str, float]:
    return REPAIR_TIMES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPAIR_TIMES:
        terminalreporter.section("real CVMFS client: kill -9 -> readable again")
        for name, seconds in sorted(REPAIR_TIMES.items()):
            terminalreporter.write_line(f"{name:40} {seconds:6.2f} s")
