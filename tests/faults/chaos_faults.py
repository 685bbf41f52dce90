"""The faults of the chaos run besides the workers' own: daemons, FUSE servers, state, clients.

Each fault takes the run's fronts (the daemons and the world), its random source
and the counter of faults dealt, and returns once the fault is over (a stopped
server is continued, held connections are closed), so the run ends with nothing
left broken but what the product must repair itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from tests.conftest import HepvolEnv

PARTIAL_REQUEST = b"POST /VolumeDriver.List HTTP/1.1\r\nHost: p\r\nContent-Length: 9\r\n\r\n{"


class Watch:
    """``hepvol watch``: a second health loop (and FlexVolume hand-over) on the state dir."""

    def __init__(self, world: HepvolEnv) -> None:
        self.world = world
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.world.workdir / "watch.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hepvol", "watch", "--metrics-port", "0"],
                env=self.world.environ(), stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


def restart_daemon(fronts: Any, rng: random.Random, kills: Counter[str]) -> None:
    # The least restarted daemon (ties at random): every daemon is restarted in every
    # run that has three restarts or more, which the run's assertions rely on.
    which = min(["docker-plugin", "csi", "watch"], key=lambda d: (kills[d], rng.random()))
    kills[which] += 1
    if which == "docker-plugin":
        fronts.plugin.kill9()
        fronts.plugin.start()
    elif which == "csi":
        fronts.csi.stop(9)
        fronts.csi.start()
    else:
        fronts.watch.kill9()
        fronts.watch.start()


def _servers(fronts: Any) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"mount_core.backends.localfs.*{fronts.world.workdir}"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    return [int(pid) for pid in found.stdout.split()]


def break_a_server(fronts: Any, rng: random.Random, kills: Counter[str]) -> None:
    servers = _servers(fronts)
    if not servers:
        return
    pid = rng.choice(servers)
    try:
        if rng.random() < 0.5:
            os.kill(pid, signal.SIGKILL)
            kills["fuse-kill"] += 1
            return
        os.kill(pid, signal.SIGSTOP)
        kills["fuse-stop"] += 1
        time.sleep(rng.uniform(0.2, 1.5))
    except ProcessLookupError:
        return
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def damage_state(fronts: Any, rng: random.Random, kills: Counter[str]) -> None:
    state = fronts.world.config.state_dir
    if rng.random() < 0.5:
        shutil.rmtree(os.path.join(state, "locks"), ignore_errors=True)
        kills["locks-removed"] += 1
    else:
        run = os.path.join(state, "run")
        for name in os.listdir(run) if os.path.isdir(run) else []:
            if name.endswith(".pid"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(run, name))
        kills["pidfiles-removed"] += 1


def stuck_clients(fronts: Any, rng: random.Random, kills: Counter[str]) -> None:
    """Half-open connections to the plugin, held for a while (it must go on answering)."""
    held = []
    try:
        for _ in range(rng.randint(4, 20)):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(client)
            with contextlib.suppress(OSError):
                client.connect(str(fronts.plugin.socket))
                client.sendall(PARTIAL_REQUEST)
        kills["stuck-clients"] += 1
        time.sleep(rng.uniform(0.5, 3.0))
    finally:
        for client in held:
            client.close()
