"""The standard gRPC health service (grpc.health.v1), answered from memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from csi_driver.errors import CsiError
from csi_driver.generated import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse


class HealthService(health_pb2_grpc.HealthServicer):
    """SERVING while the server runs, NOT_SERVING once it is stopping.

    The overall status is the empty service name; the CSI service names
    (``csi.v1.Identity``…) this server registered are known too.
    """

    def __init__(self, services: list[str]) -> None:
        self.services = {"", *services}
        self._serving = True
        self._changed = threading.Condition()

    def set_serving(self, serving: bool) -> None:
        with self._changed:
            self._serving = serving
            self._changed.notify_all()

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus:
        if service not in self.services:
            return Status.SERVICE_UNKNOWN
        return Status.SERVING if self._serving else Status.NOT_SERVING

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self.services:
            raise CsiError(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return Status(status=self._status(request.service))

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        last = None
        while context.is_active():
            current = self._status(request.service)
            if current != last:
                yield Status(status=current)
                last = current
            with self._changed:
                self._changed.wait(timeout=1.0)
