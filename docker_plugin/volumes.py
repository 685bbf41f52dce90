"""Docker volumes of one driver, translated to the core.

A Docker volume is a name, a :class:`~mount_core.spec.VolumeSpec` and (EOS only)
an optional credential. Its record lives in the ledger's ``volumes`` table under
the driver name, so ``Get``/``List`` answer from the first call after a restart
or a reboot. Mount and Unmount are the core's ``acquire``/``release`` with the
consumer ``docker:<mount ID>`` (a multiset); each consumer row carries the driver
and volume name so that in-use checks and stale-consumer clean-up can find it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mount_core.consumer import Consumer
from mount_core.credentials import CredentialStore
from mount_core.errors import Busy, Conflict, InUse, InvalidSpec, NotFound
from mount_core.ledger import ConsumerRow, VolumeRow
from mount_core.manager import MountManager
from mount_core.spec import CVMFS_OPTIONS, EOS_OPTIONS, Credential, VolumeSpec, from_docker_name

NAME_MAX = 255
NAME_RULE = (
    "use 1-255 printable characters without '/', '..', NUL or newlines "
    "(CVMFS volumes are named repo, repo@tag or repo#hash)"
)
CREDENTIAL_TYPE = "credential-type"
CREDENTIAL = "credential"
#: The ``-o`` options each backend accepts (the repository is the volume name).
VALID_OPTIONS = {
    "cvmfs": tuple(o for o in CVMFS_OPTIONS if o != "repository"),
    "eos": (*EOS_OPTIONS, CREDENTIAL_TYPE, CREDENTIAL),
}


def check_name(name: object) -> str:
    """Refuse Docker volume names that could not safely name anything."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= NAME_MAX
        or "/" in name
        or ".." in name
        or not name.isprintable()  # control, format (bidi) and line-separator characters
    ):
        raise InvalidSpec("volume name", name, NAME_RULE)
    return name


def check_mount_id(ident: str) -> str:
    """Refuse mount IDs dockerd never sends (it sends 64 hex digits); they become ledger keys."""
    if len(ident) > NAME_MAX or not ident.isprintable():
        raise InvalidSpec("mount ID", ident, "use at most 255 printable characters")
    return ident


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True)
class Mounted:
    """What ``Get``/``List``/``Path`` show about one volume."""

    name: str
    mountpoint: str
    created_at: str
    status: dict[str, Any]


