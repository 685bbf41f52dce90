"""The one interceptor wrapped around every CSI RPC.

For each call it writes one JSON log line (method, volume, duration, result code),
observes a per-method latency histogram, and turns exceptions into gRPC status
codes through :mod:`csi_driver.errors` (servicers raise; they never call
``context.abort`` themselves). Request bodies are only logged at DEBUG,
and then without the fields the CSI spec marks ``csi_secret``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message
from prometheus_client import Histogram

from csi_driver.errors import invalid, status_of
from csi_driver.generated import csi_pb2
from mount_core.logs import event

log = logging.getLogger("hepvol.csi")

RPC_SECONDS = Histogram(
    "hepvol_csi_rpc_seconds",
    "Latency of CSI RPCs by method and result code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)

#: RPCs that kubelet, sidecars and probes call all the time: logged at DEBUG when OK.
_QUIET = frozenset({
    "Probe", "GetPluginInfo", "GetPluginCapabilities", "NodeGetCapabilities",
    "ControllerGetCapabilities", "NodeGetInfo", "NodeGetVolumeStats", "Check",
})  # fmt: skip


def without_secrets(message: Message) -> dict[str, Any]:
    """The message as a dict, minus every field carrying the ``csi_secret`` option.

    Volume context entries named like tokens (kubelet's
    ``csi.storage.k8s.io/serviceAccount.tokens``) are redacted too.
    """
    clean = type(message)()
    clean.CopyFrom(message)
    _strip(clean)
    shown: dict[str, Any] = MessageToDict(clean, preserving_proto_field_name=True)
    context = shown.get("volume_context")
    if isinstance(context, dict):
        shown["volume_context"] = {
            k: "<redacted>" if "token" in k.lower() else v for k, v in context.items()
        }
    return shown


def _strip(message: Message) -> None:
    for field, value in message.ListFields():
        if field.GetOptions().Extensions[csi_pb2.csi_secret]:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in [value] if isinstance(value, Message) else value:
                _strip(item)


class _Undecodable:
    """What a request that is not a valid protobuf message of its method becomes."""


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc answers INTERNAL when deserializing fails; bad bytes are bad input.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _Undecodable()

    return parse


def _volume_of(request: Any) -> str | None:
    for name in ("volume_id", "name"):
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            return value
    return None


class CsiInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Logging, metrics and error mapping for every unary RPC."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code, message, expected = grpc.StatusCode.OK, "", True
            try:
                if log.isEnabledFor(logging.DEBUG):
                    event(log, "request", volume=_volume_of(request), level=logging.DEBUG,
                          method=method, request=without_secrets(request))  # fmt: skip
                if isinstance(request, _Undecodable):
                    raise invalid(f"the request is not a valid {method} message")
                return inner(request, context)
            except Exception as exc:
                code, message, expected = status_of(exc, method)
                if not expected:
                    log.exception(f"{method} crashed", extra={"volume": _volume_of(request),
                                                             "consumer": None})  # fmt: skip
                context.abort(code, message)
            finally:
                seconds = time.perf_counter() - start
                RPC_SECONDS.labels(method, code.name).observe(seconds)
                ok = code == grpc.StatusCode.OK
                level = logging.DEBUG if ok and method in _QUIET else (
                    logging.INFO if ok else logging.WARNING)  # fmt: skip
                target = getattr(request, "target_path", None) or None
                event(log, method if ok else f"{method}: {message}", volume=_volume_of(request),
                      consumer=f"csi:{target}" if target else None, level=level, method=method,
                      code=code.name, ms=round(seconds * 1000, 3), target=target)  # fmt: skip

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
