"""What the stand-in clients share: their control directory, call records, FUSE server.

Each stand-in is run through a small wrapper that a test writes (see
:mod:`tests.standins.world`), which sets ``HEPVOL_STANDIN`` to the test's control
directory. It holds:

* ``settings.json``: where the test's repositories, EOS trees and site configs are;
* ``calls.jsonl``: one record per invocation (tool, argv, the config it read);
* ``fail/<tool>``: when present, the tool fails like the real client after its
  checks, with the file's ``N - text`` (exit 32 for the CVMFS tools);
* ``run/``: pid files of the FUSE servers started, for cleanup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONTROL_ENV = "HEPVOL_STANDIN"


def control() -> Path:
    return Path(os.environ[CONTROL_ENV])


def settings() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((control() / "settings.json").read_text())
    return data


def record(tool: str, argv: list[str], **extra: Any) -> None:
    with open(control() / "calls.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"tool": tool, "argv": argv, **extra}) + "\n")


def forced_failure(tool: str) -> str | None:
    """The ``N - text`` a test asked ``tool`` to fail with, if any."""
    path = control() / "fail" / tool
    return path.read_text().strip() if path.exists() else None


def die(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def is_mounted(path: str, source: str | None = None) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.split(" ")
            sep = parts.index("-", 6)
            if parts[4] == path and (source is None or parts[sep + 2] == source):
                return True
    return False


def serve(source: str, mount_point: str, fsname: str, name: str) -> None:
    """Mount a read-only FUSE server on ``mount_point`` and leave it running.

    Like cvmfs2 and eosxd, the mount is made by this process's child before the
    command returns, in the caller's process group: under autofs that group is
    automount's, whose lookups inside the autofs root do not wait for automount
    itself (a server that left the group first would deadlock on its own mount).
    """
    run = control() / "run"
    run.mkdir(exist_ok=True)
    command = [
        settings()["python"], "-m", "mount_core.backends.localfs", "--foreground",
        "--fsname", fsname, "--subtype", "",
        "--pidfile", str(run / f"{name}.pid"),
        source, mount_point,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=settings()["repo"])
    with open(run / f"{name}.log", "ab") as log:
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, close_fds=True
        )
    deadline = time.monotonic() + 15
    while not is_mounted(mount_point, fsname):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            tail = (run / f"{name}.log").read_text(errors="replace").strip().splitlines()
            die(tail[-1] if tail else "fuse: failed to mount", 32)
        time.sleep(0.02)
