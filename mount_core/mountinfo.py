"""Reading ``/proc/self/mountinfo``: the kernel's truth about what is mounted.

Paths in mountinfo escape space, tab, newline and backslash as octal (``\\040``);
:func:`unescape` undoes that so paths with such characters compare correctly.
"""

from __future__ import annotations

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


class MountTable:
    """A snapshot of mountinfo indexed by mount point (the topmost mount wins)."""

    def __init__(self, entries: list[MountEntry] | None = None) -> None:
        self.entries = read() if entries is None else entries
        self._by_point: dict[str, MountEntry] = {}
        for entry in self.entries:
            self._by_point[entry.mount_point] = entry

    def at(self, mount_point: str) -> MountEntry | None:
        return self._by_point.get(mount_point)

    def under(self, root: str) -> Iterator[MountEntry]:
        """Mounts at ``root`` or below it."""
        prefix = root.rstrip("/") + "/"
        for entry in self.entries:
            if entry.mount_point == root or entry.mount_point.startswith(prefix):
                yield entry

    def on_device(self, device: str) -> Iterator[MountEntry]:
        return (e for e in self.entries if e.device == device)
