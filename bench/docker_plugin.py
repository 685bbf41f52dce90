"""Docker plugin benchmark: Mount+Unmount over the plugin socket, RSS, and ``docker run`` cost.

Run as root in a private mount namespace:
``unshare -m --propagation private python -m bench.docker_plugin [--quick]``
(``make bench`` does). The client opens one connection per call, as the peer
figures in the issue were measured. Floors measured in the same run: an empty
call pair (``Plugin.Activate`` twice: HTTP + gunicorn + Flask) and the core's
acquire+release in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    SAMPLE,
    bench_world,
    latency_text,
    machine,
    measure,
    median,
    rss_mb,
    summarize,
    table,
)
from mount_core import bind
from mount_core.config import Config
from mount_core.consumer import Consumer
from mount_core.manager import MountManager
from mount_core.mountinfo import MountTable
from mount_core.spec import VolumeSpec

GOALS = "the goals are against the Go plugin, measured side by side in bench.peers"


def call(path: str, method: str, body: dict[str, str] | None = None) -> dict[str, str]:
    """One plugin call on a fresh connection (``Connection: close``)."""
    payload = json.dumps(body or {}).encode()
    request = (
        f"POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, reply = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{method} failed: {head.splitlines()[:1]} {reply[:200]!r}")
    result: dict[str, str] = json.loads(reply)
    return result


def hello_app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    """A bare WSGI app: the floor of any call served by gunicorn gthread."""
    environ["wsgi.input"].read()  # type: ignore[attr-defined]
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


def start_bare_gunicorn(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    """gunicorn with the plugin's worker settings (workers, gthread, threads), no app."""
    from docker_plugin.settings import Settings

    shipped = Settings(driver="bare", backend="cvmfs", socket_path="")
    path = os.path.join(workdir, "bare.sock")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"unix:{path}", "-w", str(shipped.workers),
         "-k", "gthread", "--threads", str(shipped.threads), "--log-level", "warning",
         "bench.docker_plugin:hello_app"],
        cwd=Path(__file__).resolve().parent.parent, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            call(path, "ping")
            return process, path
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("bare gunicorn did not start")


def make_world(workdir: str) -> Config:
    return bench_world(workdir, log_level="WARNING")


def start_plugin(workdir: str, driver: str, socket_path: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HEPVOL_CONFIG=os.path.join(workdir, "config.toml"))
    log = open(os.path.join(workdir, "plugin.log"), "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "hepvol", "docker-plugin", "--driver", "cvmfs",
         "--name", driver, "--socket", socket_path],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            call(socket_path, "Plugin.Activate")
            return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the plugin did not start; see " + os.path.join(workdir, "plugin.log"))


def plugin_pids(process: subprocess.Popen[bytes]) -> list[int]:
    path = f"/proc/{process.pid}/task/{process.pid}/children"
    try:
        return [process.pid, *(int(p) for p in Path(path).read_text().split())]
    except OSError:
        return [process.pid]


