"""Opt-in eviction of pods whose volume was repaired under them (``--evict-stale-pods``).

Real mounts and a real repair make the pods stale; the API server is a stand-in
over HTTPS (a self-signed CA made with openssl) that records what it is asked:
the Kubernetes one is exercised by tests/k8s.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from csi_driver.eviction import RETRY_SECONDS, ApiServer, StalePodEvictor
from mount_core.consumer import Consumer
from mount_core.health import HealthMonitor
from mount_core.spec import VolumeSpec
from tests.conftest import SAMPLE, HepvolEnv

SPEC = VolumeSpec(backend="cvmfs", repository=SAMPLE)
TOKEN = "service-account-token"


class FakeApi(ThreadingHTTPServer):
    """Records eviction requests; answers each pod with the status set for it (201 by default)."""

    def __init__(self, certificate: Path, key: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, object]] = []
        self.answers: dict[str, int] = {}
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "auth": self.headers["Authorization"], "body": body}
        )
        status = self.server.answers.get(self.path.split("/")[6], 201)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApi]:
    certificate, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = FakeApi(certificate, key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _publish(env: HepvolEnv, kind: str, name: str, info: dict[str, str]) -> None:
    target = env.targets / name
    env.manager().publish(SPEC, Consumer(kind, str(target), info=info), str(target))


def test_stale_pods_are_evicted_with_their_uid_and_asked_again_later(
    hepvol_env: HepvolEnv, api: FakeApi, tmp_path: Path
) -> None:
    _publish(hepvol_env, "csi", "csi-pod", {"pod": "physics/reader-0", "pod_uid": "1a-2b"})
    _publish(hepvol_env, "flex", "flex-pod", {"pod": "batch/flex-reader", "pod_uid": "3c-4d"})
    _publish(hepvol_env, "csi", "unnamed", {"pod_uid": "5e-6f"})  # no podInfoOnMount
    manager = hepvol_env.manager()
    for pid in hepvol_env.server_pids():
        os.kill(pid, signal.SIGKILL)
    assert HealthMonitor(manager).run_once()[SPEC.key].dead, "repaired under the pods"
    _publish(hepvol_env, "csi", "new-pod", {"pod": "physics/reader-1", "pod_uid": "7a-8b"})

    (tmp_path / "token").write_text(TOKEN + "\n")
    evictor = StalePodEvictor(
        manager, ApiServer(api.url, str(tmp_path / "token"), str(tmp_path / "ca.crt")), 1.0
    )
    api.answers["flex-reader"] = 429  # a PodDisruptionBudget says not now
    assert evictor.run_once(now=1000.0) == {"physics/reader-0": 201, "batch/flex-reader": 429}
    [csi, flex] = api.requests
    assert csi == {
        "path": "/api/v1/namespaces/physics/pods/reader-0/eviction",
        "auth": f"Bearer {TOKEN}",
        "body": {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "reader-0", "namespace": "physics"},
            "deleteOptions": {"preconditions": {"uid": "1a-2b"}},
        },
    }  # fmt: skip
    assert flex["path"] == "/api/v1/namespaces/batch/pods/flex-reader/eviction"
    assert evictor.run_once(now=1000.0 + RETRY_SECONDS / 2) == {}, "not asked again at once"
    again = evictor.run_once(now=1000.0 + RETRY_SECONDS)
    assert again == {"physics/reader-0": 201, "batch/flex-reader": 429}
    assert len(api.requests) == 4, "the unnamed and the new pod were never asked for"


def test_eviction_outside_a_cluster_is_refused_in_one_line(hepvol_env: HepvolEnv) -> None:
    environ = {k: v for k, v in hepvol_env.environ().items() if not k.startswith("KUBERNETES_")}
    result = subprocess.run(
        [sys.executable, "-m", "hepvol", "csi", "--mode", "node", "--node-id", "n",
         "--endpoint", f"unix://{hepvol_env.workdir}/csi.sock", "--evict-stale-pods"],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--evict-stale-pods needs the in-cluster API" in (
        result.stderr
    )
    assert not (hepvol_env.workdir / "csi.sock").exists()
