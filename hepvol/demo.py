"""``hepvol demo`` (``make run``): everything on the embedded backend, for a first look.

Creates a sample repository and shows it served four ways: through the core
directly (mount, publish at a target, list and read it), through the FlexVolume
driver as kubelet calls it, through the CSI node server (a NodePublishVolume),
and through the Docker volume plugin (hepvol/demo_docker.py: ``docker volume
create`` and ``docker run -v``, in a private engine when none answers). Prints
``hepvol status`` and keeps it all up until SIGINT, SIGTERM or a stopped ``make
run``; then takes everything down and checks that nothing is left mounted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from dataclasses import replace

from hepvol.daemon import stop_event
from hepvol.status import as_table
from mount_core import logs
from mount_core.config import Config, LocalConfig
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec

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
        "--docker-driver",
        default="cvmfs",
        help="name of the demo's Docker volume driver (default cvmfs, as users type it)",
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
    """``config`` moved into ``workdir``, serving CVMFS volumes from the embedded backend.

    The sample repository exists only there: a node configured for the real client
    (``[cvmfs] client = "cvmfs2"``) would not know it.
    """
    return replace(
        config,
        state_dir=os.path.join(workdir, "state"),
        mount_root=os.path.join(workdir, "mounts"),
        target_roots=(os.path.join(workdir, "targets"),),
        local=LocalConfig(root=os.path.join(workdir, "repositories")),
        cvmfs=replace(config.cvmfs, client="local"),
    ).validate()


def _show_core(manager: MountManager, target: str) -> None:
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)
    manager.publish(spec, Consumer("cli", "demo"), target)
    entry = MountTable().at(target)
    print(f"published {SAMPLE} at {target}")
    print(f"  mount: {entry.fstype if entry else '?'} {entry.options if entry else ''}")
    print(f"$ ls -R {target}")
    for directory, _dirs, files in sorted(os.walk(target)):
        for name in sorted(files):
            print("  " + os.path.relpath(os.path.join(directory, name), target))
    with open(os.path.join(target, "README")) as handle:
        print(f"$ cat {target}/README\n  " + handle.read().strip())


#: SIGHUP, SIGINT and SIGTERM as bits of /proc/PID/status's SigBlk mask.
_STOP_SIGNALS = (
    (1 << (signal.SIGHUP - 1)) | (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
)


def _blocked(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    return 0


def _follow_make(stop: threading.Event) -> None:
    """Stop when ``make run`` is told to stop. GNU make passes SIGTERM on to its
    child, but on a SIGINT (or SIGHUP) sent to make alone (Ctrl-C at a terminal
    reaches the whole process group; ``kill -INT`` does not) it only waits for the
    child, with the signal blocked while it does: that is what is watched for."""
    parent = os.getppid()
    with contextlib.suppress(OSError), open(f"/proc/{parent}/comm") as comm:
        if comm.read().strip() != "make":
            return

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent or _blocked(parent) & _STOP_SIGNALS:
                stop.set()

    threading.Thread(target=watch, name="follow-make", daemon=True).start()


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def run(args: argparse.Namespace, config: Config) -> int:
    from csi_driver import demo as csi_demo
    from flexvolume import showcase
    from hepvol import demo_docker

    stop = stop_event()  # now: SIGTERM/SIGINT during the walk-through still tear down
    _follow_make(stop)
    workdir = os.path.abspath(args.workdir)
    config = demo_config(config, workdir)
    os.environ["HEPVOL_CVMFS_CLIENT"] = "local"  # for the CSI and Docker daemons it starts
    os.makedirs(config.target_roots[0], exist_ok=True)
    # The daemons' JSON log lines would bury the walk-through: they go to a file.
    logs.configure(config.log_level, path=os.path.join(workdir, "hepvol.log"))
    print(f"hepvol demo in {workdir} (logs: {workdir}/hepvol.log)")
    make_sample(config.local.root)
    manager = MountManager(config)
    manager.reconcile()
    target = os.path.join(config.target_roots[0], SAMPLE)
    ok = True
    with contextlib.ExitStack() as stack:
        stack.callback(manager.unpublish, target)
        _section("the core: mount, publish, read")
        _show_core(manager, target)
        _section("Kubernetes FlexVolume: kubelet's calls replayed against cern/cvmfs")
        ok = showcase.show(config, workdir, status=lambda: as_table(manager.status())) and ok
        _section("Kubernetes CSI: node server and a NodePublishVolume")
        csi = csi_demo.start(config, workdir, SAMPLE)
        stack.callback(csi.stop)
        _section("Docker: the volume plugin, docker volume create and docker run")
        ok = demo_docker.show(config, stack, args.docker_driver) and ok
        _section("hepvol status")
        print(as_table(manager.status()), flush=True)
        if not args.once:
            print("\nServing until Ctrl-C …", flush=True)
            stop.wait()
    left = list(MountTable().under(workdir))
    print("cleaned up: " + ("nothing left mounted" if not left else f"{len(left)} mounts left!"))
    return 0 if ok and not left else 1
