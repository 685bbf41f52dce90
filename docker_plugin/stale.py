"""Dropping Docker consumers that no container can still hold.

dockerd loses ``Unmount`` calls across its own restarts (live-restore), which
would keep a backing mount held forever. Mount IDs are not container IDs and the
engine's API does not show them, so the check counts, per (driver, volume): the
containers that can hold the volume (every state but ``exited`` and ``dead``: a
container being started is still ``created`` when its volumes are mounted)
against the Docker consumers recorded for it. Only consumers older than
``min_age`` are candidates and they are compared with that count alone, so a
container starting right now or a ``docker cp`` re-mount never loses its hold;
the excess is dropped, oldest first. The error is always towards keeping a
mount. If the engine cannot be asked, nothing is dropped.

The same start-up contact announces the driver: dockerd only lists a legacy
(socket-file) plugin among a node's plugins once it has looked it up, and Docker
Swarm schedules a task with a volume of that driver only on nodes that list it
(a service otherwise stays pending: "missing plugin on 1 node").
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mount_core.consumer import Consumer
from mount_core.logs import event
from mount_core.manager import ConsumerRow, MountManager

log = logging.getLogger("hepvol.docker")

#: Container states in which a container may hold (or be about to hold) its volumes.
GONE_STATES = ("exited", "dead")
DEFAULT_MIN_AGE = 60.0


@dataclass
class StaleReport:
    """What one pass did: dropped consumer ids per volume, or why it did nothing."""

    dropped: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "error": self.error}


def _client(docker_host: str | None, timeout: float) -> Any:
    import docker

    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=int(timeout))
    return docker.from_env(timeout=int(timeout))


def announce_driver(docker_host: str | None, driver: str, timeout: float = 10.0) -> None:
    """Make the engine look up ``driver`` (listing its volumes), so that it advertises it."""
    client = _client(docker_host, timeout)
    try:
        client.api.volumes(filters={"driver": driver})
    finally:
        client.close()


def holding_containers(docker_host: str | None, timeout: float = 10.0) -> Counter[tuple[str, str]]:
    """(driver, volume name) -> number of containers that can hold it, from the engine."""
    client = _client(docker_host, timeout)
    try:
        counts: Counter[tuple[str, str]] = Counter()
        for container in client.api.containers(all=True):
            if container.get("State") in GONE_STATES:
                continue
            for mount in container.get("Mounts") or []:
                if mount.get("Type") == "volume" and mount.get("Driver") and mount.get("Name"):
                    counts[(mount["Driver"], mount["Name"])] += 1
        return counts
    finally:
        client.close()


def docker_holders(manager: MountManager) -> dict[tuple[str, str], list[ConsumerRow]]:
    """The Docker consumers in the ledger, by (driver, volume name), oldest first."""
    found: dict[tuple[str, str], list[ConsumerRow]] = {}
    for row in manager.consumers():
        driver, volume = row.info.get("driver"), row.info.get("volume")
        if row.kind == "docker" and isinstance(driver, str) and isinstance(volume, str):
            found.setdefault((driver, volume), []).append(row)
    for rows in found.values():
        rows.sort(key=lambda r: r.created_at)
    return found


def drop_stale(
    manager: MountManager,
    docker_host: str | None = None,
    *,
    min_age: float = DEFAULT_MIN_AGE,
    now: float | None = None,
) -> StaleReport:
    """Release the Docker consumers that no container can hold (see the module doc)."""
    report = StaleReport()
    holders = docker_holders(manager)
    if not holders:
        return report
    try:
        containers = holding_containers(docker_host)
    except Exception as exc:
        report.error = (
            f"the Docker engine could not be asked ({type(exc).__name__}); dropped nothing"
        )
        event(log, report.error, level=logging.WARNING, docker_host=docker_host)
        return report
    now = time.time() if now is None else now
    for (driver, volume), rows in sorted(holders.items()):
        old = [r for r in rows if now - r.created_at >= min_age]
        excess = len(old) - containers[(driver, volume)]
        for row in old[: max(0, excess)]:
            ident = row.consumer.partition(":")[2]
            if manager.release(Consumer("docker", ident)):
                report.dropped.setdefault(f"{driver}/{volume}", []).append(row.consumer)
                event(log, "dropped a stale Docker consumer", volume=volume,
                      consumer=row.consumer, driver=driver)  # fmt: skip
    return report


def main() -> int:
    """The daemon's start-up contact, run as a child: 0 done, 3 engine not reachable."""
    from docker_plugin.settings import take_handover
    from mount_core import logs

    config, settings = take_handover()
    logs.configure(config.log_level)
    try:
        announce_driver(settings.docker_host, settings.driver)
    except Exception as exc:
        print(json.dumps({"error": f"the Docker engine could not be asked ({type(exc).__name__})"}))
        return 3
    report = drop_stale(MountManager(config), settings.docker_host)
    print(json.dumps(report.as_dict()))
    return 3 if report.error else 0


if __name__ == "__main__":
    sys.exit(main())
