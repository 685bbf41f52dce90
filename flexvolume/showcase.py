"""Show the FlexVolume driver working, for ``make run``: replay one pod as kubelet would.

The demo calls :func:`show` with its own configuration: the drivers are
installed into ``<workdir>/plugins`` with a config file describing that world,
then a pod's volume dir is created (0750) under the first target root and the
installed ``cern/cvmfs`` driver is run as separate processes with a clean
environment: ``init``, ``mount``, a read through the pod dir, ``unmount``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

from flexvolume import install
from mount_core.config import Config

POD_UID = "4b1d7e2a-0000-4000-8000-00000000d3e0"


def write_config(config: Config, path: str) -> None:
    """A config file for the drivers that describes ``config``'s world."""
    roots = ", ".join(json.dumps(root) for root in config.target_roots)
    with open(path, "w") as handle:
        handle.write(
            f"state_dir = {json.dumps(config.state_dir)}\n"
            f"mount_root = {json.dumps(config.mount_root)}\n"
            f"target_roots = [{roots}]\n"
            f"[local]\nroot = {json.dumps(config.local.root)}\n"
            f"[cvmfs]\nclient = {json.dumps(config.cvmfs.client)}\n"
        )


def _call(driver: str, *args: str) -> dict[str, object]:
    shown = " ".join("'" + a[:48] + "…'" if a.startswith("{") else a for a in args)
    print(f"$ {driver} {shown}")
    result = subprocess.run([driver, *args], env={}, capture_output=True, text=True,
                            check=False, timeout=120)  # fmt: skip
    print("  " + result.stdout.strip())
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def show(
    config: Config,
    workdir: str,
    status: Callable[[], str],
    repository: str = "sample.hepvol.org",
) -> bool:
    """Replay a pod using ``repository`` through the installed driver; True if all went well.

    ``status`` renders ``hepvol status`` while the pod holds the volume (the app's
    rendering: a front does not draw status tables).
    """
    config_path = os.path.join(workdir, "flexvolume-config.toml")
    write_config(config, config_path)
    plugins = os.path.join(workdir, "plugins")
    install.install(plugins, config_path)
    driver = install.driver_path(plugins, "cvmfs")
    pod = os.path.join(config.target_roots[0], "pods", POD_UID, "volumes", "cern~cvmfs", "sw")
    os.makedirs(os.path.dirname(pod), exist_ok=True)
    os.mkdir(pod, 0o750)
    options = {
        "repository": repository,
        "kubernetes.io/fsType": "",
        "kubernetes.io/readwrite": "ro",
        "kubernetes.io/pvOrVolumeName": "sw",
        "kubernetes.io/pod.name": "analysis",
        "kubernetes.io/pod.namespace": "demo",
        "kubernetes.io/pod.uid": POD_UID,
        "kubernetes.io/serviceAccount.name": "default",
    }
    ok = False
    try:
        ok = _call(driver, "init")["status"] == "Success"
        ok = _call(driver, "mount", pod, json.dumps(options))["status"] == "Success" and ok
        if ok:
            print(f"$ ls {pod}\n  " + "  ".join(sorted(os.listdir(pod))))
            print("$ hepvol status\n" + status())
    finally:
        ok = _call(driver, "unmount", pod)["status"] == "Success" and ok
        os.rmdir(pod)  # as kubelet does after unmount
        install.uninstall(plugins)
    return ok
