"""Mount namespaces for benchmarks that use the real CVMFS client on a shared machine.

Two FUSE clients of one repository that share a cache directory collide: the second
``mount.cvmfs`` says "already mounted" and mounts nothing. Other helpers, CI and
``cvmfs_server`` use this machine's ``/etc/cvmfs`` (cache ``/var/lib/cvmfs``), so every
benchmark world gets its own copy of ``/etc/cvmfs`` with a private
``CVMFS_CACHE_BASE``, bound over ``/etc/cvmfs`` in a mount namespace of its own:

* :func:`private_cvmfs` does it for the benchmark process itself (which ``make bench``
  already runs under ``unshare --mount``; it refuses to touch the host's namespace);
* ``python -m bench.isolation --workdir W [options] -- CMD...`` (under ``unshare``)
  runs a peer daemon in a namespace of its own: a fresh ``/run`` (the Go Docker plugin
  always listens on ``/run/docker/plugins/cvmfs.sock``, ``automount`` keeps a one-per-node
  flag there), a private ``/var/cache`` and ``/cvmfs`` (autofs), the repository mounted
  where the peer expects it, and a restart loop as the peers' systemd units have. On
  SIGTERM it stops the daemon and unmounts everything it mounted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from mount_core import bind
from mount_core.mountinfo import MountTable

ETC_CVMFS = "/etc/cvmfs"


def in_private_namespace() -> bool:
    """True when this process has a mount namespace of its own (``unshare --mount`` ran it)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


def client_installed() -> bool:
    return shutil.which("cvmfs2") is not None and os.path.isfile("/sbin/mount.cvmfs")


@contextlib.contextmanager
def private_cvmfs(workdir: str) -> Iterator[str]:
    """A copy of /etc/cvmfs with a cache under ``workdir``, bound over /etc/cvmfs (this ns only)."""
    cache = bind_private_cvmfs(workdir)
    try:
        yield cache
    finally:
        bind.unmount(ETC_CVMFS, lazy=True)


def bind_private_cvmfs(workdir: str) -> str:
    """Bind a copy of /etc/cvmfs with a cache under ``workdir`` over /etc/cvmfs (this ns only)."""
    if not in_private_namespace():
        raise RuntimeError("refusing to bind over /etc/cvmfs in the host's mount namespace; "
                           "run under `unshare --mount --propagation private` (make bench does)")  # fmt: skip
    copy, cache = os.path.join(workdir, "etc-cvmfs"), os.path.join(workdir, "cvmfs-cache")
    # cvmfs2 runs as the cvmfs user and must reach its cache
    os.chmod(workdir, 0o755)
    shutil.copytree(ETC_CVMFS, copy, symlinks=True)
    os.makedirs(cache, exist_ok=True)
    with contextlib.suppress(KeyError):
        user = pwd.getpwnam("cvmfs")
        os.chown(cache, user.pw_uid, user.pw_gid)
    with open(os.path.join(copy, "default.local"), "a") as handle:
        handle.write(f"\n# hepvol bench: a cache nobody else on this machine uses\n"
                     f"CVMFS_CACHE_BASE={cache}\n")  # fmt: skip
    bind.mount(copy, ETC_CVMFS, None, bind.MS_BIND)
    return cache


def _fresh_run(workdir: str) -> None:
    bind.mount("tmpfs", "/run", "tmpfs", 0)
    for path, mode in (("/run/lock", 0o1777), ("/run/mount", 0o755), ("/run/cvmfs", 0o755),
                       ("/run/docker/plugins", 0o755)):  # fmt: skip
        os.makedirs(path, mode=mode, exist_ok=True)
    with contextlib.suppress(KeyError):
        os.chown("/run/cvmfs", pwd.getpwnam("cvmfs").pw_uid, 0)
    plugins = os.path.join(workdir, "plugins")
    os.makedirs(plugins, exist_ok=True)
    bind.mount(plugins, "/run/docker/plugins", None, bind.MS_BIND)


def _automount(workdir: str) -> None:
    bind.mount("tmpfs", "/cvmfs", "tmpfs", 0)
    master = os.path.join(workdir, "auto.master")
    with open(master, "w") as handle:
        handle.write("/cvmfs program:/etc/auto.cvmfs --timeout=0\n")
    pidfile = os.path.join(workdir, "automount.pid")
    subprocess.run(["automount", "-p", pidfile, master], check=True, timeout=60)
    deadline = time.monotonic() + 30
    while (entry := MountTable().at("/cvmfs")) is None or entry.fstype != "autofs":
        if time.monotonic() > deadline:
            raise RuntimeError("automount did not mount /cvmfs")
        time.sleep(0.05)


def _stop_automount(workdir: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(workdir, "automount.pid")) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)


def _unmount_new(before: set[str]) -> None:
    """Unmount every FUSE/autofs mount made in this namespace since ``before``, deepest first."""
    entries = [e for e in MountTable().under("/") if e.mount_point not in before
               and (e.fstype.startswith("fuse") or e.fstype == "autofs")]  # fmt: skip
    for entry in sorted(entries, key=lambda e: -len(e.mount_point)):
        bind.unmount(entry.mount_point, lazy=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--fresh-run", action="store_true", help="a tmpfs on /run")
    parser.add_argument("--var-cache", action="store_true", help="a private /var/cache")
    parser.add_argument("--autofs", action="store_true", help="automount on a private /cvmfs")
    parser.add_argument("--premount", metavar="REPO:DIR", help="mount -t cvmfs REPO DIR first")
    parser.add_argument("--restart", action="store_true", help="restart the daemon when it dies")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    os.makedirs(args.workdir, exist_ok=True)
    before = {e.mount_point for e in MountTable().under("/")}
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        bind_private_cvmfs(args.workdir)
        if args.fresh_run:
            _fresh_run(args.workdir)
        if args.var_cache:
            os.makedirs(os.path.join(args.workdir, "var-cache"), exist_ok=True)
            bind.mount(os.path.join(args.workdir, "var-cache"), "/var/cache", None, bind.MS_BIND)
        if args.autofs:
            _automount(args.workdir)
        if args.premount:
            repo, directory = args.premount.split(":", 1)
            os.makedirs(directory, exist_ok=True)
            subprocess.run(["mount", "-t", "cvmfs", repo, directory], check=True, timeout=120,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        restarts = 0
        log = open(os.path.join(args.workdir, "daemon.log"), "ab")  # noqa: SIM115
        while not stopping:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            with open(os.path.join(args.workdir, "pid"), "w") as handle:
                handle.write(f"{child.pid}\n")
            child.wait()
            if stopping or not args.restart:
                break
            restarts += 1
            with open(os.path.join(args.workdir, "restarts"), "w") as handle:
                handle.write(f"{restarts}\n")
            time.sleep(0.05)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if args.autofs:
            _stop_automount(args.workdir)
        _unmount_new(before)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
