"""Docker Swarm: a service's replicas read a repository through the hepvol plugin.

A single-node swarm on a private engine (its own data root, sockets and a free
swarm port on 127.0.0.1), a service with ``--mount type=volume,...,volume-driver=``
the plugin's unique name. Every replica reads the file in a loop and logs each
read to a directory of the test; the test scales the service up and down and
restarts the plugin under it, and checks after each step that no read failed and
that the ledger holds exactly one consumer per running task.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import IMAGE, Dockerd, Plugin, make_plugin, run_engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVICE = "hepvol-readers"
#: Swarm converges in a few seconds here; this bounds each step on a loaded machine.
CONVERGE_SECONDS = 120.0
READ_INTERVAL = 0.2


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A free port below the kernel's ephemeral range (swarm's data path port must
    be 1024-49151, and nothing else picks these at random)."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


@pytest.fixture(scope="module")
def swarm() -> Iterator[Dockerd]:
    """A private engine that is a single-node swarm manager (left again afterwards)."""
    for engine in run_engine():
        address = f"127.0.0.1:{_free_port()}"
        data_port = str(_free_port(socket.SOCK_DGRAM))
        engine.docker("swarm", "init", "--advertise-addr", address, "--listen-addr", address,
                      "--data-path-port", data_port)  # fmt: skip
        try:
            yield engine
        finally:
            with contextlib.suppress(Exception):
                engine.docker("service", "rm", SERVICE, check=False)
            engine.docker("swarm", "leave", "--force", check=False)


@pytest.fixture
def plugin(hepvol_env: HepvolEnv, swarm: Dockerd) -> Iterator[Plugin]:
    yield from make_plugin(hepvol_env, swarm)


class Readers:
    """The service's replicas and what they logged: one line per read, per task."""

    def __init__(self, plugin: Plugin, logs: Path) -> None:
        self.plugin = plugin
        self.logs = logs

    def create(self) -> None:
        volume = (
            f"type=volume,source={SAMPLE},target=/cvmfs/{SAMPLE},volume-driver={self.plugin.driver}"
        )
        loop = (
            f'while true; do if [ "$(cat /cvmfs/{SAMPLE}/README)" = "sample trunk" ]; '
            f"then echo ok; else echo FAILED; fi >> /log/$HOSTNAME; sleep {READ_INTERVAL}; done"
        )
        self.plugin.engine.docker(
            "service", "create", "--name", SERVICE, "--detach", "--no-resolve-image",
            "--replicas", "1", "--mount", volume,
            "--mount", f"type=bind,source={self.logs},target=/log",
            IMAGE, "sh", "-c", loop,
        )  # fmt: skip
        self.converge(1)

    def running(self) -> list[str]:
        """IDs of the service's running containers."""
        listed = self.plugin.engine.docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={SERVICE}"
        )
        return listed.stdout.split()

    def converge(self, replicas: int) -> None:
        def settled() -> bool:
            ps = self.plugin.engine.docker(
                "service", "ps", SERVICE, "--filter", "desired-state=running",
                "--format", "{{.CurrentState}}",
            ).stdout.split("\n")  # fmt: skip
            states = [line for line in ps if line]
            return (
                len(states) == replicas
                and all(s.startswith("Running") for s in states)
                and len(self.running()) == replicas
            )

        assert wait_for(settled, CONVERGE_SECONDS, 0.5), (
            f"{SERVICE} did not reach {replicas} running tasks:\n{self.tasks()}"
        )

    def tasks(self) -> str:
        """``docker service ps`` with errors, for failure messages."""
        return self.plugin.engine.docker("service", "ps", "--no-trunc", SERVICE).stdout

    def scale(self, replicas: int) -> None:
        self.plugin.engine.docker("service", "scale", "--detach", f"{SERVICE}={replicas}")
        self.converge(replicas)

    def reads(self) -> tuple[int, int]:
        """(successful reads, failed reads) over every task that ever ran."""
        ok = failed = 0
        for log in self.logs.iterdir():
            lines = log.read_text().split()
            ok += lines.count("ok")
            failed += len(lines) - lines.count("ok")
        return ok, failed

    def keep_reading(self, seconds: float) -> None:
        """Let every running replica read for a while, and check that they did."""
        before = self.reads()[0]
        time.sleep(seconds)
        assert self.reads()[0] > before, "the replicas stopped reading"


def _consumers(plugin: Plugin) -> int:
    return sum(len(b["consumers"]) for b in plugin.backings())  # type: ignore[arg-type]


def _exact(plugin: Plugin, readers: Readers) -> None:
    """One ledger consumer per running task, and no failed read so far."""
    assert wait_for(lambda: _consumers(plugin) == len(readers.running()), 30, 0.5), (
        f"ledger consumers {_consumers(plugin)} != running tasks {len(readers.running())}"
    )
    assert readers.reads()[1] == 0, f"failed reads: {readers.reads()}"


def test_service_replicas_read_through_scaling_and_plugin_restarts(
    plugin: Plugin, tmp_path: Path
) -> None:
    logs = tmp_path / "reads"
    logs.mkdir()
    readers = Readers(plugin, logs)
    readers.create()
    readers.keep_reading(2)
    _exact(plugin, readers)

    readers.scale(3)
    readers.keep_reading(2)
    _exact(plugin, readers)
    assert _consumers(plugin) == 3
    backing = plugin.backings()
    assert len(backing) == 1, "three replicas share one backing mount"

    readers.scale(1)
    readers.keep_reading(2)
    _exact(plugin, readers)
    assert _consumers(plugin) == 1

    plugin.stop()
    readers.keep_reading(3)
    plugin.start()
    _exact(plugin, readers)

    plugin.kill9()
    readers.keep_reading(3)
    plugin.start()
    readers.scale(3)
    readers.keep_reading(2)
    _exact(plugin, readers)
    assert _consumers(plugin) == 3

    readers.scale(1)
    _exact(plugin, readers)
    ok, failed = readers.reads()
    assert failed == 0 and ok > 50

    plugin.engine.docker("service", "rm", SERVICE)
    assert wait_for(lambda: readers.running() == [], CONVERGE_SECONDS, 0.5)
    assert wait_for(lambda: plugin.backings() == [], 30, 0.5), "nothing left after the service"
    mount_root = plugin.env.config.mount_root
    assert list(MountTable().under(mount_root)) == [], "the backing mount is gone"
    print(f"swarm: {ok} reads by {len(list(logs.iterdir()))} tasks, 0 failed, 2 plugin restarts")
