"""``make run`` on a machine where no Docker engine answers: the demo starts a private
one, runs the commands CERN's introductions show, and leaves nothing behind when
``make`` is told to stop (SIGTERM, or SIGINT sent to make alone)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import REPO, SAMPLE
from tests.e2e.dockerd import PLUGIN_DIR

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "hepvol-demo-busybox:latest"
PATH = f"/cvmfs/{SAMPLE}"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if text in argv and entry.name != str(os.getpid()):
            found.append(argv)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_make_run_shows_docker_for_real_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    workdir = tmp_path / "demo"
    driver = f"hvdemo{os.getpid()}{sig}"
    out = tmp_path / "make-run.out"
    environ = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    environ.pop("HEPVOL_CONFIG", None)
    with open(out, "wb") as output:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(REPO), "run",
             f"DEMO_ARGS=--workdir {workdir} --docker-driver {driver}"],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while "Serving until Ctrl-C" not in out.read_text():
            assert make.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        shown = out.read_text()
        engine = re.search(r"starting a private one in (\S+) …", shown)
        assert engine, shown
        assert Path(engine[1]).is_dir() and _processes_mentioning(engine[1])
        for command, result in (
            (f"$ docker volume create -d {driver} --name {SAMPLE}\n", f"  {SAMPLE}\n"),
            (f"$ docker run -i --rm -v {SAMPLE}:{PATH} {IMAGE} ls {PATH}/\n",
             "  README\n  data\n  software\n"),
            (f"$ docker run --rm --volume-driver {driver} -v {SAMPLE}:{PATH} {IMAGE} cat "
             f"{PATH}/README\n", f"  This is {SAMPLE}, served by hepvol's embedded FUSE"),
        ):  # fmt: skip
            assert command + result in shown, shown
        assert not [line for line in shown.splitlines() if line.startswith("{")], "no JSON logs"
        make.send_signal(sig)  # to make alone, not its process group
        make.wait(180)
    finally:
        if make.poll() is None:
            make.kill()
            make.wait(30)
    shown = out.read_text()
    assert "cleaned up: nothing left mounted" in shown, shown
    assert "Traceback" not in shown
    assert not Path(engine[1]).exists(), "the private engine's directories are removed"
    assert _processes_mentioning(engine[1]) == [], "dockerd and containerd are stopped"
    assert _processes_mentioning(str(workdir)) == [], "no FUSE server or daemon is left"
    assert not (PLUGIN_DIR / f"{driver}.sock").exists()
    assert list(MountTable().under(str(workdir))) == []
    assert list(MountTable().under(engine[1])) == []
