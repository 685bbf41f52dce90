"""CSI Identity service: who the plugin is, what it serves, whether it is ready."""

from __future__ import annotations

import threading
from importlib import metadata

import grpc
from google.protobuf.wrappers_pb2 import BoolValue

from csi_driver.generated import csi_pb2, csi_pb2_grpc


def package_version() -> str:
    try:
        return metadata.version("hepvol")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class IdentityService(csi_pb2_grpc.IdentityServicer):
    """Answers from memory only: Probe never touches a mount (liveness probes time out in 1 s)."""

    def __init__(self, name: str, backend: str, *, controller: bool) -> None:
        self.name = name
        self.backend = backend
        self.controller = controller
        #: Set once start-up (reconcile) is done and the services are registered.
        self.ready = threading.Event()

    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(
            name=self.name, vendor_version=package_version(), manifest={"backend": self.backend}
        )

    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        capabilities = []
        if self.controller:
            service = csi_pb2.PluginCapability.Service(
                type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
            )
            capabilities.append(csi_pb2.PluginCapability(service=service))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=capabilities)

    def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=BoolValue(value=self.ready.is_set()))
