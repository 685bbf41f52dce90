"""The one error hierarchy of hepvol.

Every failure the core reports is a :class:`HepvolError`; each front maps these
classes to its protocol once (Docker ``Err``, FlexVolume ``Failure``, gRPC codes).
Messages are written for the person who typed the command: what was wrong and how
to fix it. They never contain secrets.
"""

from __future__ import annotations

_MAX_SHOWN = 60


def quote_value(value: object) -> str:
    """Quote a user-supplied value for an error message, escaped and truncated."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > _MAX_SHOWN
    escaped = text[:_MAX_SHOWN].encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}{"…" if cut else ""}"'


class HepvolError(Exception):
    """Base class: a failure with a message fit for the user."""


class InvalidSpec(HepvolError):
    """A volume option or name was not acceptable; nothing was changed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.allowed = allowed
        super().__init__(f"invalid {field} {quote_value(value)}: {allowed}")


class InvalidTarget(HepvolError):
    """A target path is malformed, outside the allowed roots, or a symlink."""


class NotFound(HepvolError):
    """The thing asked for does not exist (repository, volume, instance)."""


class Conflict(HepvolError):
    """Something else already occupies the place (a different volume at a target)."""


class InUse(HepvolError):
    """The volume still has consumers and cannot be removed."""


class Busy(HepvolError):
    """Another operation on the same volume holds its lock; try again."""


class LockLost(Busy):
    """A lock file was removed or replaced while held (the state dir was damaged), so
    another call may have run alongside: nothing more was done; try again."""


class MountFailed(HepvolError):
    """A backend could not mount or unmount; the message quotes the client's words."""


class MountTimeout(MountFailed):
    """A backend did not become ready within its bounded wait."""


class Unavailable(HepvolError):
    """A backend's client is not installed or not configured on this node."""


class StateError(HepvolError):
    """The state directory or ledger cannot be used (full disk, bad permissions)."""


class ConfigError(HepvolError):
    """The configuration file, environment or flags hold a bad value."""
