"""Start FUSE clients outside the daemon's own cgroup, so they outlive its container.

A daemon in a container (a Kubernetes node pod, a Docker managed plugin) lives in
the container's cgroup, and stopping the container kills every process in that
cgroup — the FUSE servers it started included, which breaks every consumer until
a new daemon repairs them. With ``server_cgroups`` set to cgroup directories of
the host (one per hierarchy on cgroup v1, one on v2), every client command is
started through ``python -m mount_core.cgroups``: it moves itself into those
cgroups and then execs the client, so the server the client leaves behind is no
longer the container's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def wrap(argv: Sequence[str], cgroups: Sequence[str]) -> list[str]:
    """``argv`` run from inside ``cgroups`` (unchanged when none are configured)."""
    if not cgroups:
        return list(argv)
    moves = [arg for directory in cgroups for arg in ("--cgroup", directory)]
    return [sys.executable, "-m", "mount_core.cgroups", *moves, "--", *argv]


def enter(cgroups: Sequence[str]) -> None:
    """Move this process into each cgroup directory (created if missing)."""
    for directory in cgroups:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with open(os.path.join(directory, "cgroup.procs"), "w") as handle:
            handle.write(str(os.getpid()))


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
        print(
            f"cannot enter cgroup {exc.filename}: {exc.strerror} (server_cgroups)", file=sys.stderr
        )
        return 1
    os.execv(command[0], command)  # noqa: S606 - an argument list, never a shell


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
