"""server_cgroups by name: the host's hierarchies are found, a container's own cgroup never."""

from __future__ import annotations

from pathlib import Path

import pytest

from mount_core import cgroups, mountinfo
from mount_core.config import Config
from mount_core.errors import ConfigError

#: A privileged node pod on a cgroup v1 host with the host's /sys/fs/cgroup at
#: /host/sys/fs/cgroup: runc's own mounts show the pod's cgroup, the host's the roots.
POD_MOUNTINFO = """\
60 50 0:29 /kubepods/pod1/c1 /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
61 50 0:32 /kubepods/pod1/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
62 50 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
70 69 0:28 / /host/sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
71 70 0:29 / /host/sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
72 70 0:32 / /host/sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
73 70 0:38 / /host/sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
74 70 0:40 / /host/sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
"""


def test_a_name_resolves_below_each_hierarchy_root_once() -> None:
    entries = mountinfo.parse(POD_MOUNTINFO)
    assert cgroups.resolve(["/abs/group", "hepvol"], entries) == [
        "/abs/group",
        "/host/sys/fs/cgroup/cpu/hepvol",
        "/host/sys/fs/cgroup/memory/hepvol",
        "/host/sys/fs/cgroup/systemd/hepvol",
        "/sys/fs/cgroup/unified/hepvol",
    ]


def test_a_name_with_no_hierarchy_root_in_sight_is_an_error() -> None:
    only_the_pods = mountinfo.parse(POD_MOUNTINFO.splitlines()[0] + "\n")
    with pytest.raises(OSError, match="no cgroup hierarchy root"):
        cgroups.resolve(["hepvol"], only_the_pods)


@pytest.mark.parametrize("entry", ["../x", "a/b", "", "-x", "x\n"])
def test_config_refuses_entries_that_are_neither_a_name_nor_a_directory(entry: str) -> None:
    with pytest.raises(ConfigError, match="server_cgroups entry"):
        Config(server_cgroups=(entry,)).validate()


def test_config_takes_names_and_directories() -> None:
    Config(server_cgroups=("hepvol-servers", "/sys/fs/cgroup/hepvol")).validate()


def test_a_new_v1_cpuset_gets_its_parents_cpus_and_memory_nodes(tmp_path: Path) -> None:
    """Without them no process can join a new cpuset cgroup (ENOSPC)."""
    (tmp_path / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset.mems").write_text("0\n")
    child = tmp_path / "hepvol"
    child.mkdir()
    (child / "cpuset.cpus").write_text("")
    (child / "cpuset.mems").write_text("")
    cgroups._inherit_cpuset(str(child))
    assert (child / "cpuset.cpus").read_text() == "0-1\n"
    assert (child / "cpuset.mems").read_text() == "0\n"
