"""2,000 mixed operations from the three fronts while daemons, FUSE servers and state break.

Eight workers drive Docker (Create/Remove/List/Get/Mount/Unmount over the plugin
socket), CSI (NodePublish/NodeUnpublish/NodeGetVolumeStats over gRPC) and
FlexVolume (mount/unmount processes, some killed mid-flight and re-run as kubelet
would) against one world with several repositories and tags. Three daemons share
its state dir: the Docker plugin, the CSI server and ``hepvol watch`` (two health
loops besides the plugin's). A fault thread meanwhile, at random moments:

- sends ``kill -9`` to one of the daemons and starts it again;
- kills an embedded FUSE server (the health loops must repair it);
- stops one with SIGSTOP for up to 1.5 s, then SIGCONT (a hang, not a death);
- damages the state dir: removes the lock directory, or the servers' pidfiles;
- holds half-open connections to the Docker plugin (a request sent in part).

Each worker owns its mount IDs, targets and pod dirs, so its model of what must
exist is exact up to the calls whose fate a kill left unknown. Afterwards (once
the health loops repaired what the faults broke) the ledger and mountinfo agree,
every consumer whose publish/mount succeeded (and was not undone) is still there
and readable, and giving back every target and ID ever used leaves no mount, no
ledger row and no FUSE server. The seed is printed; ``HEPVOL_FAULT_SEED`` replays
a run, ``HEPVOL_FAULT_OPERATIONS`` changes its size.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from csi_driver.client import Client, capability
from csi_driver.generated import csi_pb2
from mount_core.ledger import Ledger
from tests.conftest import HepvolEnv, wait_for
from tests.e2e.dockerd import Plugin
from tests.faults import clients
from tests.faults.chaos_faults import (
    Watch,
    break_a_server,
    damage_state,
    restart_daemon,
    stuck_clients,
)
from tests.faults.clients import OK, REFUSED, UNKNOWN, Outcome
from tests.faults.conftest import REPOSITORIES
from tests.faults.invariants import agreement_problems, leftovers
from tests.integration.test_csi_node import CsiProcess
from tests.integration.test_flexvolume import Kubelet, kubelet_options

pytestmark = pytest.mark.slow

OPERATIONS = int(os.environ.get("HEPVOL_FAULT_OPERATIONS", "2000"))
WORKERS = 8
FLEX_KILL_CHANCE = 0.15
#: The run stops (and fails) rather than exceed this (2,000 operations take ~25 s).
TIME_LIMIT = 240.0 * max(1.0, OPERATIONS / 2000)
#: Relative weights of the operations.
MIX = {
    "docker.create": 4, "docker.remove": 2, "docker.list": 5, "docker.get": 3,
    "docker.mount": 12, "docker.unmount": 12,
    "csi.publish": 14, "csi.unpublish": 11, "csi.stats": 10,
    "flex.mount": 7, "flex.unmount": 6,
}  # fmt: skip
#: Refusals that are right answers to what the workers ask at random.
EXPECTED = {
    "docker.remove": ("is in use by",),
    "docker.mount": ("volume named", "while starting"),
    "docker.get": ("volume named",),
    # The fault thread may kill a FUSE server before it is ready: that mount fails.
    "csi.publish": ("while starting",),
    "flex.mount": ("while starting",),
}
#: How long the health loops get to repair what the last faults broke.
SETTLE_SECONDS = 30.0


def _context(name: str) -> dict[str, str]:
    repository, _, tag = name.partition("@")
    return {"repository": repository, **({"tag": tag} if tag else {})}


@dataclass
class Held:
    """Bounds on how many holds a Docker mount ID has (a multiset)."""

    volume: str
    low: int = 0
    high: int = 0


@dataclass
class Target:
    """A CSI target or FlexVolume pod dir and whether it must be published."""

    path: Path
    volume: str
    state: str = "absent"  # absent | present | unknown


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    retries: int = 0
    flex_killed: int = 0
    aborted: list[str] = field(default_factory=list)
    abort: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def total(self) -> int:
        with self.lock:
            return sum(self.outcomes.values())

    def add(self, op: str, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[f"{op} {outcome.status}"] += 1
            self.retries += outcome.retries
            allowed = EXPECTED.get(op, ())
            if outcome.status == REFUSED and not any(a in outcome.detail for a in allowed):
                self.unexpected.append(f"{op}: {outcome.detail}")


class Worker:
    """One thread's resources and its model of them."""

    def __init__(self, n: int, world: HepvolEnv, kubelet: Kubelet, rng: random.Random) -> None:
        names = list(REPOSITORIES)
        self.n = n
        self.rng = rng
        self.ids = {f"w{n}m{k}": Held(rng.choice(names)) for k in range(4)}
        self.csi_targets = []
        for k in range(3):
            parent = world.targets / "csi" / f"w{n}t{k}"
            parent.mkdir(parents=True)
            self.csi_targets.append(Target(parent / "mount", rng.choice(names)))
        self.pods = [Target(kubelet.pod_dir(uid=f"w{n}p{k}"), rng.choice(names)) for k in range(2)]

    def volume_id(self, target: Target) -> str:
        return f"vol-{target.path.parent.name}"


