"""A FlexVolume call killed while its FUSE server is still starting.

The server outlives the killed call (and the process waiting for it to be ready)
and finishes mounting a moment later. The
next call for the same repository must adopt that server, not start a second one
stacked on the same path (which leaked a mount and a server in the chaos run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, wait_for
from tests.faults.invariants import agreement_problems, fuse_servers, leftovers
from tests.integration.test_flexvolume import Kubelet, kubelet_options


@pytest.mark.parametrize("whole_group", [False, True], ids=["call", "call-and-starter"])
def test_a_server_whose_starter_was_killed_is_adopted_not_stacked(
    world: HepvolEnv, kubelet: Kubelet, whole_group: bool
) -> None:
    first, second = kubelet.pod_dir(uid="killed"), kubelet.pod_dir(uid="next")
    options = json.dumps(kubelet_options(repository=SAMPLE))
    call = subprocess.Popen([kubelet.driver(), "mount", str(first), options], env={},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    assert wait_for(lambda: fuse_servers(str(world.workdir)) != [], 10, 0.005)
    # The server is starting: not mounted, not ready yet. Killing the whole group
    # also kills the process waiting for its readiness (as kill -9 of a daemon's
    # process group does), so the server cannot report back.
    if whole_group:
        os.killpg(call.pid, signal.SIGKILL)
    else:
        call.send_signal(signal.SIGKILL)
    call.wait()

    assert kubelet.mount(second, kubelet_options(repository=SAMPLE))["status"] == "Success"
    time.sleep(1.0)  # time for a second server to have stacked itself, had one started
    backing = world.config.mount_root + f"/cvmfs-{SAMPLE}"
    stacked = [e for e in MountTable().entries if e.mount_point == backing]
    assert len(stacked) == 1, stacked
    assert len(fuse_servers(str(world.workdir))) == 1
    assert (second / "README").read_text() == "sample trunk\n"
    assert agreement_problems(world.config) == []

    assert kubelet.unmount(second)["status"] == "Success"
    assert kubelet.unmount(first)["status"] == "Success"
    assert leftovers(world.config, str(world.workdir)) == []
