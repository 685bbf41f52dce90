"""Running the real FUSE clients (mount.cvmfs, cvmfs2, eosxd) and fusermount.

The clients daemonise themselves: the command returns once the mount is made
(or fails with a message on stderr), and the FUSE server it leaves behind is not
our child, so it outlives the daemon. Commands are argument lists, never a shell.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from mount_core import bind, cgroups
from mount_core.errors import MountFailed, MountTimeout, Unavailable

#: The client's own failure line, e.g. ``Failed to mount (16 - file catalog failure)``.
_CODE_LINE = re.compile(r"\(\d+ - [^)]*\)")


def client_message(output: str) -> str:
    """The line of a client's output that says why it failed.

    A ``(N - text)`` line wins (cvmfs2's own reason); otherwise the last non-empty line.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if _CODE_LINE.search(line):
            return line
    return lines[-1] if lines else "no message"


def run_client(
    argv: Sequence[str],
    *,
    timeout: float,
    what: str,
    server_cgroups: Sequence[str] = (),
    groups: Sequence[int] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client command to completion within ``timeout`` seconds.

    A client that leaves a FUSE server behind is started in ``server_cgroups``;
    ``groups`` are its supplementary groups (those of the user it drops to), set
    by ``setpriv`` in the child: subprocess' own ``extra_groups`` turns off vfork,
    and a plain fork of a gRPC server's process runs gRPC's fork handlers, which
    crash the child when other threads are in gRPC (cvmfs2 "exited" with SIGSEGV).
    """
    command = list(argv)
    if groups is not None:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        command = [setpriv, "--groups=" + ",".join(map(str, groups)), "--", *command]
    # Behind a wrapper (cgroups, setpriv) a missing client would be the wrapper's failure.
    if (server_cgroups or groups is not None) and not os.path.isfile(argv[0]):
        raise Unavailable(f"cannot mount {what}: {argv[0]} is not installed")
    try:
        return subprocess.run(
            cgroups.wrap(command, server_cgroups),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            close_fds=True,
        )
    except FileNotFoundError:
        raise Unavailable(f"cannot mount {what}: {argv[0]} is not installed") from None
    except PermissionError:
        raise Unavailable(f"cannot mount {what}: {argv[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise MountTimeout(
            f"cannot mount {what}: {os.path.basename(argv[0])} did not finish within "
            f"{timeout:g} s (mount_timeout_seconds)"
        ) from None


def require_executable(path: str, package: str) -> None:
    """Raise :class:`Unavailable` naming ``package`` when ``path`` cannot be run."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise Unavailable(f"{path} is missing on this node: install {package}")


def fusermount_program() -> str | None:
    """``fusermount3`` where installed, else ``fusermount``."""
    return shutil.which("fusermount3") or shutil.which("fusermount")


def fuse_unmount(path: str, *, lazy: bool, timeout: float) -> None:
    """Unmount a FUSE mount as its client expects (``fusermount3 -u [-z]``).

    A mount that fusermount cannot remove (a dead or hung server) is detached
    lazily with umount2, so the path is free for a remount afterwards.
    """
    program = fusermount_program()
    if program is not None:
        argv = [program, "-u", *(["-z"] if lazy else []), path]
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            if run_client(argv, timeout=timeout, what=path).returncode == 0:
                return
    with contextlib.suppress(OSError):
        bind.unmount(path, lazy=True)


#: What the CVMFS mount helper's exit codes mean (mount(8) conventions).
CVMFS_EXIT_CODES = {
    1: "a check failed before the client started",
    32: "the client started and failed",
}


def failure(
    what: str,
    result: subprocess.CompletedProcess[str],
    hint: str = "",
    codes: dict[int, str] | None = None,
) -> MountFailed:
    """The error a user sees when a client exits non-zero: its own words, quoted.

    ``codes`` names what the client's exit codes mean, where it documents them.
    """
    reason = client_message(result.stderr + "\n" + result.stdout)
    stage = (codes or {}).get(result.returncode, f"exit code {result.returncode}")
    extra = f"; {hint}" if hint else ""
    return MountFailed(f"cannot mount {what}: {stage}: {reason!r}{extra}")
