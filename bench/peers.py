"""hepvol next to the peers, side by side in one run: Docker plugin, CSI node, FlexVolume.

The peers are the binaries in ``../shared/tools/anchors`` (CERN's Go Docker plugin
``docker-volume-cvmfs``, also a FlexVolume driver, and ``csi-cvmfsplugin``). Both
sides serve ``demo.hepvol.org`` through the real CVMFS client, each from a FUSE
mount of its own (see :mod:`bench.isolation`), and both are driven by the same
client code. Each comparison runs in interleaved rounds (hepvol, peer, peer,
hepvol, ...), so that a load change on this shared machine hits both sides alike
and the ratio survives. Floors measured in the same run: ``floors`` (anchors'
``floors.c``, built with gcc into a cache), a bare WSGI app on the plugin's own
gunicorn settings, and ``python -I -S -c pass``.

Run as root in a private mount namespace: ``python -m bench.peers [--quick]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import isolation
from bench.common import (
    SUMMARY_HEADER,
    Timing,
    interleaved,
    process_tree,
    rss_mb,
    summarize,
    table,
)
from bench.docker_plugin import call, start_bare_gunicorn, start_plugin
from mount_core import bind
from mount_core.mountinfo import MountTable

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "tools" / "anchors"
REPO = "demo.hepvol.org"
CACHE = Path("/var/cache/hepvol")


class Peer:
    """A peer daemon in a mount namespace of its own (see :mod:`bench.isolation`)."""

    def __init__(self, workdir: str, command: list[str], *options: str) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        log = open(os.path.join(workdir, "isolation.log"), "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
             "bench.isolation", "--workdir", workdir, *options, "--", *command],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

    def pid(self) -> int | None:
        try:
            return int(Path(self.workdir, "pid").read_text())
        except (OSError, ValueError):
            return None

    def restarts(self) -> int:
        try:
            return int(Path(self.workdir, "restarts").read_text())
        except (OSError, ValueError):
            return 0

    def rss(self) -> float:
        pid = self.pid()
        return rss_mb(process_tree(pid)) if pid else 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def floors_binary() -> str:
    """anchors' floors.c built with gcc once per source version, cached."""
    source = ANCHORS / "floors.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = CACHE / f"floors-{digest}" / "floors"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", f"{binary}.tmp", str(source)], check=True)
        os.replace(f"{binary}.tmp", binary)
    return str(binary)


