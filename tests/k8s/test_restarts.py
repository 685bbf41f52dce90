"""Replacing the node plugin never breaks a running pod.

Reader pods (non-root, default mountPropagation) read a file through every kind
of volume, several times a second, while the node plugin is replaced every way
it is in production: its pods deleted, its hepvol container killed with SIGKILL,
the chart upgraded to a new image tag (a rolling update of every DaemonSet), and
kubelet restarted. Not one read may fail, no reader may restart, and after each
replacement a new pod must get the repository (never an empty directory).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SAMPLE
from tests.k8s.cluster import Cluster, wait_until
from tests.k8s.conftest import (
    EOS_HELLO,
    NAMESPACE,
    TAGS,
    daemonsets_ready,
    delete_pods,
    install_chart,
    pod_running,
    reads,
    start_reader,
)  # fmt: skip

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

READERS = {
    "read-inline": ({"csi": {"driver": "cvmfs.csi.cern.ch", "readOnly": True,
                             "volumeAttributes": {"repository": SAMPLE}}}, None),
    "read-flex": ({"flexVolume": {"driver": "cern/cvmfs", "readOnly": True,
                                  "options": {"repository": SAMPLE}}}, None),
    "read-eos": ({"csi": {"driver": "eos.csi.cern.ch", "readOnly": True,
                          "volumeAttributes": {"instance": "home", "path": "/"}}}, "hello.txt"),
}  # fmt: skip


def _node_pod_names(node: Cluster) -> set[str]:
    return {p["metadata"]["name"] for p in node.get("pods", "-n", NAMESPACE)["items"]}


def _delete_node_pods(node: Cluster) -> None:
    node.kubectl("delete", "pods", "-n", NAMESPACE, "--all", "--wait=true", "--timeout=120s",
                 timeout=150)  # fmt: skip


def _sigkill_node_daemons(node: Cluster) -> None:
    """SIGKILL the hepvol process of every node container (its init: the container dies)."""
    killed = 0
    for pid in node.node_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            any(a in (b"csi", b"watch") for a in argv)
            and b"--config=/etc/hepvol/config.toml" in argv
        ):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    assert killed == 3, f"killed {killed} node daemons, expected 3 (cvmfs, eos, flexvolume)"


def _restarted_containers(node: Cluster) -> int:
    return sum(
        s.get("restartCount", 0)
        for p in node.get("pods", "-n", NAMESPACE)["items"]
        for s in p["status"].get("containerStatuses") or []
    )


def test_readers_never_fail_while_the_node_plugin_is_replaced(node: Cluster) -> None:
    readers = {name: start_reader(node, name, volume, **({"file": f, "expect": EOS_HELLO} if f else {}))
               for name, (volume, f) in READERS.items()}  # fmt: skip
    pods_before = _node_pod_names(node)

    def sigkill() -> None:
        before = _restarted_containers(node)
        _sigkill_node_daemons(node)
        wait_until("kubelet to restart the killed containers",
                   lambda: _restarted_containers(node) >= before + 3, 120)  # fmt: skip

    replacements: list[tuple[str, Callable[[], None], str]] = [
        ("node pods deleted", lambda: _delete_node_pods(node), TAGS[0]),
        ("hepvol containers SIGKILLed", sigkill, TAGS[0]),
        ("chart upgraded to a new image tag", lambda: install_chart(node, TAGS[1]), TAGS[1]),
        ("kubelet restarted", node.restart_kubelet, TAGS[1]),
    ]
    for step, (what, replace, tag) in enumerate(replacements):
        started = time.monotonic()
        replace()
        wait_until(f"the node plugin back after: {what}", lambda t=tag: daemonsets_ready(node, t),
                   240)  # fmt: skip
        # A new pod after the replacement gets the repository, not an empty directory.
        fresh = f"fresh-{step}"
        start_reader(node, fresh, READERS["read-inline"][0])
        delete_pods(node, fresh)
        print(f"\n[k8s] {what}: node plugin back and a new pod served in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
    time.sleep(2)  # reads after the last replacement

    assert _node_pod_names(node).isdisjoint(pods_before), "the node pods were never replaced"
    total = 0
    for name, pod in readers.items():
        current = pod_running(node, name)
        assert current is not None, f"{name} is no longer running"
        assert current["metadata"]["uid"] == pod["metadata"]["uid"]
        assert current["status"]["containerStatuses"][0]["restartCount"] == 0, name
        ok, failed = reads(node, pod)
        print(f"[k8s] {name}: {ok} reads, {len(failed)} failed, over {len(replacements)} "
              "replacements of the node plugin")  # fmt: skip
        assert not failed, f"{name}: {len(failed)} failed reads, first: {failed[:3]}"
        assert ok >= 50, f"{name} read only {ok} times"
        total += ok
    print(f"[k8s] {total} reads in all, 0 failed")
    delete_pods(node, *readers)
