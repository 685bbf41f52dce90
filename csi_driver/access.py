"""Volume capabilities: what access this driver accepts and how it publishes it.

Policy (also in the README): hepvol volumes are file systems, so block access is
refused (INVALID_ARGUMENT). Every access mode is accepted for mount access, because
a read-only file system serves a writer claim safely: CVMFS volumes (and every
volume of the embedded ``local`` backend) are always published read-only, and a
writer sees EROFS on its first write rather than a pod that never starts. EOS
volumes are published read-write only for a writer mode with ``readonly`` unset.
"""

from __future__ import annotations

from csi_driver.errors import invalid
from csi_driver.generated import csi_pb2

Mode = csi_pb2.VolumeCapability.AccessMode
READER_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
#: Mount flags that change nothing (binds are always nosuid,nodev) or ask for read-only.
ALLOWED_FLAGS = ("ro", "nosuid", "nodev")


def check(capability: csi_pb2.VolumeCapability, field: str = "volume_capability") -> None:
    """Refuse a capability this driver cannot serve, naming the field and the fix."""
    if capability.HasField("block"):
        raise invalid(
            f"{field}: block access is not supported; hepvol volumes are file systems "
            "(use volumeMode: Filesystem)"
        )
    if not capability.HasField("mount"):
        raise invalid(f"{field}: access_type is required (mount)")
    mode = capability.access_mode.mode
    if mode == Mode.UNKNOWN or mode not in Mode.Mode.values():
        raise invalid(f"{field}.access_mode is required (e.g. MULTI_NODE_READER_ONLY)")
    for flag in capability.mount.mount_flags:
        if flag not in ALLOWED_FLAGS:
            raise invalid(
                f"{field}.mount.mount_flags: {flag!r} is not supported; "
                f"allowed flags are {', '.join(ALLOWED_FLAGS)}"
            )
    if capability.mount.volume_mount_group:
        raise invalid(f"{field}.mount.volume_mount_group is not supported (fsGroupPolicy: None)")


def readonly(backend: str, capability: csi_pb2.VolumeCapability, requested: bool) -> bool:
    """Whether a publish of ``capability`` must be read-only on ``backend``."""
    return (
        requested
        or backend == "cvmfs"
        or capability.access_mode.mode in READER_MODES
        or "ro" in capability.mount.mount_flags
    )


def note(backend: str, capability: csi_pb2.VolumeCapability) -> str:
    """What a caller should know about how ``capability`` will be served ('' = as asked)."""
    if backend == "cvmfs" and capability.access_mode.mode not in READER_MODES:
        return "CVMFS volumes are read-only: writer access modes are published read-only"
    return ""
