"""The one mapping from failures to gRPC status codes, used by the interceptor.

Servicers raise core errors (:class:`~mount_core.errors.HepvolError`) or, for
protocol-level problems such as a missing field, :class:`CsiError` with an explicit
code. Nothing else in the driver chooses a status code.
"""

from __future__ import annotations

import grpc

from mount_core import errors

# Why each code (CSI spec, "Error Scheme"):
# - InvalidSpec/InvalidTarget: the request itself is wrong; retrying it cannot help.
# - NotFound: the repository, instance or path does not exist ("Volume does not exist").
# - Conflict: another volume is published at the target ("published but incompatible").
# - Busy: another operation on the same volume holds its lock ("operation pending").
# - MountTimeout: the core has already rolled the attempt back, so nothing is in
#   flight; UNAVAILABLE makes the CO retry with back-off, whereas DEADLINE_EXCEEDED
#   would tell it the operation might still complete.
# - Unavailable/ConfigError/InUse: the node is not in a state to serve this until
#   someone changes it (client missing, bad configuration, volume still used).
# - MountFailed/StateError: the client or the state directory failed.
_CODES: tuple[tuple[type[errors.HepvolError], grpc.StatusCode], ...] = (
    (errors.InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidTarget, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Busy, grpc.StatusCode.ABORTED),
    (errors.MountTimeout, grpc.StatusCode.UNAVAILABLE),
    (errors.MountFailed, grpc.StatusCode.INTERNAL),
    (errors.Unavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InUse, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StateError, grpc.StatusCode.INTERNAL),
)


class CsiError(Exception):
    """A protocol-level refusal with its gRPC code (missing field, block access…)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def require(value: str, field: str) -> str:
    """``value`` if set; proto3 cannot tell an empty string from a missing one."""
    if not value:
        raise invalid(f"{field} is required")
    return value


#: Longest message a client gets; a request's 10 KB path is not echoed back whole.
MAX_MESSAGE = 1000


def readable(message: str) -> str:
    """``message`` as one printable line of bounded length (request values are escaped)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def status_of(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str, bool]:
    """(code, message, expected) for an exception raised by a servicer.

    ``expected`` is False for crashes: the caller logs their traceback, and the
    client only gets a short message (no internals, no secrets).
    """
    if isinstance(exc, CsiError):
        return exc.code, readable(str(exc)), True
    if isinstance(exc, errors.HepvolError):
        for cls, code in _CODES:
            if isinstance(exc, cls):
                return code, readable(str(exc)), True
        return grpc.StatusCode.INTERNAL, readable(str(exc)), True
    if isinstance(exc, NotImplementedError):
        # The generated base servicer's answer for RPCs this driver does not offer.
        return grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this driver", True
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} ({type(exc).__name__}); see the driver log",
        False,
    )
