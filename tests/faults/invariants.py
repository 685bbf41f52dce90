"""What must hold between the ledger and the kernel once the faults have stopped.

``agreement_problems`` is the reusable checker of the fault suite: every backing
row is mounted and owned by its backend, every consumer with a target is bound to
its backing mount's device and readable, and nothing of ours is mounted under the
world's roots that the ledger does not know. ``leftovers`` is the leak check run
after every target and mount ID was given back. Both return a list of readable
problems (empty when all is well) so that a failing test shows all of them.
"""

from __future__ import annotations

import os
import subprocess
import threading

from mount_core.backends import Backends
from mount_core.config import Config
from mount_core.ledger import Ledger
from mount_core.mountinfo import MountTable

READ_TIMEOUT = 5.0


def readable(path: str, timeout: float = READ_TIMEOUT) -> str | None:
    """None when ``path`` can be listed within ``timeout``, else why not (never hangs)."""
    box: list[str | None] = []

    def look() -> None:
        try:
            os.listdir(path)
            box.append(None)
        except OSError as exc:
            box.append(f"{exc.strerror} ({exc.errno})")

    worker = threading.Thread(target=look, daemon=True)
    worker.start()
    worker.join(timeout)
    return box[0] if box else f"not answering within {timeout:g} s"


def _roots(config: Config) -> list[str]:
    return [config.mount_root, *config.target_roots]


def agreement_problems(config: Config) -> list[str]:
    """Disagreements between the ledger and mountinfo (see the module doc)."""
    ledger = Ledger(config.ledger_path)
    backends = Backends(config)
    table = MountTable()
    problems = []
    try:
        backings = {row.key: row for row in ledger.backings()}
        consumers = ledger.consumers()
    finally:
        ledger.close()
    known = {row.path for row in backings.values()}
    devices = {}
    for row in backings.values():
        entry = table.at(row.path)
        if row.state != "mounted":
            problems.append(f"backing {row.key} is left in state {row.state!r}")
        if entry is None or not backends.named(row.backend).owns(entry):
            problems.append(f"backing {row.key} is not mounted at {row.path}")
            continue
        devices[row.key] = entry.device
        if not any(c.key == row.key for c in consumers) and row.idle_since is None:
            problems.append(f"backing {row.key} has no consumers and no idle clock (leaked)")
    for consumer in consumers:
        if consumer.target is None:
            continue
        known.add(consumer.target)
        entry = table.at(consumer.target)
        if consumer.state != "active":
            problems.append(f"{consumer.consumer} is left in state {consumer.state!r}")
        if entry is None:
            problems.append(f"{consumer.consumer}: nothing is mounted at {consumer.target}")
        elif entry.device != devices.get(consumer.key):
            problems.append(f"{consumer.consumer}: {consumer.target} is bound to device "
                            f"{entry.device}, not to its backing {consumer.key}")  # fmt: skip
        else:
            why = readable(consumer.target)
            if why is not None:
                problems.append(f"{consumer.consumer}: {consumer.target} is not readable: {why}")
    for root in _roots(config):
        for entry in table.under(root):
            if entry.mount_point not in known and entry.mount_point != root:
                problems.append(f"{entry.mount_point} ({entry.fstype}) is mounted but unknown")
    return problems


def fuse_servers(workdir: str) -> list[str]:
    """The embedded FUSE servers of one world still running (as ``pid cmdline``)."""
    found = subprocess.run(
        ["pgrep", "-a", "-f", f"mount_core.backends.localfs.*{workdir}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return found.stdout.splitlines()


def leftovers(config: Config, workdir: str) -> list[str]:
    """What is still there after everything was given back: rows, mounts, servers, dirs."""
    ledger = Ledger(config.ledger_path)
    try:
        rows = [f"ledger still holds backing {r.key}" for r in ledger.backings()]
        rows += [f"ledger still holds {c.consumer}" for c in ledger.consumers()]
    finally:
        ledger.close()
    table = MountTable()
    mounts = [
        f"{entry.mount_point} is still mounted"
        for root in _roots(config)
        for entry in table.under(root)
        if entry.mount_point != root
    ]
    servers = [f"FUSE server still running: {line}" for line in fuse_servers(workdir)]
    dirs = [f"mount dir {name} left under the mount root" for name in os.listdir(config.mount_root)]
    return rows + mounts + servers + dirs
