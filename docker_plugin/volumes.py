"""Docker volumes of one driver, translated to the core.

A Docker volume is a name, a :class:`~mount_core.spec.VolumeSpec` and (EOS only)
an optional credential: a core named volume (:mod:`mount_core.volumes`) of the
driver, so ``Get``/``List`` answer from the first call after a restart or a
reboot. Mount and Unmount are the core's ``acquire``/``release`` with the
consumer ``docker:<mount ID>`` (a multiset); each consumer row carries the driver
and volume name so that in-use checks and stale-consumer clean-up can find it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mount_core import volumes
from mount_core.consumer import Consumer, stale_message
from mount_core.credentials import NamedCredentials, read_private_file
from mount_core.errors import Busy, Conflict, InvalidSpec, NotFound
from mount_core.manager import ConsumerRow, MountManager
from mount_core.spec import CVMFS_OPTIONS, EOS_OPTIONS, Credential, VolumeSpec, from_docker_name
from mount_core.volumes import NAME_MAX, NamedVolume, NamedVolumes, VolumeExists

NAME_RULE = (
    "use 1-255 printable characters without '/', '..', NUL or newlines "
    "(CVMFS volumes are named repo, repo@tag or repo#hash)"
)
CREDENTIAL_TYPE = "credential-type"
CREDENTIAL_FILE = "credential-file"
CREDENTIAL_NAME = "credential-name"
#: Refused: Docker shows every ``-o`` option in ``docker volume inspect`` and keeps it
#: in its own metadata, so a secret is only ever given by reference.
CREDENTIAL = "credential"
BY_REFERENCE = (
    "Docker shows and keeps every -o option, so a secret is never one: register it with "
    "`hepvol credential add NAME --type KIND --file FILE` and give -o credential-name=NAME, "
    "or give -o credential-type=KIND -o credential-file=PATH (a file only root can read)"
)
#: The ``-o`` options each backend accepts (the repository is the volume name).
VALID_OPTIONS = {
    "cvmfs": tuple(o for o in CVMFS_OPTIONS if o != "repository"),
    "eos": (*EOS_OPTIONS, CREDENTIAL_TYPE, CREDENTIAL_FILE, CREDENTIAL_NAME),
}


def check_name(name: object) -> str:
    """Refuse Docker volume names that could not safely name anything."""
    return volumes.check_name(name, rule=NAME_RULE)


def check_mount_id(ident: str) -> str:
    """Refuse mount IDs dockerd never sends (it sends 64 hex digits); they become ledger keys."""
    if len(ident) > NAME_MAX or not ident.isprintable():
        raise InvalidSpec("mount ID", ident, "use at most 255 printable characters")
    return ident


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
        self.volumes = NamedVolumes(manager, driver)
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
            if key == CREDENTIAL and self.backend == "eos":
                raise InvalidSpec("option", CREDENTIAL, BY_REFERENCE)
            if key not in valid and key != "repository":  # that one gets its own message
                raise InvalidSpec("option", key, f"valid options are: {', '.join(valid)}")
            if not isinstance(value, str):
                shown = "<secret>" if key == CREDENTIAL else value
                raise InvalidSpec(f"option {key}", shown, "must be a string")
        if self.backend == "cvmfs":
            return from_docker_name("cvmfs", name, options), False
        credential = self._credential(options)
        spec = from_docker_name("eos", name, options)
        if credential is not None:
            spec = VolumeSpec.from_public(spec.to_public(), credential)
        return spec, credential is not None

    def _credential(self, options: dict[str, str]) -> Credential | None:
        """The credential a volume refers to (popped from ``options``), read now."""
        kind = options.pop(CREDENTIAL_TYPE, "")
        path, name = options.pop(CREDENTIAL_FILE, ""), options.pop(CREDENTIAL_NAME, "")
        if path and name:
            raise InvalidSpec("option", CREDENTIAL_FILE, f"give -o {CREDENTIAL_FILE}=... or "
                              f"-o {CREDENTIAL_NAME}=..., not both")  # fmt: skip
        if name:
            credential = NamedCredentials(self.manager.config.state_dir).get(name)
            if kind and kind != credential.kind:
                raise InvalidSpec(
                    CREDENTIAL_TYPE, kind, f"credential {name!r} is {credential.kind}"
                )
            return credential
        if bool(kind) != bool(path):
            raise InvalidSpec(
                "option", CREDENTIAL_FILE if kind else CREDENTIAL_TYPE,
                f"give both -o {CREDENTIAL_TYPE}=... and -o {CREDENTIAL_FILE}=..., or neither",
            )  # fmt: skip
        if not path:
            return None
        Credential(kind, b"-")  # the kind first: a bad one is refused before the file is read
        return read_private_file(path, kind)

    def _record(self, name: str) -> NamedVolume:
        row = self.volumes.get(name)
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
        if "credential" in row.record:
            credential = self.volumes.credential(name)
            if credential is None:
                raise NotFound(
                    f"the credential of volume {name!r} is missing from this node; "
                    "remove the volume and create it again"
                )
        return VolumeSpec.from_public(row.record, credential)

    def holders(self, name: str, spec: VolumeSpec | None = None) -> list[ConsumerRow]:
        """The Docker mounts currently holding volume ``name``."""
        key = (spec or self.spec(name)).key
        return [
            row
            for row in self.manager.consumers(key)
            if row.kind == "docker"
            and row.info.get("driver") == self.driver
            and row.info.get("volume") == name
        ]

    # Protocol operations -------------------------------------------------------

    def create(self, name: str, opts: Mapping[str, Any] | None) -> None:
        """Record a volume; the same name with the same options again is fine."""
        spec, has_secret = self.parse(name, opts)
        self.manager.check(spec)  # not only at the first `docker run`
        try:
            self.volumes.create(name, spec.to_public(), spec.credential if has_secret else None)
        except VolumeExists as exists:
            raise Conflict(
                f"volume {name!r} already exists with other options "
                f"({VolumeSpec.from_public(exists.existing.record).source}); "
                f"remove it first with `docker volume rm {name}`"
            ) from None

    def remove(self, name: str) -> None:
        """Forget a volume no container holds; removing an unknown one is not an error."""
        check_name(name)

        def in_use(volume: NamedVolume) -> str:
            held = len(self.holders(name))
            if not held:
                return ""
            return (
                f"volume {name!r} is in use by {held} mount{'s' if held != 1 else ''} "
                "(running containers); stop or remove those containers first"
            )

        self.volumes.remove(name, in_use)

    def mount(self, name: str, ident: str) -> str:
        """Hold the volume for Docker mount ``ident``; returns the path to bind."""
        check_name(name)
        self._wait_ready()
        consumer = Consumer(
            "docker", check_mount_id(ident), {"driver": self.driver, "volume": name}
        )
        with self.volumes.locked(name, shared=True):  # not removed while it is mounted
            return self.manager.acquire(self.spec(name), consumer)

    def unmount(self, name: str, ident: str) -> None:
        """Drop one hold of mount ``ident`` (an unknown one is not an error)."""
        check_name(name)
        self._wait_ready()
        self.manager.release(Consumer("docker", ident))

    def describe(self, name: str) -> Mounted:
        """Name, mountpoint (only while mounted), creation time and status of a volume."""
        check_name(name)
        return self._describe(self._record(name))

    def _describe(self, row: NamedVolume) -> Mounted:
        spec = VolumeSpec.from_public(row.record)
        status: dict[str, Any] = {"source": spec.source}
        if "credential" in row.record:
            credential = self.volumes.credential(row.name)
            if credential is None:
                status["message"] = "the credential is missing on this node; re-create the volume"
                return Mounted(row.name, "", row.created_at, status)
            spec = VolumeSpec.from_public(row.record, credential)
        mountpoint = ""
        holding = self.holders(row.name, spec)
        held = len(holding)
        if held:
            mountpoint = self.manager.backing_path(spec) or ""
            status["mounts"] = held
            with contextlib.suppress(NotFound):
                condition, message = self.manager.condition(spec.key)
                status["condition"] = condition
                if message:
                    status["message"] = message
            stale = sum(self.manager.is_stale(h) for h in holding)
            if stale and status.get("condition") == "healthy":
                status["stale_mounts"] = stale
                status["message"] = f"{stale} of the mounts: {stale_message('docker')}"
        return Mounted(row.name, mountpoint, row.created_at, status)

    def list(self) -> list[Mounted]:
        """Every volume of this driver."""
        return [self._describe(row) for row in self.volumes.list()]