@dataclass
class Fronts:
    world: HepvolEnv
    plugin: Plugin
    csi: CsiProcess
    kubelet: Kubelet
    tally: Tally
    watch: Watch

    def docker(self, op: str, body: dict[str, object]) -> Outcome:
        method = {"create": "Create", "remove": "Remove", "list": "List", "get": "Get",
                  "mount": "Mount", "unmount": "Unmount"}[op]  # fmt: skip
        outcome = clients.docker(self.plugin.socket, f"VolumeDriver.{method}", body)
        self.tally.add(f"docker.{op}", outcome)
        return outcome


def _step(op: str, worker: Worker, fronts: Fronts, client: Client) -> None:
    rng, tally = worker.rng, fronts.tally
    if op in ("docker.create", "docker.remove", "docker.get"):
        fronts.docker(op.split(".")[1], {"Name": rng.choice(list(REPOSITORIES)), "Opts": {}})
    elif op == "docker.list":
        fronts.docker("list", {})
    elif op == "docker.mount":
        ident, held = rng.choice(list(worker.ids.items()))
        fronts.docker("create", {"Name": held.volume, "Opts": {}})  # as dockerd does first
        outcome = fronts.docker("mount", {"Name": held.volume, "ID": ident})
        if outcome.status == OK:
            held.low += 1
            held.high += 1
        elif outcome.status == UNKNOWN:
            held.high += 1
    elif op == "docker.unmount":
        ident, held = rng.choice(list(worker.ids.items()))
        outcome = fronts.docker("unmount", {"Name": held.volume, "ID": ident})
        if outcome.status == OK:
            held.low, held.high = max(0, held.low - 1), max(0, held.high - 1)
        elif outcome.status == UNKNOWN:
            held.low = max(0, held.low - 1)
    elif op.startswith("csi."):
        target = rng.choice(worker.csi_targets)
        volume_id = worker.volume_id(target)
        if op == "csi.publish":
            request = csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id, target_path=str(target.path), volume_capability=capability(),
                readonly=True, volume_context=_context(target.volume),
            )  # fmt: skip
            outcome = clients.csi(client.node.NodePublishVolume, request)
            target.state = {OK: "present", UNKNOWN: "unknown"}.get(outcome.status, target.state)
        elif op == "csi.unpublish":
            request = csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=volume_id, target_path=str(target.path)
            )
            outcome = clients.csi(client.node.NodeUnpublishVolume, request)
            target.state = {OK: "absent", UNKNOWN: "unknown"}.get(outcome.status, target.state)
        else:
            request = csi_pb2.NodeGetVolumeStatsRequest(
                volume_id=volume_id, volume_path=str(target.path)
            )
            outcome = clients.csi(client.node.NodeGetVolumeStats, request)
            found = outcome.status == OK
            if outcome.status != UNKNOWN and target.state != "unknown":
                if found != (target.state == "present"):
                    with tally.lock:
                        tally.violations.append(f"stats of {target.path} ({target.state}): "
                                                f"{outcome.status} {outcome.detail}")  # fmt: skip
                if not found and "is not published" in outcome.detail:
                    outcome = Outcome(OK, retries=outcome.retries)
        tally.add(op, outcome)
    else:
        pod = rng.choice(worker.pods)
        if op == "flex.mount":
            options = kubelet_options(pod=f"pod-{pod.path.parent.parent.parent.name}",
                                      **_context(pod.volume))  # fmt: skip
            args = ["mount", str(pod.path), json.dumps(options)]
        else:
            args = ["unmount", str(pod.path)]
        outcome, killed = clients.flex(fronts.kubelet.driver(), args, rng, FLEX_KILL_CHANCE)
        done = "present" if op == "flex.mount" else "absent"
        pod.state = {OK: done, UNKNOWN: "unknown"}.get(outcome.status, pod.state)
        with tally.lock:
            tally.flex_killed += killed
        tally.add(op, outcome)


