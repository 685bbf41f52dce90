"""CSI Controller service: virtual volumes for dynamic provisioning.

CVMFS repositories and EOS instances already exist, so creating a volume only
validates the StorageClass parameters and records them (a core named volume of
the front ``csi-<backend>``, :mod:`mount_core.volumes`); they come back as the volume context, which the Node
service turns into a spec. The volume id is the CO's volume name.
"""

from __future__ import annotations

import grpc

from csi_driver import access, volumes
from csi_driver.errors import CsiError, invalid, require
from csi_driver.generated import csi_pb2, csi_pb2_grpc
from mount_core.errors import NotFound
from mount_core.manager import MountManager
from mount_core.volumes import NamedVolumes, VolumeExists

_RPC = csi_pb2.ControllerServiceCapability.RPC
#: CSI names and ids are at most 128 bytes in Kubernetes; refuse longer ones early.
MAX_NAME = 128


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, manager: MountManager, backend: str) -> None:
        self.backend = backend
        self.volumes = NamedVolumes(manager, f"csi-{backend}")

    def CreateVolume(
        self, request: csi_pb2.CreateVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateVolumeResponse:
        name = require(request.name, "name")
        if len(name.encode()) > MAX_NAME:
            raise invalid(f"name is longer than {MAX_NAME} bytes")
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is required (at least one)")
        for index, capability in enumerate(request.volume_capabilities):
            access.check(capability, f"volume_capabilities[{index}]")
        if request.HasField("volume_content_source"):
            raise invalid("volume_content_source is not supported: volumes cannot be cloned")
        if request.mutable_parameters:
            raise invalid("mutable_parameters are not supported (no VolumeAttributesClass)")
        volumes.spec_from_context(self.backend, request.parameters)
        parameters = volumes.parameters(request.parameters)
        try:
            self.volumes.create(name, {"parameters": parameters})
        except VolumeExists as exists:
            raise CsiError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"volume {name!r} already exists with different parameters "
                f"({exists.existing.record.get('parameters')}); delete it or use another name",
            ) from None
        return csi_pb2.CreateVolumeResponse(
            volume=csi_pb2.Volume(volume_id=name, capacity_bytes=0, volume_context=parameters)
        )

    def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteVolumeResponse:
        volume_id = require(request.volume_id, "volume_id")
        self.volumes.remove(volume_id)
        return csi_pb2.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is required (at least one)")
        record = self.volumes.get(volume_id)
        context_keys = volumes.parameters(request.volume_context)
        if record is None and not context_keys:
            raise NotFound(f"volume {volume_id!r} does not exist (not created by this controller "
                           "and no volume context given)")  # fmt: skip
        stored = record.record.get("parameters", {}) if record is not None else {}
        volumes.spec_from_context(self.backend, context_keys or stored)
        notes = []
        for index, capability in enumerate(request.volume_capabilities):
            try:
                access.check(capability, f"volume_capabilities[{index}]")
            except CsiError as refused:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(message=str(refused))
            notes.append(access.note(self.backend, capability))
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        message = "; ".join(sorted({n for n in notes if n}))
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed, message=message)

    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        capability = csi_pb2.ControllerServiceCapability(rpc=_RPC(type=_RPC.CREATE_DELETE_VOLUME))
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[capability])