def floor_us(mode: str, count: int, source: str, directory: str) -> float:
    """p50 in microseconds of one ``floors`` mode."""
    os.makedirs(directory, exist_ok=True)
    out = subprocess.run([floors_binary(), mode, str(count), source, directory],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return float(out[2])


def wait_for(check: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {seconds:g} s")
        time.sleep(0.1)


def ratio_text(ours: float, theirs: float, lower_is_better: bool = True) -> str:
    ratio = ours / theirs if theirs else float("inf")
    ahead = ratio <= 1 if lower_is_better else ratio >= 1
    return f"{ratio:.2f} ({'ahead' if ahead else 'behind'})"


Row = tuple[str, str, str, str, str, str, str]


def compare_row(area: str, what: str, ours: Timing, theirs: Timing, floor: str,
                goal: str) -> Row:  # fmt: skip
    """(area, measurement, hepvol, peer, floor, ratio, goal): a row of the summary."""
    return (area, what, f"p50 {ours.p50_ms:.2f} ms, p99 {ours.p99_ms:.2f} ms, "
            f"{ours.per_second:.0f}/s", f"p50 {theirs.p50_ms:.2f} ms, p99 "
            f"{theirs.p99_ms:.2f} ms, {theirs.per_second:.0f}/s", floor,
            ratio_text(ours.p50_ms, theirs.p50_ms), goal)  # fmt: skip


#: What was tried for each goal, shown next to a missed one (its floor is in the row).
TRIED = {
    "docker latency": "tried: 2 gthread workers, one per core (before: 1 worker); measured: "
    "the plugin's app costs what a one-route Flask app costs per call (~0.1 ms of CPU), "
    "gc.freeze() after start-up changed nothing measurable; what is left is gunicorn+Flask "
    "per call (floor) and the core's ledger transactions (in-process floor)",
    "docker rss": "tried: a lean re-executed master that never imports Flask or the core, "
    "MALLOC_ARENA_MAX=2, the docker package only in a short-lived child; gunicorn's master "
    "plus a worker with an empty app (floor) is already above 2x the Go plugin",
    "csi latency": "tried: nothing forked per call (bind mounts by syscall)",
    "csi rss": "tried: malloc arenas capped at 2 (-2 MB after load), the controller not "
    "imported by a node; importing grpc and the CSI stubs (floor) is already above 2x cvmfs-csi",
    "flex": "tried: the launcher hands the call to the node daemon (only builtin imports)",
}


def met(ok: bool, tried: str = "") -> str:
    return "met" if ok else f"MISSED ({TRIED[tried]})" if tried else "MISSED"


# Docker ----------------------------------------------------------------------------------


def docker_rows(workdir: str, rounds: int, per_round: int) -> list[Row]:
    """Mount+Unmount pairs on hepvol's plugin and the Go plugin, interleaved."""
    from bench.common import bench_world

    world = os.path.join(workdir, "hepvol-docker")
    config = bench_world(world, log_level="WARNING", client="cvmfs2")
    driver = f"hepvolpeers{os.getpid()}"
    ours_socket = f"/run/docker/plugins/{driver}.sock"
    plugin = start_plugin(world, driver, ours_socket)
    peer_dir = os.path.join(workdir, "go-docker")
    root = os.path.join(peer_dir, "mnt")
    peer = Peer(peer_dir, [str(ANCHORS / "docker-volume-cvmfs"), "--mountpoint", root],
                "--fresh-run", "--var-cache", "--restart",
                "--premount", f"{REPO}:{root}/{REPO}/trunk")  # fmt: skip
    theirs_socket = os.path.join(peer_dir, "plugins", "cvmfs.sock")
    bare, bare_path = start_bare_gunicorn(workdir)
    errors = {"peer": 0}
    rows: list[Row] = []
    try:
        wait_for(lambda: call(theirs_socket, "Plugin.Activate"), "the Go plugin")
        for path in (ours_socket, theirs_socket):
            call(path, "VolumeDriver.Create", {"Name": REPO})
            call(path, "VolumeDriver.Mount", {"Name": REPO, "ID": "holder"})

        def ours(i: int) -> None:
            call(ours_socket, "VolumeDriver.Mount", {"Name": REPO, "ID": f"b{i}"})
            call(ours_socket, "VolumeDriver.Unmount", {"Name": REPO, "ID": f"b{i}"})

        def theirs(i: int) -> None:
            for _attempt in range(100):
                try:
                    call(theirs_socket, "VolumeDriver.Mount", {"Name": REPO, "ID": f"b{i}"})
                    call(theirs_socket, "VolumeDriver.Unmount", {"Name": REPO, "ID": f"b{i}"})
                    return
                except (OSError, RuntimeError, ValueError):
                    errors["peer"] += 1  # it died (its data race): its restart loop brings it back
                    time.sleep(0.05)
            raise RuntimeError("the Go plugin did not come back")

        def bare_pair(i: int) -> None:
            call(bare_path, "ping")
            call(bare_path, "ping")

        # The plugin's own work without HTTP: the same calls on the same ledger, in-process.
        from docker_plugin.volumes import DockerVolumes
        from mount_core.manager import MountManager

        volumes = DockerVolumes(MountManager(config), driver, "cvmfs")

        def core_pair(i: int) -> None:
            volumes.mount(REPO, f"c{i}")
            volumes.unmount(REPO, f"c{i}")

        for concurrency in (1, 16):
            found = interleaved({"hepvol": ours, "peer": theirs, "bare": bare_pair,
                                 "core": core_pair}, rounds, per_round, concurrency)  # fmt: skip
            hepvol, go, bare_timing = found["hepvol"], found["peer"], found["bare"]
            core = found["core"]
            floor = (f"2 calls to a bare WSGI app, same gunicorn settings: p50 "
                     f"{bare_timing.p50_ms:.2f} ms, {bare_timing.per_second:.0f}/s; the same "
                     f"Mount+Unmount in-process (core, no HTTP): p50 {core.p50_ms:.2f} ms, "
                     f"{core.per_second:.0f}/s")  # fmt: skip
            if concurrency == 1:
                goal = "p50 <= Go plugin's: " + met(hepvol.p50_ms <= go.p50_ms, "docker latency")
            else:
                goal = "pairs/s >= Go plugin's: " + met(
                    hepvol.per_second >= go.per_second, "docker latency"
                )
            rows.append(compare_row("Docker plugin", f"Mount+Unmount pair, c={concurrency}",
                                    hepvol, go, floor, goal))  # fmt: skip
        time.sleep(1)
        ours_rss, theirs_rss = docker_rss(plugin), peer.rss()
        bare_rss = rss_mb(process_tree(bare.pid))
        rows.append(("Docker plugin", "RSS of all the daemon's processes, idle after the calls",
                     f"{ours_rss:.1f} MB ({len(docker_pids(plugin))} processes)",
                     f"{theirs_rss:.1f} MB", f"bare WSGI app, same gunicorn settings: "
                     f"{bare_rss:.1f} MB", ratio_text(ours_rss, theirs_rss),
                     "<= 2x Go plugin's: " + met(ours_rss <= 2 * theirs_rss, "docker rss")))  # fmt: skip
        if errors["peer"] or peer.restarts():
            print(f"the Go plugin failed {errors['peer']} calls and was restarted "
                  f"{peer.restarts()} times (its data race at c=16); retried calls count "
                  "in its timings\n")  # fmt: skip
    finally:
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait(30)
        peer.stop()
        os.killpg(plugin.pid, signal.SIGTERM)
        plugin.wait(30)
        teardown_world(world)
    return rows


def docker_pids(plugin: subprocess.Popen[bytes]) -> list[int]:
    """gunicorn master + workers (the short-lived stale-consumer check excluded)."""
    pids = []
    for pid in process_tree(plugin.pid):
        try:
            if b"docker_plugin.stale" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def docker_rss(plugin: subprocess.Popen[bytes]) -> float:
    return rss_mb(docker_pids(plugin))


def teardown_world(world: str) -> None:
    """Unmount a hepvol world's targets and backing mounts (the FUSE servers exit)."""
    from mount_core.config import load
    from mount_core.manager import MountManager

    config = load(os.path.join(world, "config.toml"))
    manager = MountManager(config)
    for row in manager.ledger.consumers():
        if row.target:
            manager.unpublish(row.target)
    for entry in sorted(MountTable().under(world), key=lambda e: -len(e.mount_point)):
        if entry.fstype.startswith("fuse"):
            subprocess.run(["umount", entry.mount_point], capture_output=True, check=False)
        bind.unmount(entry.mount_point, lazy=True)
    shutil.rmtree(world, ignore_errors=True)


# CSI -------------------------------------------------------------------------------------


def csi_rows(workdir: str, rounds: int, per_round: int) -> list[Row]:
    """NodePublish+NodeUnpublish pairs on hepvol's CSI node and cvmfs-csi, interleaved."""
    from bench.common import bench_world
    from csi_driver.client import Client

    world = os.path.join(workdir, "hepvol-csi")
    bench_world(world, log_level="WARNING", client="cvmfs2")
    ours_endpoint = f"unix://{world}/csi.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "csi", "--mode", "node", "--node-id", "bench",
         "--endpoint", ours_endpoint, "--metrics-port", str(free_port()),
         "--metrics-address", "127.0.0.1"],  # as the chart runs it: with metrics
        env=dict(os.environ, HEPVOL_CONFIG=os.path.join(world, "config.toml")),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    peer_dir = os.path.join(workdir, "cvmfs-csi")
    theirs_endpoint = f"unix://{peer_dir}/csi.sock"
    peer = Peer(peer_dir, [str(ANCHORS / "csi-cvmfsplugin"), "-v=4",
                           f"--endpoint={theirs_endpoint}", "--nodeid=bench",
                           "--role=identity,node", "--drivername=cvmfs.csi.cern.ch",
                           "--automount-startup-timeout=10"],
                "--fresh-run", "--autofs", "--restart")  # fmt: skip
    ours, theirs = Client(ours_endpoint), Client(theirs_endpoint)
    context = {"repository": REPO}
    targets = {"hepvol": os.path.join(world, "targets"), "peer": os.path.join(peer_dir, "t")}
    rows: list[Row] = []
    try:
        ours.wait_ready(60)
        wait_for(lambda: os.path.exists(theirs_endpoint[7:]), "cvmfs-csi")
        os.makedirs(targets["peer"], exist_ok=True)
        for name, client in (("hepvol", ours), ("peer", theirs)):
            client.publish("holder", os.path.join(targets[name], "holder"), context)

        def pair(name: str, client: Client) -> Callable[[int], None]:
            def run(i: int) -> None:
                target = os.path.join(targets[name], f"pod-{i}")
                client.publish(f"vol-{i}", target, context)
                client.unpublish(f"vol-{i}", target)

            return run

        backing = os.path.join(world, "mounts", f"cvmfs-{REPO}")
        binddir = floor_us("binddir", 200, backing, os.path.join(world, "floor"))
        spawn = floor_us("spawn", 50, backing, os.path.join(world, "floor", "s"))
        floors = (f"mkdir+bind+umount+rmdir p50 {binddir / 1000:.3f} ms; forking mount+umount "
                  f"(what cvmfs-csi does) {spawn / 1000:.2f} ms")  # fmt: skip
        for concurrency in (1, 16):
            found = interleaved({"hepvol": pair("hepvol", ours), "peer": pair("peer", theirs)},
                                rounds, per_round, concurrency)  # fmt: skip
            hepvol, csi = found["hepvol"], found["peer"]
            if concurrency == 1:
                goal = "p50 <= cvmfs-csi's (lead kept): " + met(
                    hepvol.p50_ms <= csi.p50_ms, "csi latency"
                )
            else:
                goal = "pairs/s >= cvmfs-csi's: " + met(
                    hepvol.per_second >= csi.per_second, "csi latency"
                )
            rows.append(compare_row("CSI node", f"NodePublish+NodeUnpublish pair, c={concurrency}",
                                    hepvol, csi, floors, goal))  # fmt: skip
        time.sleep(1)
        ours_rss, theirs_rss = rss_mb(process_tree(server.pid)), peer.rss()
        floor = import_rss(GRPC_FLOOR)
        rows.append(("CSI node", "node server RSS, idle after the calls", f"{ours_rss:.1f} MB",
                     f"{theirs_rss:.1f} MB", f"python importing grpc and the CSI stubs: "
                     f"{floor:.1f} MB", ratio_text(ours_rss, theirs_rss),
                     "<= 2x cvmfs-csi's: " + met(ours_rss <= 2 * theirs_rss, "csi rss")))  # fmt: skip
    finally:
        ours.close()
        theirs.close()
        peer.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        teardown_world(world)
    return rows


GRPC_FLOOR = "import grpc; from csi_driver.generated import csi_pb2, csi_pb2_grpc"


def import_rss(statement: str) -> float:
    """RSS (MB) of a fresh interpreter after it ran ``statement`` (VmRSS, not the peak)."""
    code = f"{statement}\nprint(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)  # fmt: skip
    return int(result.stdout.split()[-1]) / 1024


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args(argv)
    if not ANCHORS.is_dir():
        print(f"{ANCHORS} is absent: the peers' rows are not measured\n")
        summarize("peers", "side-by-side rows", f"not measured: {ANCHORS} is absent")
        return 0
    if not isolation.client_installed():
        print("the real CVMFS client is not installed: the peers' rows are not measured\n")
        summarize("peers", "side-by-side rows", "not measured: no CVMFS client (cvmfs2)")
        return 0
    rounds, per_round = (2, 10) if args.quick else (6, 250)
    flex_rounds = 5 if args.quick else 60
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-peers-")
    rows: list[Row] = []
    try:
        from bench.peers_flex import flex_rows

        with isolation.private_cvmfs(workdir):
            rows += docker_rows(workdir, rounds, per_round)
            rows += csi_rows(workdir, rounds, per_round)
            rows += flex_rows(workdir, flex_rounds)
    finally:
        for entry in sorted(MountTable().under(workdir), key=lambda e: -len(e.mount_point)):
            bind.unmount(entry.mount_point, lazy=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(f"hepvol and the peers, same client, interleaved rounds ({rounds} x "
                f"{per_round} pairs per side; FlexVolume: {flex_rounds} rounds)",
                SUMMARY_HEADER, rows))  # fmt: skip
    for row in rows:
        summarize(row[0], row[1], row[2], row[4], row[5], peer=row[3], goal=row[6])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
