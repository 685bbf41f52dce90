"""Show the real-client backends at work, for ``make run``: cvmfs2 and eosxd via the stand-ins.

Run from the repository root, as root::

    unshare --mount --propagation private .venv/bin/python -m tests.standins.showcase

It builds a throw-away world in a temporary directory, points hepvol at the
stand-in ``mount.cvmfs``, ``cvmfs2`` and ``eosxd`` (which accept the real command
lines and serve real FUSE mounts), publishes a plain repository, a pinned one and
an EOS path with a per-volume credential, prints the command lines and generated
configs the clients received and ``hepvol status``, then removes everything.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from hepvol.status import as_table
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import Credential, VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv, make_world, teardown_world
from tests.standins.world import EOS_INSTANCE, install


def _world(workdir: Path) -> HepvolEnv:
    return make_world(workdir)


def show(workdir: Path) -> None:
    env = _world(workdir)
    clients = install(env)
    (clients.eos_dir(str(EOS_INSTANCE["hostport"]), "/eos/theory") / "README").write_text(
        "EOS theory\n"
    )
    env.config = replace(env.config, mount_timeout_seconds=20.0)
    manager = MountManager(env.config)
    volumes = {
        "trunk": VolumeSpec(backend="cvmfs", repository=SAMPLE),
        "pinned": VolumeSpec(backend="cvmfs", repository=SAMPLE, tag="v1"),
        "eos": VolumeSpec(
            backend="eos",
            instance="eostest",
            path="/theory",
            credential=Credential("krb5", b"demo ticket cache (never shown)"),
        ),
    }
    for name, spec in volumes.items():
        target = env.targets / name
        manager.publish(spec, Consumer("csi", str(target)), str(target))
        print(f"{spec.source:<36} -> {target}: {(target / 'README').read_text().strip()!r}")
    print("\nWhat the clients were run with:")
    for call in clients.calls():
        print(f"$ {call['tool']} {' '.join(call['argv'])}")
        if call.get("config"):
            text = call["config"]
            if call["tool"] == "eosxd":
                text = json.dumps(json.loads(text), indent=1)
            print("  " + text.strip().replace("\n", "\n  "))
    print("\n$ hepvol status")
    print(as_table(manager.status()))
    for name in volumes:
        manager.unpublish(str(env.targets / name))
    left = [e.mount_point for e in MountTable().under(str(workdir))]
    kept = [p.name for p in clients.eos_config_dir.iterdir()]
    kept += [p.name for p in (Path(env.config.state_dir) / "credentials").iterdir()]
    print(f"\nafter unpublishing: mounts left {left}, configs and credentials left {kept}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hepvol-clients-") as tmp:
        workdir = Path(tmp) / "world"
        try:
            show(workdir)
        finally:
            run = workdir / "standins" / "control" / "run"
            pids = [int(p.read_text()) for p in run.glob("*.pid")] if run.exists() else []
            teardown_world(workdir, pids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
