"""mountinfo parsing, including the kernel's octal escapes."""

from __future__ import annotations

from mount_core.mountinfo import MountTable, parse_line, unescape

LINE = (
    r"301 27 0:52 /sub /var/lib/kubelet/pods/a\040b\011c\012d\134e"
    " rw,nosuid,nodev shared:5 master:3 - fuse.hepvol hepvol:cvmfs-x ro,user_id=0"
)


def test_escaped_spaces_tabs_newlines_and_backslashes() -> None:
    entry = parse_line(LINE)
    assert entry.mount_point == "/var/lib/kubelet/pods/a b\tc\nd\\e"
    assert entry.root == "/sub"
    assert entry.fstype == "fuse.hepvol"
    assert entry.source == "hepvol:cvmfs-x"
    assert entry.optional == ("shared:5", "master:3")
    assert entry.propagation == "shared+slave"
    assert not entry.readonly


def test_non_ascii_names_survive_byte_escapes() -> None:
    assert unescape("/t/\\303\\251t\\303\\251") == "/t/été"


def test_entry_without_optional_fields() -> None:
    entry = parse_line("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw")
    assert entry.optional == () and entry.propagation == "private"


def test_real_table_contains_root_and_proc() -> None:
    table = MountTable()
    assert table.at("/") is not None
    assert any(e.fstype == "proc" for e in table.entries)
