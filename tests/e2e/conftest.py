"""The node image, built once per run for every test that needs it."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO
from tests.e2e.dockerd import Dockerd

NODE_IMAGE = "hepvol-node:local"


@pytest.fixture(scope="session")
def node_image(dockerd: Dockerd, request: pytest.FixtureRequest) -> str:
    """``images/local/build`` into the run's engine (the Debian base is cached in .tools/)."""
    result = subprocess.run([str(REPO / "images" / "local" / "build"), NODE_IMAGE],
                            env=dockerd.env(), capture_output=True, text=True, timeout=900,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"image build failed:\n{result.stdout}\n{result.stderr}"
    # Size and build time go to the terminal, past pytest's capture.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in result.stdout.splitlines():
            print(f"\n[images/local/build] {line}")
    return NODE_IMAGE
