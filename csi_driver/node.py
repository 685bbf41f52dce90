"""CSI Node service: publish and unpublish volumes at kubelet's target paths.

Each target is one core consumer ``csi:<target path>``; its info records the CSI
volume id and what kubelet told about the pod, so that NodeUnpublishVolume and
NodeGetVolumeStats work from the path alone, also after a restart.
"""

from __future__ import annotations

import os

import grpc

from csi_driver import access, volumes
from csi_driver.errors import CsiError, invalid, require
from csi_driver.generated import csi_pb2, csi_pb2_grpc
from mount_core.consumer import Consumer
from mount_core.errors import InvalidTarget, NotFound
from mount_core.manager import ConsumerRow, MountManager

_RPC = csi_pb2.NodeServiceCapability.RPC


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, manager: MountManager, backend: str, node_id: str) -> None:
        self.manager = manager
        self.backend = backend
        self.node_id = node_id

    def _published(self, volume_id: str, path: str) -> ConsumerRow | None:
        """The consumer of ``volume_id`` at ``path``, or None when it is not there."""
        try:
            row = self.manager.consumer_at(path)
        except InvalidTarget:
            return None
        if row is None or row.info.get("volume_id", volume_id) != volume_id:
            return None
        return row

    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = require(request.volume_id, "volume_id")
        target = require(request.target_path, "target_path")
        if not request.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        access.check(request.volume_capability)
        spec = volumes.spec_from_context(self.backend, request.volume_context, request.secrets)
        readonly = access.readonly(self.backend, request.volume_capability, request.readonly)
        existing = self.manager.consumer_at(target)
        if existing is not None and existing.info.get("volume_id") not in (None, volume_id):
            raise CsiError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"{target} already has volume {existing.info['volume_id']!r} published",
            )
        info = {
            "volume_id": volume_id,
            "ephemeral": volumes.is_ephemeral(request.volume_context),
            "kubernetes": volumes.kubernetes_info(request.volume_context),
            **volumes.pod_info(request.volume_context, target),
        }
        # A failed publish keeps nothing (target dir, consumer, fresh mount): the core
        # rolls it back, which is what inline ephemeral volumes need (no retry).
        self.manager.publish(spec, Consumer("csi", target, info=info), target, readonly=readonly)
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = require(request.volume_id, "volume_id")
        target = require(request.target_path, "target_path")
        existing = self.manager.consumer_at(target)
        if existing is not None and existing.info.get("volume_id") not in (None, volume_id):
            raise NotFound(
                f"volume {volume_id!r} is not published at {target} "
                f"(volume {existing.info['volume_id']!r} is)"
            )
        self.manager.unpublish(target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = require(request.volume_id, "volume_id")
        path = require(request.volume_path, "volume_path")
        row = self._published(volume_id, path)
        if row is None or row.target is None:
            raise NotFound(f"volume {volume_id!r} is not published at {path}")
        stats = self.manager.stats(row.target)
        usage = _usage(stats.usage) if stats.usage is not None else []
        message = stats.message
        if stats.abnormal:
            message = f"{stats.condition}: {message}" if message else str(stats.condition)
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=usage,
            volume_condition=csi_pb2.VolumeCondition(abnormal=stats.abnormal, message=message),
        )

    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        kinds = (_RPC.GET_VOLUME_STATS, _RPC.VOLUME_CONDITION)
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[csi_pb2.NodeServiceCapability(rpc=_RPC(type=t)) for t in kinds]
        )

    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id)


def _usage(stats: os.statvfs_result) -> list[csi_pb2.VolumeUsage]:
    block = stats.f_frsize or stats.f_bsize
    return [
        csi_pb2.VolumeUsage(
            unit=csi_pb2.VolumeUsage.BYTES,
            total=stats.f_blocks * block,
            available=stats.f_bavail * block,
            used=(stats.f_blocks - stats.f_bfree) * block,
        ),
        csi_pb2.VolumeUsage(
            unit=csi_pb2.VolumeUsage.INODES,
            total=stats.f_files,
            available=stats.f_favail,
            used=stats.f_files - stats.f_ffree,
        ),
    ]
