"""The CSI Node service over gRPC against a real ``hepvol csi`` process and real mounts.

``start_csi`` (also used by the other CSI tests) runs the server as a child
process on a short socket path; its fixture kills it even when a test fails,
before ``hepvol_env`` detaches whatever is left mounted.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from csi_driver.client import Client, Mode, capability
from csi_driver.generated import csi_pb2
from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, wait_for

SAMPLE_CONTEXT = {"repository": SAMPLE}


@dataclass
class CsiProcess:
    """One ``hepvol csi`` server process and a client connected to it."""

    env: HepvolEnv
    args: list[str]
    socket_dir: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    client: Client = field(init=False)

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_dir}/csi.sock"

    def start(self, extra_env: dict[str, str] | None = None) -> CsiProcess:
        environ = {**self.env.environ(), **(extra_env or {})}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hepvol", "csi", "--endpoint", self.endpoint,
                 *self.args],
                env=environ, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.client = Client(self.endpoint)
        try:
            self.client.wait_ready(timeout=30)
        except Exception:
            self.stop(signal.SIGKILL)
            raise AssertionError("hepvol csi did not start:\n" + self.log.read_text()) from None
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        if getattr(self, "client", None) is not None:
            self.client.close()


def start_csi(
    env: HepvolEnv, *args: str, extra_env: dict[str, str] | None = None
) -> Iterator[CsiProcess]:
    """Generator for fixtures: a started server, stopped and cleaned up afterwards."""
    socket_dir = tempfile.mkdtemp(prefix="hepvol-csi-", dir="/tmp")
    server = CsiProcess(env, list(args), socket_dir, env.workdir / "csi.log")
    try:
        yield server.start(extra_env)
    finally:
        server.stop(signal.SIGKILL)
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
def csi(hepvol_env: HepvolEnv) -> Iterator[CsiProcess]:
    yield from start_csi(hepvol_env, "--mode", "all", "--node-id", "node-1")


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


def mounts_under(env: HepvolEnv) -> list[str]:
    return [e.mount_point for e in MountTable().under(str(env.workdir))]


def test_publish_is_read_only_and_unpublish_leaves_nothing(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    target = hepvol_env.targets / "pod-a" / "vol"
    target.parent.mkdir()
    # What csi-sanity and many claims send: a writer mode with readonly unset.
    for _ in range(3):
        csi.client.publish("vol-a", str(target), SAMPLE_CONTEXT, mode=Mode.SINGLE_NODE_WRITER)
    assert (target / "README").read_text() == "sample trunk\n"
    with pytest.raises(OSError) as info:
        (target / "new").write_text("x")
    assert info.value.errno == errno.EROFS
    stats = csi.client.stats("vol-a", str(target))
    assert not stats.volume_condition.abnormal
    units = {u.unit: u for u in stats.usage}
    assert set(units) == {csi_pb2.VolumeUsage.BYTES, csi_pb2.VolumeUsage.INODES}
    for _ in range(2):
        csi.client.unpublish("vol-a", str(target))
    assert not target.exists(), "the target directory the driver created is removed"
    assert target.parent.is_dir(), "kubelet's parent directory is kept"
    assert mounts_under(hepvol_env) == []


def test_missing_fields_are_invalid_argument(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    node = csi.client.node
    target = str(hepvol_env.targets / "t")
    cap = capability()
    cases = [
        (node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(target_path=target,
         volume_capability=cap), "volume_id is required"),
        (node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(volume_id="v",
         volume_capability=cap), "target_path is required"),
        (node.NodePublishVolume, csi_pb2.NodePublishVolumeRequest(volume_id="v",
         target_path=target), "volume_capability is required"),
        (node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(target_path=target),
         "volume_id is required"),
        (node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(volume_id="v"),
         "target_path is required"),
        (node.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest(volume_path=target),
         "volume_id is required"),
        (node.NodeGetVolumeStats, csi_pb2.NodeGetVolumeStatsRequest(volume_id="v"),
         "volume_path is required"),
    ]  # fmt: skip
    for call, request, message in cases:
        assert code_of(call, request) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert mounts_under(hepvol_env) == []


@pytest.mark.parametrize(
    ("context", "cap", "code", "message"),
    [
        ({"repository": SAMPLE, "colour": "red"}, capability(), "INVALID_ARGUMENT",
         "valid options are: repository, tag, hash, date, clientConfig"),
        ({"repository": "Not A Repo"}, capability(), "INVALID_ARGUMENT",
         "fully qualified repository name"),
        ({"repository": "missing.hepvol.org"}, capability(), "NOT_FOUND", "missing.hepvol.org"),
        (SAMPLE_CONTEXT, csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(),
            access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)), "INVALID_ARGUMENT",
         "block access is not supported"),
        (SAMPLE_CONTEXT, csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(
            mount_flags=["noatime"]), access_mode=Mode(mode=Mode.MULTI_NODE_READER_ONLY)),
         "INVALID_ARGUMENT", "'noatime' is not supported"),
        (SAMPLE_CONTEXT, csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume()),
         "INVALID_ARGUMENT", "access_mode is required"),
    ],
)  # fmt: skip
def test_bad_publish_is_refused_and_changes_nothing(
    csi: CsiProcess, hepvol_env: HepvolEnv, context, cap, code, message
) -> None:  # type: ignore[no-untyped-def]
    target = hepvol_env.targets / "pod"
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id="v", target_path=str(target), volume_capability=cap, volume_context=context
    )
    got_code, details = code_of(csi.client.node.NodePublishVolume, request)
    assert got_code.name == code
    assert message in details
    assert not target.exists()
    assert mounts_under(hepvol_env) == []
    assert os.listdir(hepvol_env.config.mount_root) == []


def test_target_outside_the_roots_is_refused(csi: CsiProcess, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    code, details = code_of(csi.client.publish, "v", str(target), SAMPLE_CONTEXT)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the allowed target roots" in details
    assert not target.exists()


def test_incompatible_republish_is_already_exists(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    target = str(hepvol_env.targets / "pod")
    csi.client.publish("vol-1", target, SAMPLE_CONTEXT)
    other_volume = code_of(csi.client.publish, "vol-2", target, SAMPLE_CONTEXT)
    assert other_volume[0] == grpc.StatusCode.ALREADY_EXISTS and "vol-1" in other_volume[1]
    other_spec = code_of(csi.client.publish, "vol-1", target, {"repository": SAMPLE, "tag": "v1"})
    assert other_spec[0] == grpc.StatusCode.ALREADY_EXISTS
    assert (Path(target) / "README").read_text() == "sample trunk\n", "the first volume stays"
    assert code_of(csi.client.unpublish, "vol-2", target)[0] == grpc.StatusCode.NOT_FOUND
    csi.client.unpublish("vol-1", target)
    assert mounts_under(hepvol_env) == []


def test_volume_stats_not_found_where_the_volume_is_not(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    target = str(hepvol_env.targets / "pod")
    csi.client.publish("vol-1", target, SAMPLE_CONTEXT)
    for volume_id, path in (("vol-1", str(hepvol_env.targets / "other")), ("vol-2", target),
                            ("vol-1", "some/relative/path")):  # fmt: skip
        assert code_of(csi.client.stats, volume_id, path)[0] == grpc.StatusCode.NOT_FOUND


def test_unpublish_of_nothing_is_ok(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    csi.client.unpublish("never", str(hepvol_env.targets / "never-published"))
    csi.client.unpublish("never", str(hepvol_env.targets / "gone" / "deeper"))


def test_whole_tree_without_repository(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    target = hepvol_env.targets / "tree"
    csi.client.publish("tree", str(target), {})
    assert (target / SAMPLE / "README").read_text() == "sample trunk\n"
    csi.client.unpublish("tree", str(target))
    assert mounts_under(hepvol_env) == []


def test_inline_ephemeral_records_the_pod_and_frees_all_on_failure(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    pod = {
        "csi.storage.k8s.io/ephemeral": "true",
        "csi.storage.k8s.io/pod.name": "analysis-0",
        "csi.storage.k8s.io/pod.namespace": "physics",
        "csi.storage.k8s.io/pod.uid": "1234",
        "csi.storage.k8s.io/serviceAccount.tokens": '{"aud": {"token": "T0KEN"}}',
    }
    target = hepvol_env.targets / "eph"
    csi.client.publish("csi-abc", str(target), {**SAMPLE_CONTEXT, **pod})
    [row] = hepvol_env.manager().ledger.consumers()
    assert row.info["ephemeral"] is True and row.info["volume_id"] == "csi-abc"
    assert row.info["kubernetes"]["pod.name"] == "analysis-0"
    assert "T0KEN" not in str(row.info), "service account tokens are not recorded"
    csi.client.unpublish("csi-abc", str(target))
    failed = hepvol_env.targets / "eph-failed"
    bad = {"repository": "missing.hepvol.org", **pod}
    assert code_of(csi.client.publish, "csi-def", str(failed), bad)[0] == grpc.StatusCode.NOT_FOUND
    assert not failed.exists()
    assert mounts_under(hepvol_env) == []
    assert hepvol_env.manager().status() == []


def test_failed_publish_after_mounting_frees_the_fresh_mount(hepvol_env: HepvolEnv) -> None:
    hepvol_env.make_repo("eospublic", {"eos/opendata/README": "open data\n"})
    server = start_csi(hepvol_env, "--mode", "node", "--node-id", "n", "--driver", "eos")
    csi = next(server)
    try:
        target = hepvol_env.targets / "eph"
        context = {"instance": "eospublic", "path": "/eos/missing",
                   "csi.storage.k8s.io/ephemeral": "true"}  # fmt: skip
        code, details = code_of(csi.client.publish, "csi-eph", str(target), context)
        assert code == grpc.StatusCode.NOT_FOUND and "eos/missing" in details
        assert not target.exists()
        assert mounts_under(hepvol_env) == [], "the instance mount made for it is gone"
        assert hepvol_env.manager().status() == []
        context["path"] = "/eos/opendata"
        csi.client.publish("csi-eph", str(target), context)
        assert (target / "README").read_text() == "open data\n"
        csi.client.unpublish("csi-eph", str(target))
    finally:
        server.close()


def test_hundred_volumes_published_concurrently(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    targets = [str(hepvol_env.targets / f"pod-{i}") for i in range(100)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda t: csi.client.publish(f"v-{t}", t, SAMPLE_CONTEXT), targets))
        assert all((Path(t) / "README").read_text() == "sample trunk\n" for t in targets)
        [backing] = hepvol_env.manager().status()
        assert len(backing.consumers) == 100, "one backing mount serves all hundred"
        list(pool.map(lambda t: csi.client.unpublish(f"v-{t}", t), targets))
    assert mounts_under(hepvol_env) == []
    assert hepvol_env.manager().status() == []


def test_kill_9_keeps_targets_and_restart_unpublishes_them(hepvol_env: HepvolEnv) -> None:
    targets = [hepvol_env.targets / f"pod-{i}" for i in range(3)]
    server = start_csi(hepvol_env, "--mode", "node", "--node-id", "node-1")
    csi = next(server)
    for target in targets:
        csi.client.publish(f"v-{target.name}", str(target), SAMPLE_CONTEXT)
    csi.stop(signal.SIGKILL)
    assert all((t / "README").read_text() == "sample trunk\n" for t in targets)
    server.close()
    restarted = start_csi(hepvol_env, "--mode", "node", "--node-id", "node-1")
    csi = next(restarted)
    try:
        assert all((t / "README").read_text() == "sample trunk\n" for t in targets)
        for target in targets:
            csi.client.unpublish(f"v-{target.name}", str(target))
            assert not target.exists()
        assert mounts_under(hepvol_env) == []
    finally:
        restarted.close()


def test_volume_condition_abnormal_while_dead_and_stale_after_repair(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    target = hepvol_env.targets / "pod"
    csi.client.publish("vol", str(target), SAMPLE_CONTEXT)
    assert not csi.client.stats("vol", str(target)).volume_condition.abnormal
    for pid in hepvol_env.server_pids():
        os.kill(pid, signal.SIGKILL)
    stats = csi.client.stats("vol", str(target))
    assert stats.volume_condition.abnormal
    assert stats.volume_condition.message
    # Repaired on the host, but a pod published before holds its copy of the dead bind.
    assert wait_for(lambda: csi.client.stats("vol", str(target)).volume_condition.message
                    .startswith("stale: "), timeout=20)  # fmt: skip
    assert (target / "README").read_text() == "sample trunk\n"
    stats = csi.client.stats("vol", str(target))
    assert stats.volume_condition.abnormal and stats.usage


def test_volume_stats_never_block_on_a_hung_fuse_server(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    target = hepvol_env.targets / "pod"
    csi.client.publish("vol", str(target), SAMPLE_CONTEXT)
    pids = hepvol_env.server_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        bound = hepvol_env.config.probe_timeout_seconds + 2
        for _ in range(3):
            stats = csi.client.stats("vol", str(target), timeout=bound)
            assert stats.volume_condition.abnormal
            assert "not responding" in stats.volume_condition.message
        assert csi.client.identity.Probe(csi_pb2.ProbeRequest(), timeout=1).ready.value
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: not csi.client.stats("vol", str(target)).volume_condition.abnormal,
                    timeout=20)  # fmt: skip


def test_make_run_demo_publishes_through_a_node_server(
    hepvol_env: HepvolEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    from csi_driver import demo

    running = demo.start(hepvol_env.config, str(hepvol_env.workdir), SAMPLE)
    try:
        assert (Path(running.target) / "README").read_text() == "sample trunk\n"
        shown = capsys.readouterr().out
        assert "NodePublishVolume volume_id=demo-volume" in shown and "README" in shown
    finally:
        running.stop()
    assert running.process.returncode == 0
    assert not Path(running.target).exists()
    assert mounts_under(hepvol_env) == []


def _client_cli(env: HepvolEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "csi_driver.client", *args], env=env.environ(),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_the_bundled_client_works_as_the_readme_says(
    csi: CsiProcess, hepvol_env: HepvolEnv
) -> None:
    target = (
        hepvol_env.targets / "pods" / "uid-1" / "csi" / "vol"
    )  # no parent yet, as in the README
    published = _client_cli(hepvol_env, "--endpoint", csi.endpoint, "publish", "vol", str(target),
                            f"repository={SAMPLE}")  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert (target / "README").read_text() == "sample trunk\n"
    unpublished = _client_cli(
        hepvol_env, "--endpoint", csi.endpoint, "unpublish", "vol", str(target)
    )
    assert unpublished.returncode == 0, unpublished.stderr
    for bad, message in (
        (["--endpoint", "tcp://127.0.0.1:1", "info"], "only unix:///path endpoints"),
        (["--endpoint", "/tmp/csi.sock", "info"], "only unix:///path endpoints"),
        (["--endpoint", csi.endpoint, "publish", "v", str(target), "repository"], "key=value"),
    ):
        refused = _client_cli(hepvol_env, *bad)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
