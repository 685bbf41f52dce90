"""The interceptor's error mapping, crash handling and secret stripping, on a real gRPC server."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from csi_driver.client import capability
from csi_driver.generated import csi_pb2, csi_pb2_grpc
from csi_driver.interceptor import CsiInterceptor, without_secrets
from mount_core import errors

RAISED: list[BaseException] = []


class Failing(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    """Probe raises whatever the test put in RAISED."""

    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> None:
        raise RAISED[-1]


@pytest.fixture
def stubs() -> Iterator[tuple[csi_pb2_grpc.IdentityStub, csi_pb2_grpc.ControllerStub]]:
    directory = tempfile.TemporaryDirectory(prefix="hepvol-csi-", dir="/tmp")
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[CsiInterceptor()])
    csi_pb2_grpc.add_IdentityServicer_to_server(Failing(), server)
    csi_pb2_grpc.add_ControllerServicer_to_server(csi_pb2_grpc.ControllerServicer(), server)
    server.add_insecure_port(f"unix://{directory.name}/s.sock")
    server.start()
    channel = grpc.insecure_channel(f"unix://{directory.name}/s.sock")
    try:
        yield csi_pb2_grpc.IdentityStub(channel), csi_pb2_grpc.ControllerStub(channel)
    finally:
        channel.close()
        server.stop(0).wait()
        directory.cleanup()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidSpec("tag", "x y", "use letters"), "INVALID_ARGUMENT"),
        (errors.InvalidTarget("bad target"), "INVALID_ARGUMENT"),
        (errors.NotFound("no such repository"), "NOT_FOUND"),
        (errors.Conflict("another volume there"), "ALREADY_EXISTS"),
        (errors.Busy("in progress"), "ABORTED"),
        (errors.MountTimeout("not ready in 30 s"), "UNAVAILABLE"),
        (errors.MountFailed("cvmfs2 said no"), "INTERNAL"),
        (errors.Unavailable("client not installed"), "FAILED_PRECONDITION"),
        (errors.StateError("disk full"), "INTERNAL"),
    ],
)
def test_core_errors_map_to_grpc_codes_with_their_message(stubs, error, code) -> None:  # type: ignore[no-untyped-def]
    RAISED.append(error)
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].Probe(csi_pb2.ProbeRequest())
    assert info.value.code().name == code
    assert info.value.details() == str(error)


def test_a_crash_is_internal_with_a_short_message_and_logged(  # type: ignore[no-untyped-def]
    stubs, caplog: pytest.LogCaptureFixture
) -> None:
    RAISED.append(KeyError("/etc/secret/path internals"))
    root = logging.getLogger("hepvol")
    propagate = root.propagate
    root.propagate = True  # let caplog see it even if logs.configure() ran before
    try:
        with (
            caplog.at_level(logging.ERROR, logger="hepvol.csi"),
            pytest.raises(grpc.RpcError) as info,
        ):
            stubs[0].Probe(csi_pb2.ProbeRequest())
    finally:
        root.propagate = propagate
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error in Probe (KeyError); see the driver log"
    assert any(r.exc_info for r in caplog.records), "the traceback goes to the log"


def test_rpcs_the_driver_does_not_offer_are_unimplemented(stubs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stubs[1].ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(volume_id="v"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_secret_fields_are_stripped_from_logged_requests() -> None:
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id="v", target_path="/t", volume_capability=capability(),
        secrets={"eostoken": "S3CRET"}, volume_context={"instance": "eospublic"},
    )  # fmt: skip
    shown = without_secrets(request)
    assert "secrets" not in shown and "S3CRET" not in str(shown)
    assert shown["volume_context"] == {"instance": "eospublic"}
    assert request.secrets["eostoken"] == "S3CRET", "the request itself is untouched"
    tokens = {"csi.storage.k8s.io/serviceAccount.tokens": '{"aud": {"token": "S3CRET"}}'}
    with_tokens = csi_pb2.NodePublishVolumeRequest(volume_id="v", volume_context=tokens)
    assert "S3CRET" not in str(without_secrets(with_tokens))
    create = csi_pb2.CreateVolumeRequest(name="n", secrets={"k": "S3CRET"})
    assert "S3CRET" not in str(without_secrets(create))