class DockerVolumes:
    """The volumes of one Docker driver (``cvmfs``, ``eos``, or a test's own name)."""

    def __init__(
        self,
        manager: MountManager,
        driver: str,
        backend: str,
        ready: threading.Event | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        if backend not in VALID_OPTIONS:
            raise InvalidSpec("driver backend", backend, "use cvmfs or eos")
        self.manager = manager
        self.driver = driver
        self.backend = backend
        self.credentials = CredentialStore(manager.config.state_dir)
        if ready is None:
            ready = threading.Event()
            ready.set()
        self.ready = ready
        self.ready_timeout = ready_timeout

    def _wait_ready(self) -> None:
        # Mounts wait for the start-up reconcile, which may unmount what it does
        # not know; Get, List and Path answer from the ledger at once.
        if not self.ready.wait(self.ready_timeout):
            raise Busy("the plugin is still reconciling its mounts after start-up; try again")

    # Translation -------------------------------------------------------------

    def parse(self, name: str, opts: Mapping[str, Any] | None) -> tuple[VolumeSpec, bool]:
        """The spec of a volume from its name and ``-o`` options; True when it has a secret."""
        check_name(name)
        if opts is not None and not isinstance(opts, Mapping):
            raise InvalidSpec("Opts", opts, "must be a JSON object of strings")
        options = dict(opts or {})
        valid = VALID_OPTIONS[self.backend]
        for key, value in options.items():
            if key not in valid and key != "repository":  # that one gets its own message
                raise InvalidSpec("option", key, f"valid options are: {', '.join(valid)}")
            if not isinstance(value, str):
                shown = "<secret>" if key == CREDENTIAL else value
                raise InvalidSpec(f"option {key}", shown, "must be a string")
        if self.backend == "cvmfs":
            return from_docker_name("cvmfs", name, options), False
        kind, secret = options.pop(CREDENTIAL_TYPE, ""), options.pop(CREDENTIAL, "")
        if bool(kind) != bool(secret):
            raise InvalidSpec(
                "option", CREDENTIAL if kind else CREDENTIAL_TYPE,
                f"give both -o {CREDENTIAL_TYPE}=... and -o {CREDENTIAL}=..., or neither",
            )  # fmt: skip
        credential = Credential(kind, secret.encode()) if kind else None
        spec = from_docker_name("eos", name, options)
        if credential is not None:
            spec = VolumeSpec.from_public(spec.to_public(), credential)
        return spec, credential is not None

    def _record(self, name: str) -> VolumeRow:
        row = self.manager.ledger.volume(self.driver, name)
        if row is None:
            raise NotFound(
                f"no {self.driver} volume named {name!r}; create it with "
                f"`docker volume create -d {self.driver} {name}`"
            )
        return row

    def spec(self, name: str) -> VolumeSpec:
        """The spec of an existing volume (with its credential put back)."""
        row = self._record(name)
        credential = None
        if "credential" in row.spec:
            credential = self.credentials.get(self.driver, name)
            if credential is None:
                raise NotFound(
                    f"the credential of volume {name!r} is missing from this node; "
                    "remove the volume and create it again"
                )
        return VolumeSpec.from_public(row.spec, credential)

    def holders(self, name: str, spec: VolumeSpec | None = None) -> list[ConsumerRow]:
        """The Docker mounts currently holding volume ``name``."""
        key = (spec or self.spec(name)).key
        return [
            row
            for row in self.manager.ledger.consumers(key)
            if row.kind == "docker"
            and row.info.get("driver") == self.driver
            and row.info.get("volume") == name
        ]

    # Protocol operations -------------------------------------------------------

    def create(self, name: str, opts: Mapping[str, Any] | None) -> None:
        """Record a volume; the same name with the same options again is fine."""
        spec, has_secret = self.parse(name, opts)
        existing = self.manager.ledger.volume(self.driver, name)
        if existing is not None:
            if existing.spec != spec.to_public():
                raise Conflict(
                    f"volume {name!r} already exists with other options "
                    f"({VolumeSpec.from_public(existing.spec).source}); "
                    f"remove it first with `docker volume rm {name}`"
                )
            return
        if has_secret:
            assert spec.credential is not None
            self.credentials.put(self.driver, name, spec.credential)
        self.manager.ledger.put_volume(self.driver, name, spec.to_public(), _timestamp(time.time()))

    def remove(self, name: str) -> None:
        """Forget a volume no container holds; removing an unknown one is not an error."""
        check_name(name)
        if self.manager.ledger.volume(self.driver, name) is None:
            return
        held = len(self.holders(name))
        if held:
            raise InUse(
                f"volume {name!r} is in use by {held} mount{'s' if held != 1 else ''} "
                "(running containers); stop or remove those containers first"
            )
        self.manager.ledger.delete_volume(self.driver, name)
        self.credentials.delete(self.driver, name)

    def mount(self, name: str, ident: str) -> str:
        """Hold the volume for Docker mount ``ident``; returns the path to bind."""
        check_name(name)
        spec = self.spec(name)
        self._wait_ready()
        consumer = Consumer(
            "docker", check_mount_id(ident), {"driver": self.driver, "volume": name}
        )
        return self.manager.acquire(spec, consumer)

    def unmount(self, name: str, ident: str) -> None:
        """Drop one hold of mount ``ident`` (an unknown one is not an error)."""
        check_name(name)
        self._wait_ready()
        self.manager.release(Consumer("docker", ident))

    def describe(self, name: str) -> Mounted:
        """Name, mountpoint (only while mounted), creation time and status of a volume."""
        check_name(name)
        return self._describe(self._record(name))

    def _describe(self, row: VolumeRow) -> Mounted:
        spec = VolumeSpec.from_public(row.spec)
        status: dict[str, Any] = {"source": spec.source}
        if "credential" in row.spec:
            credential = self.credentials.get(self.driver, row.name)
            if credential is None:
                status["message"] = "the credential is missing on this node; re-create the volume"
                return Mounted(row.name, "", row.created_at, status)
            spec = VolumeSpec.from_public(row.spec, credential)
        mountpoint = ""
        held = len(self.holders(row.name, spec))
        if held:
            mountpoint = self.manager.backing_path(spec) or ""
            backing = self.manager.ledger.backing(spec.key)
            status["mounts"] = held
            if backing is not None:
                status["condition"] = backing.condition
                if backing.message:
                    status["message"] = backing.message
        return Mounted(row.name, mountpoint, row.created_at, status)

    def list(self) -> list[Mounted]:
        """Every volume of this driver."""
        rows = self.manager.ledger.volumes(self.driver)
        return [self._describe(row) for row in rows]