def pss_mb(pids: list[int]) -> float:
    """Sum of Pss (shared pages split between their users), in MB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def rpc_rows(
    config: Config, socket_path: str, bare_path: str, count: int
) -> list[tuple[object, ...]]:
    call(socket_path, "VolumeDriver.Create", {"Name": SAMPLE})
    # A long-lived holder keeps the backing mount up: pairs measure the protocol
    # and the ledger, not a FUSE server start per pair.
    call(socket_path, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "holder"})

    def pair(i: int) -> None:
        body = {"Name": SAMPLE, "ID": f"bench-{i}"}
        call(socket_path, "VolumeDriver.Mount", body)
        call(socket_path, "VolumeDriver.Unmount", body)

    def empty_pair(i: int) -> None:
        call(socket_path, "Plugin.Activate")
        call(socket_path, "Plugin.Activate")

    def bare_pair(i: int) -> None:
        call(bare_path, "ping")
        call(bare_path, "ping")

    manager = MountManager(config)
    spec = VolumeSpec(backend="cvmfs", repository=SAMPLE)

    def core_pair(i: int) -> None:
        consumer = Consumer("docker", f"core-{i}")
        manager.acquire(spec, consumer)
        manager.release(consumer)

    rows: list[tuple[object, ...]] = []
    for concurrency in (1, 16):
        timings = {}
        for name, operation in (
            ("Mount+Unmount over the socket", pair),
            ("floor: 2 empty calls (Plugin.Activate)", empty_pair),
            ("floor: 2 calls to a bare WSGI app, same gunicorn settings", bare_pair),
            ("floor: core acquire+release in-process", core_pair),
        ):
            timing = timings[name] = measure(operation, count, concurrency, warmup=50)
            rows.append((name, concurrency, timing.p50_ms, timing.p99_ms, round(timing.per_second)))
        mount, floor = (
            timings["Mount+Unmount over the socket"],
            timings["floor: 2 calls to a bare WSGI app, same gunicorn settings"],
        )
        summarize("Docker plugin", f"Mount+Unmount pair over the socket, c={concurrency}",
                  latency_text(mount), f"2 bare WSGI calls p50 {floor.p50_ms:.2f} ms",
                  mount.p50_ms / floor.p50_ms)  # fmt: skip
    return rows


def docker_run_rows(driver: str, runs: int) -> list[tuple[object, ...]]:
    """Median ``docker run --rm IMAGE true`` with and without a plugin volume."""
    from tests.e2e.dockerd import IMAGE, Dockerd

    engine = Dockerd(Path(tempfile.mkdtemp(prefix="hv-bench-dockerd-", dir="/tmp")))
    try:
        engine.start()
        engine.import_busybox(IMAGE)
        engine.docker("volume", "create", "-d", driver, SAMPLE)
        plain = ["run", "--rm", "--network", "none", IMAGE, "true"]
        with_volume = ["run", "--rm", "--network", "none", "-v", f"{SAMPLE}:/cvmfs/{SAMPLE}",
                       "--volume-driver", driver, IMAGE, "true"]  # fmt: skip
        times: dict[str, list[float]] = {"plain": [], "volume": []}
        for _ in range(runs):
            for name, args in (("plain", plain), ("volume", with_volume)):
                start = time.perf_counter()
                engine.docker(*args)
                times[name].append(time.perf_counter() - start)
        base, vol = median(times["plain"]) * 1000, median(times["volume"]) * 1000
        summarize("Docker plugin", "docker run with a plugin volume", f"{vol:.0f} ms",
                  f"docker run without one {base:.0f} ms", vol / base)  # fmt: skip
        return [
            ("docker run --rm IMAGE true", runs, base),
            ("same with a plugin volume (-v, --volume-driver)", runs, vol),
            ("plugin's share of container start", runs, vol - base),
        ]
    finally:
        engine.destroy()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.docker_plugin")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args(argv)
    count, runs = (200, 3) if args.quick else (3000, 15)
    workdir = tempfile.mkdtemp(prefix="hepvol-bench-docker-")
    driver = f"hepvolbench{os.getpid()}"
    socket_path = f"/run/docker/plugins/{driver}.sock"
    config = make_world(workdir)
    process = start_plugin(workdir, driver, socket_path)
    bare, bare_path = start_bare_gunicorn(workdir)
    try:
        rows = rpc_rows(config, socket_path, bare_path, count)
        os.killpg(bare.pid, 15)
        bare.wait(30)
        rss = rss_mb(plugin_pids(process))
        pss = pss_mb(plugin_pids(process))
        run_rows = docker_run_rows(driver, runs) if shutil.which("dockerd") else []
        rss_after = rss_mb(plugin_pids(process))
        holds = 100 if args.quick else 1000
        for i in range(holds):
            call(socket_path, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": f"hold-{i}"})
        rss_held = rss_mb(plugin_pids(process))
        for i in range(holds):
            call(socket_path, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": f"hold-{i}"})
        summarize("Docker plugin", f"RSS (master + workers) idle / with {holds} mounts held",
                  f"{rss:.1f} MB / {rss_held:.1f} MB (PSS {pss:.1f} MB)")  # fmt: skip
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
        manager = MountManager(config)
        for row in manager.ledger.consumers():
            manager.release(Consumer(row.kind, row.consumer.partition(":")[2]))
        for entry in sorted(MountTable().under(workdir), key=lambda e: -len(e.mount_point)):
            bind.unmount(entry.mount_point, lazy=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(machine() + "\n")
    print(table(f"Docker plugin calls, one connection per call ({count} pairs each; {GOALS})",
                ("operation", "concurrency", "p50 ms", "p99 ms", "pairs/s"), rows))  # fmt: skip
    print(table("Plugin memory (VmRSS of gunicorn master + workers)", ("when", "MB"),
                [("after the call benchmark", rss), ("after docker run too", rss_after),
                 ("PSS after the calls (the master's pages counted once)", pss)]))  # fmt: skip
    if run_rows:
        print(table("docker run time", ("what", "runs", "median ms"), run_rows))
    else:
        print("dockerd not installed: docker run time not measured\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
