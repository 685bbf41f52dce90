"""The driver's last guard: whatever escapes a call, kubelet still reads one Failure line.

The call runs in a child process, as kubelet runs it (fds 1 and 2 are the pipes
it reads), with an internal error planted that the error handling itself trips
over: an exception whose message cannot be rendered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flexvolume

CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from flexvolume import driver

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no message either")

def run(self, argv):
    raise Unprintable()

driver.Call.run = run
os._exit(driver.main(sys.argv[1:], "cvmfs", None))
"""


def test_an_error_while_reporting_an_error_still_prints_one_failure_line() -> None:
    root = str(Path(next(iter(flexvolume.__path__))).parent)
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHILD.format(root=root), "mount", "..", "{}"],
        env={}, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.stderr == b""
    [line] = result.stdout.decode().splitlines()
    assert json.loads(line)["status"] == "Failure"
    assert result.returncode == 1
