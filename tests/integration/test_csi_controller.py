"""CSI Identity and Controller services, the health service, logs and metrics, over gRPC."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from csi_driver.client import Mode, capability
from csi_driver.generated import csi_pb2, health_pb2, health_pb2_grpc
from tests.conftest import SAMPLE, HepvolEnv
from tests.integration.test_csi_node import CsiProcess, code_of, start_csi

PARAMS = {"repository": SAMPLE}


@pytest.fixture
def controller(hepvol_env: HepvolEnv) -> Iterator[CsiProcess]:
    yield from start_csi(hepvol_env, "--mode", "controller")


def create(server: CsiProcess, name: str, params: dict[str, str], *caps: int):  # type: ignore[no-untyped-def]
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        parameters=params,
        volume_capabilities=[capability(m) for m in caps or (Mode.MULTI_NODE_READER_ONLY,)],
    )
    return server.client.controller.CreateVolume(request)


def test_identity_reports_name_version_and_only_served_services(hepvol_env: HepvolEnv) -> None:
    servers = {mode: start_csi(hepvol_env, "--mode", mode, "--node-id", "n", "--driver", "eos")
               for mode in ("node", "controller")}  # fmt: skip
    try:
        for mode, server in servers.items():
            csi = next(server)
            info = csi.client.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
            assert info.name == "eos.csi.cern.ch"
            assert info.vendor_version == "0.1.0"
            caps = csi.client.identity.GetPluginCapabilities(
                csi_pb2.GetPluginCapabilitiesRequest()
            ).capabilities
            served = [c.service.type for c in caps]
            expected = [csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE]
            assert served == (expected if mode == "controller" else [])
            assert csi.client.identity.Probe(csi_pb2.ProbeRequest()).ready.value
            health = health_pb2_grpc.HealthStub(csi.client.channel)
            answer = health.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service="csi.v1.Identity"))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            missing = "csi.v1.Node" if mode == "controller" else "csi.v1.Controller"
            with pytest.raises(grpc.RpcError) as info_:
                health.Check(health_pb2.HealthCheckRequest(service=missing))
            assert info_.value.code() == grpc.StatusCode.NOT_FOUND
            if mode == "controller":
                unserved = code_of(csi.client.node.NodeGetInfo, csi_pb2.NodeGetInfoRequest())
            else:
                unserved = code_of(csi.client.controller.ControllerGetCapabilities,
                                   csi_pb2.ControllerGetCapabilitiesRequest())  # fmt: skip
            assert unserved[0] == grpc.StatusCode.UNIMPLEMENTED
    finally:
        for server in servers.values():
            server.close()


def test_create_volume_is_idempotent_and_returns_parameters(controller: CsiProcess) -> None:
    first = create(controller, "pvc-1", PARAMS, Mode.SINGLE_NODE_WRITER)
    again = create(controller, "pvc-1", PARAMS, Mode.SINGLE_NODE_WRITER)
    assert first.volume.volume_id == again.volume.volume_id == "pvc-1"
    assert dict(first.volume.volume_context) == PARAMS
    code, details = code_of(create, controller, "pvc-1", {"repository": SAMPLE, "tag": "v1"})
    assert code == grpc.StatusCode.ALREADY_EXISTS and "different parameters" in details
    rows = controller.env.manager().ledger.volumes("csi-cvmfs")
    assert [(r.name, r.spec["parameters"]) for r in rows] == [("pvc-1", PARAMS)]


@pytest.mark.parametrize(
    ("name", "params", "caps", "message"),
    [
        ("", PARAMS, [capability()], "name is required"),
        ("pvc", PARAMS, [], "volume_capabilities is required"),
        ("pvc", {"repository": SAMPLE, "size": "1Gi"}, [capability()], "valid options are"),
        ("pvc", {"tag": "v1"}, [capability()], "repository"),
        ("pvc", PARAMS, [csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
         access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))], "block access is not supported"),
    ],
)  # fmt: skip
def test_create_volume_refuses_bad_requests(controller: CsiProcess, name, params, caps,
                                            message) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    request = csi_pb2.CreateVolumeRequest(name=name, parameters=params, volume_capabilities=caps)
    code, details = code_of(controller.client.controller.CreateVolume, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert controller.env.manager().ledger.volumes("csi-cvmfs") == []


def test_delete_volume_is_ok_for_absent_volumes(controller: CsiProcess) -> None:
    create(controller, "pvc-1", PARAMS)
    for _ in range(2):
        controller.client.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-1"))
    assert controller.env.manager().ledger.volumes("csi-cvmfs") == []
    request = csi_pb2.DeleteVolumeRequest()
    assert code_of(controller.client.controller.DeleteVolume, request)[0].name == "INVALID_ARGUMENT"


def test_validate_volume_capabilities(controller: CsiProcess) -> None:
    create(controller, "pvc-1", PARAMS)
    validate = controller.client.controller.ValidateVolumeCapabilities
    reader = validate(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="pvc-1", volume_capabilities=[capability(Mode.MULTI_NODE_READER_ONLY)]))  # fmt: skip
    assert reader.HasField("confirmed") and reader.message == ""
    writer = validate(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="pvc-1", volume_capabilities=[capability(Mode.SINGLE_NODE_WRITER)]))  # fmt: skip
    assert writer.HasField("confirmed") and "published read-only" in writer.message
    block = csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                     access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))  # fmt: skip
    refused = validate(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="pvc-1", volume_capabilities=[block]))  # fmt: skip
    assert not refused.HasField("confirmed") and "block" in refused.message
    static = validate(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="static-pv", volume_context=PARAMS, volume_capabilities=[capability()]))  # fmt: skip
    assert static.HasField("confirmed")
    unknown = csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="nope", volume_capabilities=[capability()])  # fmt: skip
    assert code_of(validate, unknown)[0] == grpc.StatusCode.NOT_FOUND


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_log_lines_and_metrics_never_show_secrets(hepvol_env: HepvolEnv) -> None:
    hepvol_env.make_repo("eospublic", {"eos/opendata/README": "open data\n"})
    port = _free_port()
    server = start_csi(
        hepvol_env, "--mode", "node", "--node-id", "n", "--driver", "eos",
        "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
        extra_env={"HEPVOL_LOG_LEVEL": "DEBUG"},
    )  # fmt: skip
    csi = next(server)
    try:
        target = hepvol_env.targets / "pod"
        context = {"instance": "eospublic", "path": "/eos/opendata"}
        csi.client.publish("eos-vol", str(target), context, secrets={"eostoken": "S3CRET-VALUE"})
        assert (target / "README").read_text() == "open data\n"
        wrong = code_of(csi.client.publish, "x", str(hepvol_env.targets / "p2"), context,
                        secrets={"password": "S3CRET-VALUE"})  # fmt: skip
        assert wrong[0] == grpc.StatusCode.INVALID_ARGUMENT and "S3CRET" not in wrong[1]
        csi.client.unpublish("eos-vol", str(target))
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'hepvol_csi_rpc_seconds_count{code="OK",method="NodePublishVolume"} 1.0' in scraped
        assert b"hepvol_operation_seconds" in scraped
    finally:
        server.close()
    text = csi.log.read_text()
    assert "S3CRET" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    [published] = [e for e in lines if e.get("method") == "NodePublishVolume"
                   and e.get("code") == "OK"]  # fmt: skip
    assert published["volume"] == "eos-vol" and published["ms"] > 0
    [request] = [e for e in lines if e["msg"] == "request" and e.get("volume") == "eos-vol"
                 and e["method"] == "NodePublishVolume"]  # fmt: skip
    assert "secrets" not in request["request"]
    assert request["request"]["volume_context"] == context


def test_a_second_server_does_not_steal_a_live_socket(controller: CsiProcess) -> None:
    from tests.conftest import hepvol_cli

    result = hepvol_cli(controller.env, "csi", "--mode", "controller", "--endpoint",
                        controller.endpoint)  # fmt: skip
    assert result.returncode == 2
    assert f"{controller.endpoint[len('unix://') :]}: another process (pid" in result.stderr
    assert "is serving it; stop it first" in result.stderr
    assert controller.client.identity.Probe(csi_pb2.ProbeRequest()).ready.value


def test_socket_is_private_and_bad_flags_are_refused(controller: CsiProcess) -> None:
    from tests.conftest import hepvol_cli

    socket_file = controller.endpoint.removeprefix("unix://")
    assert os.stat(socket_file).st_mode & 0o077 == 0, "only root may talk to the driver"
    for args, message in (
        (["--name", "not a name"], "a CSI driver name is"),
        (["--mode", "node", "--endpoint", "unix:///tmp/x.sock"], "--node-id"),
        (["--mode", "controller", "--endpoint", "tcp://0.0.0.0:10000"], "only unix:///path"),
    ):
        result = hepvol_cli(controller.env, "csi", *args)
        assert result.returncode == 2 and message in result.stderr
