"""csi-sanity (kubernetes-csi/csi-test, pinned) against real ``hepvol csi`` servers.

Two runs on the local backend with the sample repository as the test volume
parameters: one server in ``all`` mode, then a ``node`` server with a separate
``controller`` server. Both must have zero failures, and the tests csi-sanity skips
must be exactly those listed, with a reason each, in ``csi-sanity-skips.txt``.
``make test`` installs the binary (``CSI_SANITY`` points at it).
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE, HepvolEnv
from tests.integration.test_csi_node import CsiProcess, start_csi

VERSION = "v5.6.0"
SKIPS = Path(__file__).with_name("csi-sanity-skips.txt")


def csi_sanity() -> str:
    candidates = [
        os.environ.get("CSI_SANITY", ""),
        str(REPO / ".tools" / "bin" / "csi-sanity"),  # make tools, with the pinned Go
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(f"csi-sanity {VERSION} not found; `make test` installs it (or set CSI_SANITY)")


def expected_skips(run: str) -> set[str]:
    names = set()
    for line in SKIPS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            runs, name, reason = (part.strip() for part in line.split(" | ", 2))
            assert reason, f"skip without a reason: {line}"
            if runs in ("both", run):
                names.add(name)
    return names


def run_sanity(env: HepvolEnv, tmp: Path, node: CsiProcess, controller: CsiProcess) -> None:
    params = tmp / "params.yaml"
    params.write_text(f"repository: {SAMPLE}\n")
    junit = tmp / "junit.xml"
    command = [
        csi_sanity(), f"--csi.endpoint={node.endpoint}",
        f"--csi.controllerendpoint={controller.endpoint}",
        f"--csi.mountdir={env.targets / 'sanity-mnt'}",
        f"--csi.stagingdir={env.targets / 'sanity-stage'}",
        f"--csi.testvolumeparameters={params}",
        f"--ginkgo.junit-report={junit}", "--ginkgo.no-color",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert junit.exists(), result.stdout[-4000:] + result.stderr[-2000:]
    failed, skipped, passed = [], set(), 0
    for case in ET.parse(junit).iter("testcase"):
        name = (case.get("name") or "").removeprefix("[It] ")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped.add(name)
        elif case.get("status") == "passed":
            passed += 1
    assert failed == [], "csi-sanity failures:\n" + result.stdout[-6000:]
    assert result.returncode == 0, result.stdout[-4000:]
    run = "split" if node is not controller else "all"
    expected = expected_skips(run)
    assert skipped - expected == set(), "skipped but not listed in csi-sanity-skips.txt"
    assert expected - skipped == set(), "listed as skipped but ran: update csi-sanity-skips.txt"
    assert passed >= 29, f"only {passed} tests passed"


def test_csi_sanity_all_mode(hepvol_env: HepvolEnv, tmp_path: Path) -> None:
    server = start_csi(hepvol_env, "--mode", "all", "--node-id", "sanity-node")
    csi = next(server)
    try:
        run_sanity(hepvol_env, tmp_path, csi, csi)
    finally:
        server.close()
    assert hepvol_env.manager().status() == [], "csi-sanity's cleanup left nothing behind"


def test_csi_sanity_node_and_separate_controller(hepvol_env: HepvolEnv, tmp_path: Path) -> None:
    node_server = start_csi(hepvol_env, "--mode", "node", "--node-id", "sanity-node")
    controller_server = start_csi(hepvol_env, "--mode", "controller")
    try:
        node = next(node_server)
        controller = next(controller_server)
        run_sanity(hepvol_env, tmp_path, node, controller)
    finally:
        node_server.close()
        controller_server.close()
    assert hepvol_env.manager().status() == []
