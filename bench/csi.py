"""CSI benchmark: NodePublish+NodeUnpublish over gRPC vs the raw bind+umount pair.

A real ``hepvol csi --mode node`` process serves an already-mounted repository (a
holder target keeps it mounted); the pair is timed from a gRPC client at
concurrency 1 and 16, next to the raw mount(2)+umount2(2) pair measured in the same
run. Then the server's RSS idle and with N published volumes. Run as root:
``python -m bench.csi [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench.common import (
    SAMPLE,
    bench_world,
    latency_text,
    machine,
    measure,
    raw_bind_pair,
    rss_mb,
    summarize,
    table,
)
from csi_driver.client import Client
from mount_core import bind
from mount_core.mountinfo import MountTable

CONTEXT = {"repository": SAMPLE}


def _world(workdir: str) -> str:
    bench_world(workdir, log_level="WARNING")
    return os.path.join(workdir, "config.toml")


def _teardown(workdir: str) -> None:
    for entry in sorted(MountTable().under(workdir), key=lambda e: -len(e.mount_point)):
        bind.unmount(entry.mount_point, lazy=True)
    run_dir = os.path.join(workdir, "state", "run")
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        try:
            with open(os.path.join(run_dir, name)) as handle:
                os.kill(int(handle.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    shutil.rmtree(workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_seconds(port: int) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of OK Node RPCs from the server's own histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found: dict[str, list[float]] = {}
    pattern = (
        r'hepvol_csi_rpc_seconds_(sum|count)\{code="OK",method="(NodeU?n?[Pp]ublishVolume)"\} (\S+)'
    )
    for kind, method, value in re.findall(pattern, text):
        found.setdefault(method, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {method: (v[0], v[1]) for method, v in found.items()}


def _server_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> float:
    """Mean server-side ms of one publish+unpublish pair between two scrapes."""
    total = 0.0
    for method, (seconds, count) in after.items():
        old_seconds, old_count = before.get(method, (0.0, 0.0))
        total += (seconds - old_seconds) / max(count - old_count, 1)
    return total * 1000


def run(count: int, volumes: int) -> str:
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-csi-")
    socket_dir = tempfile.mkdtemp(prefix="hepvol-csi-", dir="/tmp")
    endpoint = f"unix://{socket_dir}/csi.sock"
    env = dict(os.environ, HEPVOL_CONFIG=_world(workdir))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "csi", "--mode", "node", "--node-id", "bench",
         "--endpoint", endpoint, "--metrics-port", str(port), "--metrics-address", "127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    client = Client(endpoint)
    targets = os.path.join(workdir, "targets")
    rows = []
    try:
        client.wait_ready()
        client.publish("holder", os.path.join(targets, "holder"), CONTEXT)
        backing = os.path.join(workdir, "mounts", f"cvmfs-{SAMPLE}")
        idle_mb = rss_mb([server.pid])
        raw_pair = raw_bind_pair(backing, targets)

        def raw_with_dir(i: int) -> None:
            # What the protocol makes any driver do: create the target, bind, unbind, remove it.
            target = os.path.join(targets, f"raw-dir-{i}")
            os.mkdir(target)
            bind.mount(backing, target, None, bind.MS_BIND)
            bind.unmount(target)
            os.rmdir(target)

        def csi_pair(i: int) -> None:
            target = os.path.join(targets, f"pod-{i}")
            client.publish(f"vol-{i}", target, CONTEXT)
            client.unpublish(f"vol-{i}", target)

        for concurrency in (1, 16):
            raw = measure(raw_pair, count, 1)
            raw_dir = measure(raw_with_dir, count, 1)
            before = _server_seconds(port)
            pair = measure(csi_pair, count, concurrency)
            inside = _server_ms(before, _server_seconds(port))
            summarize("CSI", f"NodePublish+NodeUnpublish pair over gRPC, c={concurrency}",
                      latency_text(pair), f"bind+umount p50 {raw.p50_ms:.3f} ms",
                      pair.p50_ms / raw.p50_ms)  # fmt: skip
            rows.append((
                concurrency, pair.p50_ms, pair.p99_ms, round(pair.per_second), inside,
                raw.p50_ms, raw_dir.p50_ms, round(pair.p50_ms / raw.p50_ms, 1),
                round(pair.p50_ms / raw_dir.p50_ms, 1),
            ))  # fmt: skip
        published = [os.path.join(targets, f"many-{i}") for i in range(volumes)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda t: client.publish(f"v-{t}", t, CONTEXT), published))
        loaded_mb = rss_mb([server.pid])
        summarize("CSI", f"server RSS idle / with {volumes} published volumes",
                  f"{idle_mb:.1f} MB / {loaded_mb:.1f} MB")  # fmt: skip
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda t: client.unpublish(f"v-{t}", t), published))
    finally:
        client.close()
        server.send_signal(signal.SIGKILL)
        server.wait()
        _teardown(workdir)
        shutil.rmtree(socket_dir, ignore_errors=True)
    latency = table(
        f"csi: NodePublish+NodeUnpublish of an already-mounted repository over gRPC "
        f"({count} pairs; {machine()})",
        ["concurrency", "pair p50 ms", "pair p99 ms", "pairs/s", "in server (mean) ms",
         "raw bind+umount p50 ms", "raw mkdir+bind+umount+rmdir p50 ms", "ratio to bind",
         "ratio to mkdir+bind"],
        rows,
    )  # fmt: skip
    memory = table(
        "csi: server RSS (hepvol csi process; the FUSE server is a separate process)",
        ["state", "RSS MB"],
        [("idle (one volume published)", idle_mb), (f"{volumes} volumes published", loaded_mb)],
    )
    return latency + "\n" + memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args(argv)
    print(run(200 if args.quick else 2000, 100 if args.quick else 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
