"""Clients of the three fronts that survive their daemon being killed under them.

Each call retries (boundedly) while the daemon cannot be reached, as dockerd,
kubelet and the CSI sidecars do, and reports an :class:`Outcome`: ``ok``,
``refused`` (the front answered with an error) or ``unknown`` (the call may or
may not have taken effect: the daemon died with it in flight, or the retries ran
out). The fault tests keep a model of what must exist from these outcomes.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tests.e2e.dockerd import call as docker_call

OK, REFUSED, UNKNOWN = "ok", "refused", "unknown"
#: How long a client keeps retrying a daemon that is down (it restarts in 1-3 s).
RETRY_WINDOW = 30.0
RETRY_PAUSE = 0.1
#: CSI codes a CO retries: the server is away, or another call on the volume is running.
CSI_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


@dataclass
class Outcome:
    status: str
    detail: str = ""
    reply: Any = None
    retries: int = 0


def docker(socket: Path, method: str, body: dict[str, object]) -> Outcome:
    """One plugin call; retried only while it cannot have reached the plugin."""
    deadline = time.monotonic() + RETRY_WINDOW
    retries = 0
    while True:
        try:
            status, reply = docker_call(socket, method, body)
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as exc:
            # Not connected, so not sent: safe to send again.
            if time.monotonic() > deadline:
                return Outcome(UNKNOWN, f"plugin unreachable: {exc}", retries=retries)
            retries += 1
            time.sleep(RETRY_PAUSE)
            continue
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # Sent, and the plugin died before answering: it may have acted.
            return Outcome(UNKNOWN, f"{type(exc).__name__}: {exc}", retries=retries)
        if status == 200 and not reply.get("Err"):
            return Outcome(OK, reply=reply, retries=retries)
        return Outcome(REFUSED, str(reply.get("Err")), reply=reply, retries=retries)


def csi(call: Any, request: Any, timeout: float = 60.0) -> Outcome:
    """One CSI RPC, retried on UNAVAILABLE/ABORTED (CSI calls are idempotent)."""
    deadline = time.monotonic() + RETRY_WINDOW
    retries = 0
    while True:
        try:
            return Outcome(OK, reply=call(request, timeout=timeout), retries=retries)
        except grpc.RpcError as exc:
            if exc.code() not in CSI_RETRY:
                return Outcome(REFUSED, f"{exc.code().name}: {exc.details()}", retries=retries)
            if time.monotonic() > deadline:
                return Outcome(UNKNOWN, f"{exc.code().name}: {exc.details()}", retries=retries)
        retries += 1
        time.sleep(RETRY_PAUSE)


def flex(
    driver: str, args: list[str], rng: random.Random, kill_chance: float, attempts: int = 4
) -> tuple[Outcome, int]:
    """One FlexVolume call as kubelet makes it, re-run after it was killed mid-flight.

    Each attempt but the last is killed with ``kill -9`` after a random delay with
    probability ``kill_chance``. Returns the outcome of the last attempt and how
    many attempts were killed.
    """
    killed = 0
    for attempt in range(attempts):
        process = subprocess.Popen([driver, *args], env={}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)  # fmt: skip
        if attempt < attempts - 1 and rng.random() < kill_chance:
            time.sleep(rng.uniform(0.0, 0.4))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.communicate()
                killed += 1
                continue
        out, err = process.communicate(timeout=120)
        if process.returncode < 0 or err:
            return Outcome(UNKNOWN, f"exit {process.returncode}, stderr {err!r}"), killed
        lines = out.decode().splitlines()
        if len(lines) != 1:
            return Outcome(REFUSED, f"not one line of JSON: {out!r}"), killed
        reply = json.loads(lines[0])
        if reply.get("status") == "Success" and process.returncode == 0:
            return Outcome(OK, reply=reply), killed
        return Outcome(REFUSED, str(reply.get("message", reply)), reply=reply), killed
    return Outcome(UNKNOWN, "every attempt was killed"), killed
