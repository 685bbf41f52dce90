"""The ``cvmfs2`` backend: CVMFS repositories served by the real CVMFS client.

Where each kind of volume lives and how it is mounted:

* a plain repository (``atlas.cern.ch``): one system mount per repository at
  ``<mount root>/cvmfs-<repo>``, made by the mount helper exactly as
  ``mount -t cvmfs <repo> <dir>`` would run it (``mount.cvmfs <repo> <dir>``) and
  shared by every consumer through binds. It lives under hepvol's mount root, not
  ``<cvmfs root>/<repo>``, so that hepvol never competes with a site's own
  ``/cvmfs`` (fstab or autofs): the helper refuses a second system mount of a
  repository, and that refusal is reported with a hint instead of being hidden;
* a pinned repository (``tag``, ``hash``, ``date``) or one with its own
  ``clientConfig``: a private ``cvmfs2 -o config=FILE <repo> <dir>`` mount at
  ``<mount root>/<key>``, one per distinct (repo, pin, config), with a generated
  config under ``<state dir>/cvmfs/<key>/`` (see :mod:`.cvmfs_config`), started
  as ``mount.cvmfs`` starts a system mount (the site's user, ``allow_other``) and
  named ``hepvol:<key>`` in mountinfo (see :mod:`.cvmfs_client`);
* with ``cvmfs.automount``: hepvol owns an autofs root on ``cvmfs.root`` (see
  :mod:`.autofs`). A single repository is bound from ``<root>/<repo>`` to
  ``<mount root>/cvmfs-<repo>`` (that bind keeps the repository alive for its
  consumers and is what the health loop probes); a whole-tree volume (no
  repository) is the root itself, bound recursively as a slave into targets.
  Repositories nobody holds are left to autofs' own idle timeout.

Both FUSE kinds are unmounted with ``fusermount3 -u`` (``fusermount -u``). A mount
is only reported made once the kernel shows it (cvmfs2 exits 0 without mounting
when another cvmfs2 holds its cache); whenever mounting fails after a client ran,
what it mounted is unmounted and what it started is killed before the error is
returned. A repository, tag, date or hash that does not exist is a
:class:`~mount_core.errors.NotFound` naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess

from mount_core import bind, targets
from mount_core.atomicfile import write_atomically
from mount_core.backends import cvmfs_client
from mount_core.backends.autofs import Automounter
from mount_core.backends.base import Backend
from mount_core.backends.cvmfs_config import client_settings, render, volume_settings
from mount_core.backends.external import (
    CVMFS_EXIT_CODES,
    client_message,
    failure,
    fuse_unmount,
    fusermount_program,
    require_executable,
    run_client,
)
from mount_core.config import Config
from mount_core.errors import HepvolError, MountFailed, NotFound, Unavailable
from mount_core.logs import event
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.probe import HEALTHY_RESULT, Prober, ProbeResult
from mount_core.spec import VolumeSpec

log = logging.getLogger("hepvol.cvmfs")

#: mountinfo of a cvmfs2 mount: ``cvmfs2 on <dir> type fuse``.
FSTYPE, SOURCE = "fuse", "cvmfs2"
INSTALL = (
    "the CVMFS client (packages cvmfs and cvmfs-config-default from CERN's repository, "
    'see https://cvmfs.readthedocs.io), or set cvmfs.client = "local"'
)
_ALREADY_MOUNTED_HINT = (
    "this node already mounts the repository outside hepvol (an fstab entry or the "
    "site's autofs on /cvmfs?): remove that mount, or set cvmfs.automount = true so that "
    "hepvol owns the CVMFS root and shares it"
)


class Cvmfs2Backend(Backend):
    """CVMFS through ``mount.cvmfs``, private ``cvmfs2`` mounts, and optionally autofs."""

    name = "cvmfs2"

    def __init__(self, config: Config) -> None:
        super().__init__(config.mount_root)
        self.settings = config.cvmfs
        self.private_root = config.cvmfs.cache_root
        self.timeout = config.mount_timeout_seconds
        self.probe_timeout = config.probe_timeout_seconds
        self.automounter: Automounter | None = None
        if config.cvmfs.automount:
            self.automounter = Automounter(
                config.cvmfs.root,
                config.cvmfs.automount_program,
                config.cvmfs.automount_timeout_seconds,
                config.state_dir,
                config.mount_timeout_seconds,
                config.cvmfs.automount_map,
            )
            self.automounter.server_cgroups = config.server_cgroups

    def check_available(self) -> None:
        require_executable(self.settings.mount_helper, INSTALL)
        require_executable(self.settings.cvmfs2, INSTALL)
        if fusermount_program() is None:
            raise Unavailable("fusermount3 is missing: install fuse3 on this node")
        if self.automounter is not None:
            require_executable(self.settings.automount_program, "autofs")

    # Where --------------------------------------------------------------------

    def path_for(self, spec: VolumeSpec) -> str:
        if spec.repository is None:
            if self.automounter is None:
                raise Unavailable(
                    "a volume of the whole CVMFS tree (no repository) needs cvmfs.automount = "
                    "true; otherwise give a repository"
                )
            return self.automounter.root
        return super().path_for(spec)

    def private_dir(self, key: str) -> str:
        """Generated config, cache and reload sockets of a private mount."""
        return os.path.join(self.private_root, key)

    def _make_private_dir(self, key: str, user: cvmfs_client.ClientUser) -> str:
        """``<cache_root>/<key>``: root's, readable by the client's user; cache and
        sockets below it the user's. The cache root sits in the client's area
        (/var/lib/cvmfs, the cvmfs user's), so nothing there may be a symlink or
        anyone else's before root writes into it."""
        directory = self.private_dir(key)
        for made in (self.private_root, directory):
            os.makedirs(made, mode=0o755, exist_ok=True)
            st = os.lstat(made)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                raise MountFailed(
                    f"{made} (cvmfs.cache_root) must be a directory owned by root and "
                    "writable only by root; remove it and hepvol recreates it"
                )
        for owned in ("cache", "run"):
            path = os.path.join(directory, owned)
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.lchown(path, user.uid, user.gid)
        return directory

    def bind_recursive(self, spec: VolumeSpec) -> bool:
        return spec.repository is None

    # Mounting -------------------------------------------------------------------

    def mount(self, spec: VolumeSpec, path: str) -> None:
        if spec.repository is None:
            assert self.automounter is not None
            self.automounter.ensure()
            return
        os.makedirs(path, mode=0o755, exist_ok=True)
        try:
            if spec.pinned:
                self._mount_private(spec, path)
            elif self.automounter is not None:
                self._mount_from_autofs(spec, path)
            else:
                self._mount_system(spec, path)
            entry = MountTable().at(path)
            if entry is None or not self.owns(entry):
                raise MountFailed(
                    f"cannot mount {spec.source}: the client reported success but {path} "
                    "is not a cvmfs2 mount"
                )
        except BaseException:
            self._clean_up(spec, path)
            raise
        event(log, "cvmfs mounted", volume=spec.key, path=path,
              kind="private" if spec.pinned else "system")  # fmt: skip

    def _clean_up(self, spec: VolumeSpec, path: str) -> None:
        """Undo what a failed mount left: its mount, its client processes, its files."""
        if MountTable().at(path) is not None:
            fuse_unmount(path, lazy=True, timeout=self.timeout)
        cvmfs_client.kill(cvmfs_client.client_pids(mount_point=path))
        if spec.pinned:
            directory = self.private_dir(spec.key)
            cvmfs_client.kill(
                cvmfs_client.client_pids(config_file=os.path.join(directory, "client.conf"))
            )
            shutil.rmtree(directory, ignore_errors=True)

    def _refuse(self, spec: VolumeSpec, result: subprocess.CompletedProcess[str],
                hint: str = "", codes: dict[int, str] | None = None) -> HepvolError:  # fmt: skip
        """The error for a client that exited non-zero: NotFound when something is missing."""
        assert spec.repository is not None
        output = result.stderr + "\n" + result.stdout
        if result.returncode in (15, 16, 22, 32):
            settings = client_settings(self.settings.cvmfs2, spec.repository, self.timeout)
            settings.update(volume_settings(spec))
            what = cvmfs_client.missing(spec, output, settings)
            if what is not None:
                return NotFound(f"cannot mount {spec.source}: {what} "
                                f"(the client: {client_message(output)!r})")  # fmt: skip
        return failure(spec.source, result, hint, codes)

    def _mount_system(self, spec: VolumeSpec, path: str) -> None:
        assert spec.repository is not None
        argv = [self.settings.mount_helper, spec.repository, path]
        # mount.cvmfs gives the mount point to the cvmfs user (grab_mountpoint); the
        # directory below the mount is handed back to root, or the next remount
        # would find a mount point others can write.
        below = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            result = run_client(
                argv, timeout=self.timeout, what=spec.source, server_cgroups=self.server_cgroups
            )
            os.fchown(below, 0, 0)
        finally:
            os.close(below)
        if result.returncode != 0:
            hint = _ALREADY_MOUNTED_HINT if "already mounted" in result.stderr else ""
            raise self._refuse(spec, result, hint, CVMFS_EXIT_CODES)

    def _mount_private(self, spec: VolumeSpec, path: str) -> None:
        assert spec.repository is not None
        site = client_settings(self.settings.cvmfs2, spec.repository, self.timeout)
        user = cvmfs_client.client_user(site)
        config_file = os.path.join(self.private_dir(spec.key), "client.conf")
        # A cvmfs2 left on this cache (its mount held in another mount namespace)
        # would make the new one exit 0 without mounting ("already mounted").
        cvmfs_client.kill(cvmfs_client.client_pids(config_file=config_file))
        directory = self._make_private_dir(spec.key, user)
        cache, sockets = os.path.join(directory, "cache"), os.path.join(directory, "run")
        text = render(spec, site, self.settings.config_dir, cache, sockets)
        write_atomically(config_file, text, 0o644)
        options = cvmfs_client.mount_options(config_file, spec.key, user)
        argv = [self.settings.cvmfs2, "-o", options, spec.repository, path]
        result = run_client(argv, timeout=self.timeout, what=spec.source,
                            server_cgroups=self.server_cgroups, groups=user.groups)  # fmt: skip
        if result.returncode != 0:
            raise self._refuse(spec, result)
        if MountTable().at(path) is None:
            raise MountFailed(
                f"cannot mount {spec.source}: cvmfs2 exited 0 but {path} is not mounted: "
                f"{client_message(result.stderr + chr(10) + result.stdout)!r}"
            )

    def _mount_from_autofs(self, spec: VolumeSpec, path: str) -> None:
        assert self.automounter is not None and spec.repository is not None
        self.automounter.ensure()
        source = os.path.join(self.automounter.root, spec.repository)
        entry = MountTable().at(source)
        if entry is not None and Prober(self.probe_timeout).probe(source).dead:
            # A crashed client: detach it so that autofs mounts it afresh.
            fuse_unmount(source, lazy=True, timeout=self.timeout)
        self.automounter.trigger(spec.repository)
        with (
            targets.open_inside(source, "") as opened_source,
            targets.open_inside(path, "") as opened_path,
        ):
            # Private: our bind must not join the autofs tree's peer group.
            bind.bind_fd(
                opened_source.fd, opened_path.fd, readonly=True, propagation=bind.MS_PRIVATE
            )

    # Unmounting -----------------------------------------------------------------

    def unmount(self, path: str) -> None:
        if self.automounter is not None and path == self.automounter.root:
            # The autofs root stays: automount serves the node, repositories expire
            # by autofs' own timeout.
            return
        fuse_unmount(path, lazy=False, timeout=self.timeout)
        pids = cvmfs_client.client_pids(mount_point=path)
        directory = self.private_dir(os.path.basename(path))
        private = os.path.dirname(path) == os.path.normpath(self.mount_root) and os.path.isdir(
            directory
        )
        if private:
            # A copy of the mount in another mount namespace keeps its cvmfs2
            # running on a cache that is about to be removed.
            pids += cvmfs_client.client_pids(config_file=os.path.join(directory, "client.conf"))
        cvmfs_client.stop(pids, grace=min(self.timeout, 5.0))
        if private:
            shutil.rmtree(directory, ignore_errors=True)

    # Questions -------------------------------------------------------------------

    def owns(self, entry: MountEntry) -> bool:
        if self.automounter is not None and entry.mount_point == self.automounter.root:
            return entry.fstype == "autofs"
        inside = entry.mount_point.startswith(os.path.normpath(self.mount_root) + "/")
        private = entry.source == cvmfs_client.PRIVATE_PREFIX + os.path.basename(entry.mount_point)
        return inside and entry.fstype == FSTYPE and (entry.source == SOURCE or private)

    def remove_stray(self, entry: MountEntry) -> bool:
        if not entry.source.startswith(cvmfs_client.PRIVATE_PREFIX):
            return False
        fuse_unmount(entry.mount_point, lazy=True, timeout=self.timeout)
        cvmfs_client.stop(cvmfs_client.client_pids(mount_point=entry.mount_point), grace=2.0)
        with contextlib.suppress(OSError):
            os.rmdir(entry.mount_point)
        return True

    def check_health(self, path: str, prober: Prober) -> ProbeResult | None:
        """For the autofs root: find repositories whose client died, without touching them.

        Any path lookup below the root (even ``statvfs`` of a mounted repository)
        resets autofs' idle timer, so repositories are not probed: a repository
        mounted under the root with no live ``cvmfs2`` process serving it is dead,
        and is detached so that autofs mounts it afresh on the next access (the
        detach propagates into every whole-tree target).
        """
        if self.automounter is None or path != self.automounter.root:
            return None
        if self.automounter.pid() is None:
            self.automounter.ensure()
        served = _served_mount_points()
        detached = []
        for entry in list(MountTable().under(path)):
            if entry.mount_point == path or (entry.fstype, entry.source) != (FSTYPE, SOURCE):
                continue
            if entry.mount_point not in served:
                with contextlib.suppress(OSError):
                    bind.unmount(entry.mount_point, lazy=True)
                detached.append(os.path.basename(entry.mount_point))
        if detached:
            event(log, "detached repositories whose cvmfs2 died; autofs mounts them again on "
                  "the next access", volume=None, repositories=detached,
                  level=logging.WARNING)  # fmt: skip
        return HEALTHY_RESULT


def _served_mount_points() -> set[str]:
    """Mount points named last on the command line of a running cvmfs2 process.

    cvmfs2 keeps ``... <repo> <mount point>`` as its command line after it
    daemonises (and so does its watchdog).
    """
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and any(SOURCE.encode() in arg for arg in argv[:-2]):
            found.add(os.fsdecode(argv[-1]))
    return found
