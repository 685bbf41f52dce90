"""Start FUSE clients outside the daemon's own cgroup, so they outlive its container.

A daemon in a container (a Kubernetes node pod, a Docker managed plugin) lives in
the container's cgroup, and stopping the container kills every process in that
cgroup — the FUSE servers it started included, which breaks every consumer until
a new daemon repairs them. With ``server_cgroups`` set to cgroup directories of
the host (one per hierarchy on cgroup v1, one on v2), every client command is
started through ``python -m mount_core.cgroups``: it moves itself into those
cgroups and then execs the client, so the server the client leaves behind is no
longer the container's.

An entry that is a bare name instead of a directory means "a cgroup of that name
below the root of every cgroup hierarchy mounted here": the same setting then
works for a node pod (the host's ``/sys/fs/cgroup`` mounted into it, in the
host's PID namespace) and for FlexVolume drivers that kubelet runs on the host.
On cgroup v2 a pod has a cgroup namespace of its own, so the wrapper first joins
the cgroup namespace of PID 1 (the host's init, given the host's PID namespace).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Sequence

from mount_core import mountinfo

#: A cgroup name (server_cgroups entry that is not a path).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CLONE_NEWCGROUP = 0x02000000


def wrap(argv: Sequence[str], cgroups: Sequence[str]) -> list[str]:
    """``argv`` run from inside ``cgroups`` (unchanged when none are configured)."""
    if not cgroups:
        return list(argv)
    moves = [arg for directory in cgroups for arg in ("--cgroup", directory)]
    return [sys.executable, "-m", "mount_core.cgroups", *moves, "--", *argv]


def hierarchy_roots(entries: Sequence[mountinfo.MountEntry]) -> list[str]:
    """One mount point per cgroup hierarchy whose mount shows the hierarchy's root.

    A container's own cgroup mounts show only its cgroup (their root is that
    cgroup's path) and are skipped; the host's cgroupfs mounted into it is found.
    """
    roots: dict[str, str] = {}
    for entry in entries:
        if entry.fstype in ("cgroup", "cgroup2") and entry.root == "/":
            roots.setdefault(entry.device, entry.mount_point)
    return sorted(roots.values())


def resolve(cgroups: Sequence[str], entries: Sequence[mountinfo.MountEntry]) -> list[str]:
    """The directories to join: paths as given, names below every hierarchy root."""
    directories: list[str] = []
    for item in cgroups:
        if item.startswith("/"):
            directories.append(item)
            continue
        roots = hierarchy_roots(entries)
        if not roots:
            raise OSError(f"no cgroup hierarchy root is mounted here for {item!r}")
        directories += [os.path.join(root, item) for root in roots]
    return directories


def _join_host_cgroup_namespace() -> None:
    """Join PID 1's cgroup namespace when it is not ours (a pod's on cgroup v2)."""
    try:
        if os.stat("/proc/1/ns/cgroup").st_ino == os.stat("/proc/self/ns/cgroup").st_ino:
            return
        descriptor = os.open("/proc/1/ns/cgroup", os.O_RDONLY)
    except OSError:
        return  # not visible (no host PID namespace): nothing to join
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(descriptor, _CLONE_NEWCGROUP) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), "/proc/1/ns/cgroup")
    finally:
        os.close(descriptor)


def enter(cgroups: Sequence[str]) -> None:
    """Move this process into each cgroup (directories created if missing)."""
    if not all(item.startswith("/") for item in cgroups):
        _join_host_cgroup_namespace()
        cgroups = resolve(cgroups, mountinfo.read())
    for directory in cgroups:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        _inherit_cpuset(directory)
        with open(os.path.join(directory, "cgroup.procs"), "w") as handle:
            handle.write(str(os.getpid()))


def _inherit_cpuset(directory: str) -> None:
    """A new cgroup v1 cpuset has no CPUs and memory nodes, and no process can join
    it (ENOSPC) until they are set: take the parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return
        with open(path) as handle:
            if handle.read().strip():
                continue
        with open(os.path.join(os.path.dirname(directory), name)) as parent:
            value = parent.read()
        with open(path, "w") as handle:
            handle.write(value)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(
            "usage: python -m mount_core.cgroups [--cgroup DIR]... -- COMMAND...", file=sys.stderr
        )
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    if len(options) % 2 or any(flag != "--cgroup" for flag in options[::2]) or not command:
        print(
            "usage: python -m mount_core.cgroups [--cgroup DIR]... -- COMMAND...", file=sys.stderr
        )
        return 2
    try:
        enter(options[1::2])
    except OSError as exc:
        where = exc.filename or options[1::2]
        print(
            f"cannot enter cgroup {where}: {exc.strerror or exc} (server_cgroups)", file=sys.stderr
        )
        return 1
    os.execv(command[0], command)  # noqa: S606 - an argument list, never a shell


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
