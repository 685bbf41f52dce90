"""A small CSI client: what kubelet would send, for demos, tests and benchmarks.

``python -m csi_driver.client --endpoint unix:///csi/csi.sock publish VOLUME_ID TARGET
repository=sample.hepvol.org`` sends one NodePublishVolume (and ``unpublish``,
``stats``, ``info`` the other calls); each prints the answer as JSON. Like kubelet,
``publish`` creates the target's parent directory; the driver creates the target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from csi_driver.generated import csi_pb2, csi_pb2_grpc

Mode = csi_pb2.VolumeCapability.AccessMode


def capability(mode: Mode.Mode = Mode.MULTI_NODE_READER_ONLY) -> csi_pb2.VolumeCapability:
    """A mount capability with ``mode`` (what kubelet sends for a filesystem volume)."""
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=Mode(mode=mode)
    )


class Client:
    """Stubs of the three CSI services over one channel."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until Probe answers ready (the server finished start-up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.identity.Probe(csi_pb2.ProbeRequest(), timeout=1).ready.value:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError("the CSI server did not become ready")
            time.sleep(0.05)

    def publish(
        self,
        volume_id: str,
        target: str,
        context: Mapping[str, str],
        *,
        mode: Mode.Mode = Mode.MULTI_NODE_READER_ONLY,
        readonly: bool = False,
        secrets: Mapping[str, str] | None = None,
    ) -> csi_pb2.NodePublishVolumeResponse:
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id, target_path=target, volume_capability=capability(mode),
            readonly=readonly, volume_context=dict(context), secrets=dict(secrets or {}),
        )  # fmt: skip
        response: csi_pb2.NodePublishVolumeResponse = self.node.NodePublishVolume(request)
        return response

    def unpublish(self, volume_id: str, target: str) -> csi_pb2.NodeUnpublishVolumeResponse:
        request = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
        response: csi_pb2.NodeUnpublishVolumeResponse = self.node.NodeUnpublishVolume(request)
        return response

    def stats(
        self, volume_id: str, path: str, timeout: float | None = None
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        request = csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)
        response: csi_pb2.NodeGetVolumeStatsResponse = self.node.NodeGetVolumeStats(
            request, timeout=timeout
        )
        return response


def _show(message: Message) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csi_driver.client", description=__doc__)
    parser.add_argument("--endpoint", default="unix:///csi/csi.sock")
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish", help="NodePublishVolume")
    publish.add_argument("volume_id")
    publish.add_argument("target")
    publish.add_argument("context", nargs="*", help="volume context as key=value")
    for name, text in (("unpublish", "NodeUnpublishVolume"), ("stats", "NodeGetVolumeStats")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("volume_id")
        sub.add_argument("target")
    commands.add_parser("info", help="GetPluginInfo and NodeGetInfo")
    args = parser.parse_args(argv)
    from csi_driver.server import socket_path
    from mount_core.errors import ConfigError

    try:
        socket_path(args.endpoint)  # the server's own rule: unix:///path only
    except ConfigError as exc:
        parser.error(str(exc))
    if args.command == "publish" and not all("=" in item for item in args.context):
        parser.error("volume context: give key=value pairs, e.g. repository=sample.hepvol.org")
    client = Client(args.endpoint)
    try:
        if args.command == "publish":
            context = dict(item.split("=", 1) for item in args.context)
            # As kubelet does: it creates the target's parent, the driver the target.
            os.makedirs(os.path.dirname(os.path.abspath(args.target)), exist_ok=True)
            _show(client.publish(args.volume_id, args.target, context))
        elif args.command == "unpublish":
            _show(client.unpublish(args.volume_id, args.target))
        elif args.command == "stats":
            _show(client.stats(args.volume_id, args.target))
        else:
            _show(client.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest()))
            _show(client.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()))
    except grpc.RpcError as exc:
        print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
