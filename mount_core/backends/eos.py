"""The ``eosxd`` backend: EOS instances served by the real EOS FUSE client.

* Shared mount: one per configured instance, at ``<mount root>/eos-<name>``. hepvol
  writes ``<eos.config_dir>/fuse.<name>.conf`` and runs ``eosxd -ofsname=<name>
  <dir>``; consumers bring their own credentials, as on CERN's clusters. Every
  volume of the instance binds its own path from it.
* Private mount: a volume given a credential (Kerberos ticket cache, OAuth2 token
  or EOS token) gets its own eosxd, ``fsname`` ``<name>-<digest>`` (the spec key
  without ``eos-``), whose config points at the credential written 0600, owner
  root, under ``<state dir>/credentials/<key>/``. The credential is part of the
  key, so different credentials never share a mount; the directory goes with the
  mount. The credential's bytes are never logged nor put in an error or status.

Unmounted with ``fusermount3 -u -z`` (``fusermount -u -z``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from mount_core.atomicfile import write_atomically
from mount_core.backends.base import Backend
from mount_core.backends.eos_config import (
    CREDENTIAL_AUTH,
    Instance,
    lookup,
    parse_instances,
    render,
)
from mount_core.backends.external import (
    failure,
    fuse_unmount,
    fusermount_program,
    require_executable,
    run_client,
)
from mount_core.config import Config
from mount_core.errors import MountFailed, StateError, Unavailable
from mount_core.logs import event
from mount_core.mountinfo import MountEntry, MountTable
from mount_core.spec import Credential, VolumeSpec
from mount_core.statedir import StateDir

log = logging.getLogger("hepvol.eos")

FSTYPES = ("fuse", "fuse.eosxd")
KEY_PREFIX = "eos-"
INSTALL = (
    'the EOS client (package eos-fusex from CERN\'s EOS repository), or set eos.client = "local"'
)


class EosxdBackend(Backend):
    """EOS through eosxd, one shared mount per instance and one per credential."""

    name = "eosxd"

    def __init__(self, config: Config) -> None:
        super().__init__(config.mount_root)
        self.settings = config.eos
        self.instances = parse_instances(config.eos.instances)
        state = StateDir(config.state_dir)
        self.credentials_root = state.credentials
        self.cache_root = state.eos
        self.timeout = config.mount_timeout_seconds

    def check_available(self) -> None:
        require_executable(self.settings.eosxd, INSTALL)
        if fusermount_program() is None:
            raise Unavailable("fusermount3 is missing: install fuse3 on this node (eosxd needs it)")

    # Names --------------------------------------------------------------------

    @staticmethod
    def fsname(key: str) -> str:
        """eosxd's ``fsname`` for a backing mount: the key without ``eos-``."""
        return key[len(KEY_PREFIX) :]

    def config_file(self, key: str) -> str:
        return os.path.join(self.settings.config_dir, f"fuse.{self.fsname(key)}.conf")

    def credential_dir(self, key: str) -> str:
        return os.path.join(self.credentials_root, key)

    def credential_file(self, key: str, kind: str) -> str:
        return os.path.join(self.credential_dir(key), CREDENTIAL_AUTH[kind][1])

    # Mounting -------------------------------------------------------------------

    def mount(self, spec: VolumeSpec, path: str) -> None:
        instance = lookup(self.instances, spec.instance)
        os.makedirs(path, mode=0o755, exist_ok=True)
        credential = None
        # A remount (repair) finds the credential already there: a failed attempt
        # must keep it for the next one.
        existed = os.path.isdir(self.credential_dir(spec.key))
        if spec.credential is not None:
            credential = (spec.credential.kind, self._write_credential(spec.key, spec.credential))
        try:
            self._write_config(instance, spec.key, path, credential)
            argv = [self.settings.eosxd, f"-ofsname={self.fsname(spec.key)}", path]
            result = run_client(
                argv, timeout=self.timeout, what=spec.source, server_cgroups=self.server_cgroups
            )
            if result.returncode != 0:
                raise failure(spec.source, result)
            entry = MountTable().at(path)
            if entry is None or not self.owns(entry):
                raise MountFailed(
                    f"cannot mount {spec.source}: eosxd reported success but {path} is not mounted"
                )
        except BaseException:
            if not existed:
                self._forget(spec.key)
            raise
        event(log, "eos mounted", volume=spec.key, path=path, instance=instance.name,
              private=credential is not None)  # fmt: skip

    def _write_config(
        self, instance: Instance, key: str, path: str, credential: tuple[str, str] | None
    ) -> None:
        os.makedirs(self.settings.config_dir, mode=0o755, exist_ok=True)
        cache = os.path.join(self.cache_root, key)
        os.makedirs(cache, mode=0o700, exist_ok=True)
        target = self.config_file(key)
        text = render(instance, self.fsname(key), path, cache, credential)
        write_atomically(target, text, 0o644)

    def _write_credential(self, key: str, credential: Credential) -> str:
        """Write the credential 0600 (owner root, no group/other bits: eosxd insists)."""
        os.makedirs(self.credentials_root, mode=0o700, exist_ok=True)
        directory = self.credential_dir(key)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        path = self.credential_file(key, credential.kind)
        write_atomically(path, credential.value, 0o600, owner=(0, 0))
        return path

    def _forget(self, key: str) -> None:
        """Remove the config, caches and credential of a backing mount."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config_file(key))
        shutil.rmtree(os.path.join(self.cache_root, key), ignore_errors=True)
        shutil.rmtree(self.credential_dir(key), ignore_errors=True)

    def unmount(self, path: str) -> None:
        fuse_unmount(path, lazy=True, timeout=self.timeout)
        key = os.path.basename(path)
        if os.path.dirname(path) == os.path.normpath(self.mount_root) and key.startswith(
            KEY_PREFIX
        ):
            self._forget(key)

    def revive(self, data: dict[str, object], key: str) -> VolumeSpec:
        """Rebuild a spec for a remount; a private mount gets its credential file back."""
        stored = data.get("credential")
        if not isinstance(stored, dict):
            return VolumeSpec.from_public(data)
        kind = str(stored.get("kind"))
        try:
            with open(self.credential_file(key, kind), "rb") as handle:
                value = handle.read()
        except (OSError, KeyError):
            raise StateError(
                f"the credential of {key} is gone from {self.credential_dir(key)}; "
                "release the volume and publish it again with its credential"
            ) from None
        credential = Credential(kind, value)
        if credential.fingerprint != stored.get("fingerprint"):
            raise StateError(f"the credential file of {key} does not match the volume")
        return VolumeSpec.from_public(data, credential)

    def owns(self, entry: MountEntry) -> bool:
        # eosxd versions differ in what mountinfo shows (type fuse or fuse.eosxd, the
        # fsname or host:path as source), so the place decides: our mount root, our key.
        parent, key = os.path.split(entry.mount_point)
        return (
            entry.fstype in FSTYPES
            and parent == os.path.normpath(self.mount_root)
            and key.startswith(KEY_PREFIX)
        )
