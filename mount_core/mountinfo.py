"""Reading ``/proc/self/mountinfo``: the kernel's truth about what is mounted.

Paths in mountinfo escape space, tab, newline and backslash as octal (``\\040``);
:func:`unescape` undoes that so paths with such characters compare correctly.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Decode the kernel's octal escapes in a mountinfo path field."""
    if "\\" not in field:
        return field
    raw = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)
    # The kernel escapes bytes; reassemble multi-byte UTF-8 names.
    return raw.encode("latin-1", "surrogateescape").decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str

    @property
    def readonly(self) -> bool:
        return "ro" in self.options.split(",")

    @property
    def propagation(self) -> str:
        """``shared``, ``slave``, ``shared+slave`` or ``private``."""
        kinds = [o.split(":")[0] for o in self.optional]
        if "shared" in kinds and "master" in kinds:
            return "shared+slave"
        if "shared" in kinds:
            return "shared"
        if "master" in kinds:
            return "slave"
        return "private"


def parse_line(line: str) -> MountEntry:
    parts = line.split(" ")
    sep = parts.index("-", 6)
    return MountEntry(
        mount_id=int(parts[0]),
        parent_id=int(parts[1]),
        device=parts[2],
        root=unescape(parts[3]),
        mount_point=unescape(parts[4]),
        options=parts[5],
        optional=tuple(parts[6:sep]),
        fstype=parts[sep + 1],
        source=unescape(parts[sep + 2]),
        super_options=parts[sep + 3] if len(parts) > sep + 3 else "",
    )


def parse(text: str) -> list[MountEntry]:
    return [parse_line(line) for line in text.splitlines() if line]


def read(path: str = MOUNTINFO) -> list[MountEntry]:
    """All mounts visible to this process, in mount order."""
    with open(path, encoding="ascii", errors="surrogateescape") as handle:
        return parse(handle.read())


_STATX_MNT_ID = 0x1000
_AT_SYMLINK_NOFOLLOW, _AT_NO_AUTOMOUNT, _AT_STATX_DONT_SYNC = 0x100, 0x800, 0x4000
_STATX_SIZE, _STATX_MASK_AT, _STATX_MNT_ID_AT = 256, 0, 144
_libc = ctypes.CDLL(None, use_errno=True)


def mount_id_of(path: str) -> int:
    """The id of the mount ``path`` resolves to (``statx`` ``STATX_MNT_ID``).

    What the path really reaches, which a mountinfo row at that path may not be (a
    mount over one of its parents hides it). The last component is not followed if
    it is a symlink, no automount is triggered, and the attributes are not
    synchronised, so a dead or hung FUSE server is never asked anything.
    Raises OSError (ENOENT, ENOTCONN on a dead mount's parent, ...).
    """
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    flags = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT | _AT_STATX_DONT_SYNC
    if _libc.statx(-100, os.fsencode(path), flags, _STATX_MNT_ID, buffer) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    mask = int.from_bytes(buffer.raw[_STATX_MASK_AT : _STATX_MASK_AT + 4], "little")
    if not mask & _STATX_MNT_ID:
        raise OSError(0, "the kernel does not report mount ids (statx STATX_MNT_ID, Linux 5.8)")
    return int.from_bytes(buffer.raw[_STATX_MNT_ID_AT : _STATX_MNT_ID_AT + 8], "little")


def entries_by_id(mount_ids: set[int], path: str = MOUNTINFO) -> dict[int, MountEntry]:
    """The mountinfo rows of a few mounts, in one read, parsing no other row (a
    publish asks this on nodes with thousands of mounts)."""
    prefixes = tuple(f"{mount_id} " for mount_id in mount_ids)
    found = {}
    with open(path, encoding="ascii", errors="surrogateescape") as handle:
        for line in handle:
            if line.startswith(prefixes):
                entry = parse_line(line.rstrip("\n"))
                found[entry.mount_id] = entry
    return found


def mounted_at(path: str, table: MountTable | None = None) -> MountEntry | None:
    """The mount ``path`` really reaches when it is mounted exactly there, else None.

    Unlike ``MountTable().at(path)``, a row hidden by a mount over one of the
    path's parents is not taken for a mount at the path.
    """
    try:
        mount_id = mount_id_of(path)
    except OSError:
        return None
    entry = entries_by_id({mount_id}).get(mount_id) if table is None else table.by_id(mount_id)
    return entry if entry is not None and entry.mount_point == path else None


class MountTable:
    """A snapshot of mountinfo indexed by mount point (the topmost mount wins)."""

    def __init__(self, entries: list[MountEntry] | None = None) -> None:
        self.entries = read() if entries is None else entries
        self._by_point: dict[str, MountEntry] = {}
        for entry in self.entries:
            self._by_point[entry.mount_point] = entry

    def at(self, mount_point: str) -> MountEntry | None:
        """The topmost row at ``mount_point``: what mountinfo says, not what the path
        reaches (see :meth:`by_id` with :func:`mount_id_of`)."""
        return self._by_point.get(mount_point)

    def by_id(self, mount_id: int) -> MountEntry | None:
        return next((e for e in self.entries if e.mount_id == mount_id), None)

    def under(self, root: str) -> Iterator[MountEntry]:
        """Mounts at ``root`` or below it."""
        prefix = root.rstrip("/") + "/"
        for entry in self.entries:
            if entry.mount_point == root or entry.mount_point.startswith(prefix):
                yield entry

    def on_device(self, device: str) -> Iterator[MountEntry]:
        return (e for e in self.entries if e.device == device)