def _work(worker: Worker, fronts: Fronts) -> None:
    client = Client(fronts.csi.endpoint)
    ops, weights = list(MIX), list(MIX.values())
    try:
        deadline = time.monotonic() + TIME_LIMIT
        while fronts.tally.total() < OPERATIONS and not fronts.tally.abort.is_set():
            if time.monotonic() > deadline:
                fronts.tally.aborted.append(f"not done within {TIME_LIMIT:g} s")
                fronts.tally.abort.set()
            _step(worker.rng.choices(ops, weights)[0], worker, fronts, client)
    finally:
        client.close()


def _killer(fronts: Fronts, rng: random.Random, stop: threading.Event, kills: Counter[str]) -> None:
    faults = [restart_daemon, break_a_server, damage_state, stuck_clients]
    while not stop.wait(rng.uniform(0.2, 1.2)):
        fault = rng.choices(faults, weights=[5, 4, 1, 1])[0]
        try:
            fault(fronts, rng, kills)
        except Exception as exc:  # a daemon that does not come back ends the run
            fronts.tally.aborted.append(f"{fault.__name__} failed: {exc}")
            fronts.tally.abort.set()
            return


def _readme(path: Path) -> str:
    return (path / "README").read_text()


def _settled_leftovers(world: HepvolEnv) -> list[str]:
    """What is left once servers had time to exit (one whose pidfile the faults removed
    exits by itself once unmounted, a moment later)."""
    wait_for(lambda: leftovers(world.config, str(world.workdir)) == [], timeout=15, interval=0.5)
    return leftovers(world.config, str(world.workdir))


def _check_model(fronts: Fronts, workers: list[Worker]) -> list[str]:
    """Every consumer the model says exists is in the ledger and shows its repository."""
    problems = []
    ledger = Ledger(fronts.world.config.ledger_path)
    try:
        for worker in workers:
            for target in worker.csi_targets + worker.pods:
                row = ledger.consumer_at(str(target.path))
                if target.state == "present" and row is None:
                    problems.append(f"lost: {target.path} was published and is not in the ledger")
                elif (
                    target.state == "present"
                    and _readme(target.path) != REPOSITORIES[target.volume]
                ):
                    problems.append(f"{target.path} does not show {target.volume}")
                elif target.state == "absent" and row is not None:
                    problems.append(f"{target.path} was unpublished and is in the ledger")
            for ident, held in worker.ids.items():
                count = len(ledger.consumers_named(f"docker:{ident}"))
                if not held.low <= count <= held.high:
                    problems.append(f"docker:{ident} has {count} holds, expected "
                                    f"{held.low}..{held.high}")  # fmt: skip
                backing = ledger.backing(next(
                    (r.key for r in ledger.consumers_named(f"docker:{ident}")), ""
                ))  # fmt: skip
                if held.low and (backing is None or _readme(Path(backing.path)) !=
                                 REPOSITORIES[held.volume]):  # fmt: skip
                    problems.append(f"docker:{ident} does not show {held.volume}")
    finally:
        ledger.close()
    return problems


