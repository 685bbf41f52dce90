"""The CSI part of ``make run``: a node server on the embedded backend and one NodePublishVolume.

:func:`start` runs ``hepvol csi --mode node`` as a child process on the demo's
world (its state dir, mount root, target root and local repositories), sends the
NodePublishVolume kubelet would send for a pod, and prints the request and what
the target shows. :meth:`CsiDemo.stop` unpublishes and stops the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from mount_core.config import Config

VOLUME_ID = "demo-volume"


@dataclass
class CsiDemo:
    """A running demo: the server process, its endpoint and the published target."""

    process: subprocess.Popen[bytes]
    endpoint: str
    target: str

    def stop(self) -> None:
        """NodeUnpublishVolume, then SIGTERM the server (it leaves nothing behind)."""
        from csi_driver.client import Client

        client = Client(self.endpoint)
        try:
            client.unpublish(VOLUME_ID, self.target)
            print(f"NodeUnpublishVolume {VOLUME_ID} {self.target}: OK", flush=True)
        finally:
            client.close()
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def start(config: Config, workdir: str, repository: str) -> CsiDemo:
    """Start the node server on ``config``'s world and publish ``repository`` for a pod."""
    from csi_driver.client import Client

    endpoint = f"unix://{os.path.join(workdir, 'csi.sock')}"
    command = [
        sys.executable, "-m", "hepvol",
        "--state-dir", config.state_dir, "--mount-root", config.mount_root,
        "--local-root", config.local.root, "--target-root", config.target_roots[0],
        "csi", "--driver", "cvmfs", "--mode", "node", "--node-id", "demo-node",
        "--endpoint", endpoint,
    ]  # fmt: skip
    with open(os.path.join(workdir, "csi.log"), "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    target = os.path.join(config.target_roots[0], "csi-pod", "volumes", VOLUME_ID)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    client = Client(endpoint)
    try:
        client.wait_ready()
        context = {"repository": repository, "csi.storage.k8s.io/pod.name": "demo-pod"}
        print(f"CSI node server (cvmfs.csi.cern.ch) on {endpoint}; log in {workdir}/csi.log")
        print(f"NodePublishVolume volume_id={VOLUME_ID} target_path={target} "
              f"volume_context={context}")  # fmt: skip
        client.publish(VOLUME_ID, target, context)
        print("  -> OK; the target shows: " + ", ".join(sorted(os.listdir(target))))
        stats = client.stats(VOLUME_ID, target)
        condition = "abnormal" if stats.volume_condition.abnormal else "normal"
        print(f"NodeGetVolumeStats -> volume condition {condition}", flush=True)
    except BaseException:
        process.send_signal(signal.SIGKILL)
        process.wait()
        raise
    finally:
        client.close()
    return CsiDemo(process, endpoint, target)
