"""Whether this process sees the mounts kubelet sees.

Targets are bind mounts in kubelet's mount namespace. A ``hepvol status`` run
elsewhere (a container without the host's mount namespace, a private
``unshare -m``) reads that namespace's mount table, which may not be what pods
get: a mount missing there can be fine for kubelet, and a copy that looks right
there can be hidden from it. The check compares ``/proc/self/ns/mnt`` with the
namespace of every visible ``kubelet`` process (none visible: nothing to say).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

KUBELET = "kubelet"


def mount_namespace(pid: int | str = "self") -> str | None:
    """``mnt:[inode]`` of a process, or None when it is gone or not ours to read."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "comm")) as comm:
                if comm.read().strip() == name:
                    found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


@dataclass
class NamespaceCheck:
    """This process's mount namespace and those of the visible kubelets."""

    own: str | None
    kubelets: dict[int, str] = field(default_factory=dict)

    @property
    def outside(self) -> bool:
        """True when kubelets are visible and none shares this mount namespace."""
        return bool(self.kubelets) and self.own not in self.kubelets.values()

    def warning(self) -> str:
        if not self.outside:
            return ""
        pid, namespace = next(iter(self.kubelets.items()))
        return (
            f"this runs in mount namespace {self.own}, kubelet (pid {pid}) in {namespace}: "
            "the mounts shown are this namespace's, not necessarily what pods get; "
            f"run it in kubelet's: nsenter -t {pid} -m -- hepvol status"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "self": self.own,
            "kubelets": [{"pid": p, "namespace": n} for p, n in self.kubelets.items()],
            "outside_kubelet": self.outside,
        }


def check(process_name: str = KUBELET) -> NamespaceCheck:
    """Compare this process's mount namespace with every visible kubelet's."""
    kubelets = {}
    for pid in _processes_named(process_name):
        namespace = mount_namespace(pid)
        if namespace is not None:
            kubelets[pid] = namespace
    return NamespaceCheck(mount_namespace(), kubelets)
