"""Stuck Docker clients never block the plugin for the others.

Issue #14 item 10: 16 half-open connections (a request sent in part, then
nothing) wedged the plugin for as long as they stayed open, and dockerd then hung
on every volume call. Each connection now has a read timeout
(:data:`docker_plugin.serve.READ_TIMEOUT`): a stuck client holds a thread at most
that long, gunicorn's main loop never waits for it, and calls from everyone else
are answered within one read timeout per wave of stuck clients.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from docker_plugin.serve import READ_TIMEOUT
from tests.e2e.dockerd import Plugin

STUCK = 40
#: Threads of one gunicorn worker (the defaults: 2 workers, 16 threads in all);
#: in the worst case every stuck client lands on the same worker.
WORKER_THREADS = 8
#: Each stuck client holds a thread for READ_TIMEOUT at most, so a call made while
#: they hold on waits at most for every thread to be stuck once per wave of them.
BOUND = math.ceil(STUCK / WORKER_THREADS) * READ_TIMEOUT + 5.0

PARTIAL = {
    "body cut short": b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\n"
    b"Content-Length: 100\r\n\r\n{",
    "headers cut short": b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plu",
}


@contextmanager
def stuck_clients(plugin: Plugin, count: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        clients = []
        for n in range(count):
            client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            client.connect(str(plugin.socket))
            client.sendall(list(PARTIAL.values())[n % len(PARTIAL)])
            clients.append(client)
        yield clients


def _timed_list(plugin: Plugin) -> float:
    start = time.monotonic()
    reply = plugin.call("VolumeDriver.List")
    assert "Volumes" in reply and not reply.get("Err"), reply
    return time.monotonic() - start


def test_stuck_clients_never_block_the_others(plugin: Plugin) -> None:
    with stuck_clients(plugin, STUCK):
        # Stay stuck for longer than the read timeout: the plugin must keep answering.
        deadline = time.monotonic() + BOUND + 5
        waits = []
        while time.monotonic() < deadline:
            waits.append(_timed_list(plugin))
            time.sleep(0.5)
    print(f"{STUCK} stuck clients: List answered in {max(waits):.2f} s at worst "
          f"({len(waits)} calls)")  # fmt: skip
    assert max(waits) < BOUND, waits
    assert max(waits[len(waits) // 2 :]) < 2.0, waits  # the stuck ones were dropped
    assert _timed_list(plugin) < 2.0
    assert "Traceback" not in plugin.log.read_text()
