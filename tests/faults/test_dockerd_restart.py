"""dockerd restarted under running containers; the plugin's socket left stale by a crash.

The engine runs with ``--live-restore``: without it dockerd stops every container
when it stops, so "restarted with containers running" could not happen (that is
what a node running analysis jobs configures). dockerd is stopped through its
pidfile (as systemd or an operator would) and started again on the same data
root. While it is down the containers keep reading their volumes; afterwards the
volumes are listed, the containers still read them, and the plugin's
stale-consumer check (:func:`docker_plugin.stale.drop_stale`) leaves exactly one
hold per running container.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from docker_plugin.stale import drop_stale
from tests.conftest import SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import IMAGE, Dockerd, Plugin, make_plugin, run_engine
from tests.faults.invariants import agreement_problems, leftovers

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PINNED = f"{SAMPLE}@v1"
README = {SAMPLE: "sample trunk\n", PINNED: "sample v1\n"}


@pytest.fixture(scope="module")
def live_dockerd() -> Iterator[Dockerd]:
    yield from run_engine(live_restore=True)


@pytest.fixture
def plugin(world: HepvolEnv, live_dockerd: Dockerd) -> Iterator[Plugin]:
    yield from make_plugin(world, live_dockerd)


def _run_detached(plugin: Plugin, volume: str) -> str:
    result = plugin.engine.docker(
        "run", "-d", "--network", "none", "-v", f"{volume}:/sw", "--volume-driver",
        plugin.driver, IMAGE, "sleep", "600",
    )  # fmt: skip
    return result.stdout.strip()


def _holds(world: HepvolEnv) -> Counter[str]:
    manager = world.manager()
    return Counter(str(r.info.get("volume")) for r in manager.ledger.consumers())


def _read_in_container(pid: int) -> str:
    """Read the volume from inside a container's mount namespace (no dockerd needed)."""
    result = subprocess.run(["nsenter", "-t", str(pid), "-m", "cat", "/sw/README"],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return result.stdout


def _stop_by_pidfile(engine: Dockerd) -> None:
    pid = int((engine.root / "docker.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    assert engine.process is not None and engine.process.pid == pid
    engine.process.wait(60)
    engine.process = None


def test_dockerd_restart_keeps_running_containers_and_their_volumes(
    world: HepvolEnv, plugin: Plugin
) -> None:
    docker = plugin.engine.docker
    for name in README:
        docker("volume", "create", "-d", plugin.driver, name)
    containers = {
        _run_detached(plugin, SAMPLE): SAMPLE,
        _run_detached(plugin, SAMPLE): SAMPLE,
        _run_detached(plugin, PINNED): PINNED,
    }
    pids = {c: int(docker("inspect", "-f", "{{.State.Pid}}", c).stdout) for c in containers}
    assert _holds(world) == {SAMPLE: 2, PINNED: 1}

    _stop_by_pidfile(plugin.engine)
    for container, volume in containers.items():
        assert _read_in_container(pids[container]) == README[volume], "read while dockerd is down"
    # One job ends while the engine is away: its Unmount may never come.
    ended = next(iter(containers))
    os.kill(pids[ended], signal.SIGKILL)
    plugin.engine.start()

    listed = docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout.split()
    assert sorted(listed) == sorted(README)
    running = {c: v for c, v in containers.items() if c != ended}
    assert wait_for(lambda: docker("inspect", "-f", "{{.State.Running}}", ended).stdout.strip()
                    == "false", 30)  # fmt: skip
    for container, volume in running.items():
        assert docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip() == "true"
        assert docker("exec", container, "cat", "/sw/README").stdout == README[volume]
    print(f"holds after the restart: {dict(_holds(world))}")
    # Whatever the engine did on restore (re-Mount, or an Unmount lost for the job
    # that ended), the plugin's own stale-consumer check converges to one hold per
    # running container.
    report = drop_stale(world.manager(), plugin.engine.host, now=time.time() + 3600)
    assert report.error == ""
    print(f"dropped by the stale-consumer check: {report.dropped}")
    assert _holds(world) == {SAMPLE: 1, PINNED: 1}, report.dropped
    assert agreement_problems(world.config) == []

    docker("rm", "-f", *containers)
    drop_stale(world.manager(), plugin.engine.host, now=time.time() + 3600)
    assert _holds(world) == {}
    assert leftovers(world.config, str(world.workdir)) == []


def test_stale_plugin_socket_after_a_crash(world: HepvolEnv, plugin: Plugin) -> None:
    docker = plugin.engine.docker
    docker("volume", "create", "-d", plugin.driver, SAMPLE)
    reader = _run_detached(plugin, SAMPLE)
    plugin.kill9()
    assert plugin.socket.exists(), "kill -9 leaves the socket file behind"
    plugin.start()
    assert wait_for(plugin.answers, 10)

    out = plugin.run(["-v", f"{SAMPLE}:/sw", "--volume-driver", plugin.driver], "cat",
                     "/sw/README")  # fmt: skip
    assert out == "sample trunk\n", "dockerd's next call reaches the new plugin"
    assert docker("exec", reader, "cat", "/sw/README").stdout == "sample trunk\n"
    assert _holds(world) == {SAMPLE: 1}, "the reader's hold survived the crash"
    docker("rm", "-f", reader)
    assert _holds(world) == {}
    assert leftovers(world.config, str(world.workdir)) == []
