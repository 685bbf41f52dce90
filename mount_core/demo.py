"""``hepvol demo``: the core end to end on the embedded backend, for a first look.

Creates a sample repository, mounts it through the core, publishes it at a
target, lists and reads it from there, shows ``hepvol status``, and keeps it all
up until Ctrl-C; then unpublishes and checks that nothing is left mounted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import replace

from mount_core.config import Config, LocalConfig
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec
from mount_core.status import as_table

SAMPLE = "sample.hepvol.org"
SAMPLE_FILES = {
    "README": "This is sample.hepvol.org, served by hepvol's embedded FUSE backend.\n",
    "software/setup.sh": "export SAMPLE_VERSION=1.0\n",
    "data/events.csv": "run,event,energy\n1,1,13.6\n1,2,7.0\n",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        default="/var/lib/hepvol-demo",
        help="directory for the demo's state, mounts and sample repository",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="clean up right after showing the volume instead of waiting",
    )


def make_sample(root: str) -> None:
    """Write the sample repository and a pinned copy ``@v1`` under ``root``."""
    for name in (SAMPLE, f"{SAMPLE}@v1"):
        for relative, content in SAMPLE_FILES.items():
            path = os.path.join(root, name, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write(content.replace("1.0", "0.9") if name.endswith("@v1") else content)


def demo_config(config: Config, workdir: str) -> Config:
    return replace(
        config,
        state_dir=os.path.join(workdir, "state"),
        mount_root=os.path.join(workdir, "mounts"),
        target_roots=(os.path.join(workdir, "targets"),),
        local=LocalConfig(root=os.path.join(workdir, "repositories")),
    ).validate()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def run(args: argparse.Namespace, config: Config) -> int:
    config = demo_config(config, os.path.abspath(args.workdir))
    os.makedirs(config.target_roots[0], exist_ok=True)
    make_sample(config.local.root)
    manager = MountManager(config)
    manager.reconcile()
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)
    target = os.path.join(config.target_roots[0], SAMPLE)
    consumer = Consumer("cli", "demo")
    manager.publish(spec, consumer, target)
    entry = MountTable().at(target)
    print(f"published {SAMPLE} at {target}")
    print(f"  mount: {entry.fstype if entry else '?'} {entry.options if entry else ''}")
    print(f"$ ls -R {target}")
    for directory, _dirs, files in sorted(os.walk(target)):
        for name in sorted(files):
            print("  " + os.path.relpath(os.path.join(directory, name), target))
    with open(os.path.join(target, "README")) as handle:
        print(f"$ cat {target}/README\n  " + handle.read().strip())
    print("$ hepvol status\n" + as_table(manager.status()))
    sys.stdout.flush()
    if not args.once:
        print("Serving until Ctrl-C …", flush=True)
        _wait_for_signal()
    manager.unpublish(target)
    left = list(MountTable().under(args.workdir))
    print("cleaned up: " + ("nothing left mounted" if not left else f"{len(left)} mounts left!"))
    return 0 if not left else 1
