"""Fuzzing the CSI server over gRPC: random requests on every RPC, and raw bytes on the wire.

A real ``hepvol csi --mode all`` serves a private world. Requests are built from
the protobuf descriptors, so every field of every unary RPC of csi.v1 gets
random, hostile or (sometimes) valid values; a second test posts random bytes
to every method path through a channel without serializers. Each answer must be
OK or a status code the CSI spec allows for bad input (never INTERNAL or
UNKNOWN), with a readable, bounded message; the server must keep answering
Probe, and nothing may appear outside the configured roots.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st

from csi_driver.generated import csi_pb2
from tests.conftest import SAMPLE, HepvolEnv
from tests.fuzz.conftest import (
    CANARIES,
    PLANTED_SECRET,
    Budget,
    WorldSnapshot,
    assert_readable,
    hostile_text,
    names,
)
from tests.integration.test_csi_node import CsiProcess, start_csi

#: Every unary method of csi.v1: (path, request descriptor).
METHODS = [
    (f"/{service.full_name}/{method.name}", method.input_type)
    for service in csi_pb2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if not (method.client_streaming or method.server_streaming)
]
#: Bad input gets one of these; INTERNAL and UNKNOWN mean the driver broke.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}
CONTEXT_KEYS = ("repository", "tag", "hash", "date", "clientConfig", "instance", "path",
                "csi.storage.k8s.io/pod.name", "csi.storage.k8s.io/ephemeral")  # fmt: skip
SECRET_KEYS = ("krb5", "oauth2", "eostoken")
PATH_FIELDS = {"target_path", "staging_target_path", "volume_path", "staging_path"}
_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
}


class World:
    """The places a request may name: a target root with a symlink out, and outside dirs."""

    def __init__(self, env: HepvolEnv) -> None:
        self.targets = env.targets
        self.outside = env.workdir / "outside"
        self.outside.mkdir()
        (self.targets / "pod").mkdir()
        (self.targets / "link").symlink_to(self.outside)
        (self.targets / "linkvol").symlink_to(self.outside)

    def paths(self) -> st.SearchStrategy[str]:
        valid = [f"{self.targets}/pod/vol", f"{self.targets}/pod/vol2", f"{self.targets}/new"]
        hostile = [f"{self.targets}/link/vol", f"{self.targets}/linkvol", f"{self.outside}/vol",
                   f"{self.targets}/pod/../../outside/vol", f"{self.targets}", *CANARIES]  # fmt: skip
        return st.one_of(
            st.sampled_from(valid + hostile),
            hostile_text(),
            st.builds(lambda s: f"{self.targets}/pod/{s}", hostile_text()),
        )


def _scalar(field: FieldDescriptor, world: World) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name in PATH_FIELDS:
            return world.paths()
        return st.one_of(names(), st.sampled_from(("vol-a", "vol-b")))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-5, 100))
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    low, high = _INTS.get(field.type, (0, 2**31 - 1))
    return st.integers(low, high)


def _map(field: FieldDescriptor) -> st.SearchStrategy[dict[str, str]]:
    if field.name == "secrets":  # only secret fields carry the planted secret
        known, planted = SECRET_KEYS, (PLANTED_SECRET,)
    else:
        known, planted = CONTEXT_KEYS, ()
    keys = st.one_of(st.sampled_from(known), hostile_text())
    values = st.one_of(st.sampled_from((SAMPLE, f"{SAMPLE}@v1", "v1", *planted)), names())
    return st.dictionaries(keys, values, max_size=4)


@st.composite
def requests(draw: st.DrawFn, descriptor: Descriptor, world: World, depth: int = 3) -> Message:
    """A message of type ``descriptor`` with a random subset of its fields set at random."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        value = getattr(message, field.name)
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            if sub.fields_by_name["value"].message_type is None:
                value.update(draw(_map(field)))
        elif sub is not None and depth > 0:
            count = draw(st.integers(0, 2)) if field.is_repeated else None
            for _ in range(count if count is not None else 1):
                item = value.add() if count is not None else value
                item.CopyFrom(draw(requests(sub, world, depth - 1)))
        elif sub is None and field.is_repeated:
            value.extend(draw(st.lists(_scalar(field, world), max_size=3)))
        elif sub is None:
            setattr(message, field.name, draw(_scalar(field, world)))
    return message


@pytest.fixture
def csi(hepvol_env: HepvolEnv) -> Iterator[CsiProcess]:
    yield from start_csi(hepvol_env, "--mode", "all", "--node-id", "node-1")


def _identity(data: bytes) -> bytes:
    return data


def check_status(csi: CsiProcess, snapshot: WorldSnapshot, error: grpc.RpcError | None) -> None:
    if error is not None:
        assert error.code() in ALLOWED, (error.code(), error.details())
        assert_readable(error.details() or "", limit=1200)
    assert csi.client.identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
    snapshot.check()


def call(csi: CsiProcess, path: str, payload: bytes) -> grpc.RpcError | None:
    method = csi.client.channel.unary_unary(
        path, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        method(payload, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, f"{path} hung"
        return exc
    return None


@pytest.mark.slow
def test_random_requests_on_every_rpc(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    world = World(hepvol_env)
    snapshot = WorldSnapshot.take(hepvol_env)
    cases = st.sampled_from(METHODS).flatmap(
        lambda m: st.tuples(st.just(m[0]), requests(m[1], world))
    )

    budget = Budget(ci=400)

    @budget.settings
    @given(case=cases)
    def one(case: tuple[str, Message]) -> None:
        budget.ran_one()
        path, request = case
        check_status(csi, snapshot, call(csi, path, request.SerializeToString()))

    one()
    budget.check()
    for target in (world.outside, *CANARIES):
        assert not os.path.ismount(target)
    assert os.listdir(world.outside) == [], "nothing is created through the symlinks"
    snapshot.check_ledger_matches_targets()


@pytest.mark.slow
def test_raw_bytes_on_the_wire(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    snapshot = WorldSnapshot.take(hepvol_env)
    paths = [path for path, _ in METHODS] + ["/csi.v1.Node/NoSuchMethod", "/not.a.Service/X"]

    budget = Budget(ci=200)

    @budget.settings
    @given(path=st.sampled_from(paths), payload=st.binary(max_size=512))
    def one(path: str, payload: bytes) -> None:
        budget.ran_one()
        check_status(csi, snapshot, call(csi, path, payload))

    one()
    budget.check()
    snapshot.check_ledger_matches_targets()


def test_fuzzing_reaches_real_publishes(csi: CsiProcess, hepvol_env: HepvolEnv) -> None:
    """The request builder can produce a valid publish (else the fuzzing proves little)."""
    world = World(hepvol_env)
    target = f"{Path(world.targets)}/pod/vol"
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-a", target_path=target, volume_context={"repository": SAMPLE},
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=3)),
    )  # fmt: skip
    assert call(csi, "/csi.v1.Node/NodePublishVolume", request.SerializeToString()) is None
    assert Path(target, "README").read_text() == "sample trunk\n"
    assert call(csi, "/csi.v1.Node/NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="vol-a", target_path=target).SerializeToString()) is None  # fmt: skip