def _give_back(fronts: Fronts, workers: list[Worker]) -> list[str]:
    """Unpublish/unmount every target and ID ever used, twice (idempotent)."""
    failures = []
    client = Client(fronts.csi.endpoint)
    try:
        for worker in workers:
            for _ in range(2):
                for target in worker.csi_targets:
                    request = csi_pb2.NodeUnpublishVolumeRequest(
                        volume_id=worker.volume_id(target), target_path=str(target.path)
                    )
                    outcome = clients.csi(client.node.NodeUnpublishVolume, request)
                    if outcome.status != OK:
                        failures.append(f"unpublish {target.path}: {outcome.detail}")
                for pod in worker.pods:
                    outcome, _ = clients.flex(fronts.kubelet.driver(), ["unmount", str(pod.path)],
                                              worker.rng, 0.0)  # fmt: skip
                    if outcome.status != OK:
                        failures.append(f"flex unmount {pod.path}: {outcome.detail}")
            for ident, held in worker.ids.items():
                for _ in range(held.high + 1):
                    body = {"Name": held.volume, "ID": ident}
                    outcome = clients.docker(fronts.plugin.socket, "VolumeDriver.Unmount", body)
                    if outcome.status != OK:
                        failures.append(f"docker unmount {ident}: {outcome.detail}")
        for name in REPOSITORIES:
            outcome = clients.docker(fronts.plugin.socket, "VolumeDriver.Remove", {"Name": name})
            if outcome.status != OK:
                failures.append(f"docker remove {name}: {outcome.detail}")
    finally:
        client.close()
    return failures


def test_mixed_operations_survive_daemon_fuse_and_state_faults(
    world: HepvolEnv, plugin: Plugin, csi: CsiProcess, kubelet: Kubelet, watch: Watch, seed: int
) -> None:
    rng = random.Random(seed)
    fronts = Fronts(world, plugin, csi, kubelet, Tally(), watch)
    workers = [Worker(n, world, kubelet, random.Random(rng.random())) for n in range(WORKERS)]
    stop, kills = threading.Event(), Counter[str]()
    killer = threading.Thread(target=_killer, args=(fronts, random.Random(rng.random()), stop,
                                                    kills))  # fmt: skip
    threads = [threading.Thread(target=_work, args=(w, fronts)) for w in workers]
    start = time.monotonic()
    killer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    killer.join()
    elapsed = time.monotonic() - start
    tally = fronts.tally
    assert tally.aborted == [], tally.aborted
    # Unmount waits for the plugin's start-up reconcile: after it, both daemons are settled.
    assert clients.docker(plugin.socket, "VolumeDriver.Unmount",
                          {"Name": "sync", "ID": "sync"}).status == OK  # fmt: skip
    print(f"seed {seed}: {sum(tally.outcomes.values())} operations in {elapsed:.1f} s by "
          f"{WORKERS} workers; kills {dict(kills)}; FlexVolume calls killed mid-flight "
          f"{tally.flex_killed}; retries {tally.retries}")  # fmt: skip
    for name, count in sorted(tally.outcomes.items()):
        print(f"  {name:<28} {count}")
    assert sum(tally.outcomes.values()) >= OPERATIONS
    assert kills["docker-plugin"] > 0 and kills["csi"] > 0, kills
    assert kills["fuse-kill"] + kills["fuse-stop"] > 0, kills
    assert tally.unexpected == [], tally.unexpected
    assert tally.violations == [], tally.violations

    # The health loops repair what the last faults broke within a few passes.
    wait_for(lambda: agreement_problems(world.config) == [], timeout=SETTLE_SECONDS, interval=1.0)
    for check in (
        lambda: agreement_problems(world.config),
        lambda: _check_model(fronts, workers),
        lambda: _give_back(fronts, workers),
        lambda: _settled_leftovers(world),
    ):
        problems = check()
        assert problems == [], "\n".join(problems)
