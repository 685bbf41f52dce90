"""Volume specs: what to mount, parsed and validated once for every front.

A :class:`VolumeSpec` is immutable and validated on construction, so anything
holding one may put its fields on a command line or into a path. Its :attr:`key`
names the backing mount that serves it (locks, paths and ledger rows use it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mount_core.errors import InvalidSpec

BACKENDS = ("cvmfs", "eos")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_REPOSITORY = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_TAG = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_HASH = re.compile(r"^[0-9a-f]{40,128}(?:-[a-z]+)?$")
#: The one form the CVMFS client takes for CVMFS_REPOSITORY_DATE (UTC).
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_INSTANCE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?$")
_CONFIG_LINE = re.compile(r"^(CVMFS_[A-Z0-9_]+)=([^\x00-\x1f]*)$")
_CREDENTIAL_KINDS = ("krb5", "oauth2", "eostoken")

#: Longest repository name. DNS allows 253, but hepvol builds file names from a
#: volume's key (``cvmfs-<name>-<12 hex>``, 19 more) plus at most 12 more
#: (``localfs-<key>.log``), and a file name holds 255 bytes; 200 leaves room.
MAX_REPOSITORY = 200
REPOSITORY_RULE = (
    "must be a fully qualified repository name such as atlas.cern.ch "
    "(lowercase labels of a-z, 0-9 and '-', separated by dots, "
    f"at most {MAX_REPOSITORY} characters)"
)
CVMFS_OPTIONS = ("repository", "tag", "hash", "date", "clientConfig")
EOS_OPTIONS = ("instance", "path")


@dataclass(frozen=True)
class Credential:
    """A secret given with a volume; its value never reaches logs, errors or repr."""

    kind: str
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in _CREDENTIAL_KINDS:
            raise InvalidSpec("credential type", self.kind, f"use one of {_CREDENTIAL_KINDS}")
        if not self.value or len(self.value) > 65536:
            raise InvalidSpec("credential", "<secret>", "must be 1 byte to 64 KiB long")

    @property
    def fingerprint(self) -> str:
        """A short digest that tells credentials apart without revealing them."""
        import hashlib  # here: FlexVolume calls pay for every import

        return hashlib.sha256(self.kind.encode() + b"\0" + self.value).hexdigest()[:16]


@dataclass(frozen=True)
class VolumeSpec:
    """What to mount. Construct through :func:`cvmfs`, :func:`eos` or the parsers."""

    backend: str
    repository: str | None = None
    tag: str | None = None
    hash: str | None = None
    date: str | None = None
    client_config: str | None = None
    instance: str | None = None
    path: str | None = None
    credential: Credential | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidSpec("backend", self.backend, f"use one of {', '.join(BACKENDS)}")
        if self.backend == "cvmfs":
            self._check_cvmfs()
        else:
            self._check_eos()

    def _check_cvmfs(self) -> None:
        if self.repository is not None:
            check_repository(self.repository)
        pins = [name for name in ("tag", "hash", "date") if getattr(self, name) is not None]
        if len(pins) > 1:
            raise InvalidSpec(pins[1], getattr(self, pins[1]), "give only one of tag, hash, date")
        if self.repository is None and (pins or self.client_config is not None):
            raise InvalidSpec("repository", "", "is required with tag, hash, date or clientConfig")
        if self.tag is not None and not _TAG.fullmatch(self.tag):
            raise InvalidSpec("tag", self.tag, "use 1-128 characters of A-Z a-z 0-9 . _ -")
        if self.hash is not None and not _HASH.fullmatch(self.hash):
            raise InvalidSpec("hash", self.hash, "must be a lowercase hex root hash (40+ digits)")
        if self.date is not None:
            check_date(self.date)
        if self.client_config is not None:
            check_client_config(self.client_config)
        if self.instance is not None or self.path is not None or self.credential is not None:
            raise InvalidSpec("backend", "cvmfs", "instance, path and credentials are EOS options")

    def _check_eos(self) -> None:
        if self.instance is None:
            raise InvalidSpec("instance", "", "is required for EOS volumes (e.g. eospublic)")
        if not _INSTANCE.fullmatch(self.instance):
            raise InvalidSpec(
                "instance", self.instance, "use lowercase letters, digits, '.' and '-' (max 64)"
            )
        if self.path is not None:
            check_remote_path(self.path)
        if any(getattr(self, n) is not None for n in CVMFS_OPTIONS[:4]) or self.client_config:
            raise InvalidSpec("backend", "eos", "repository and pins are CVMFS options")

    @property
    def source(self) -> str:
        """The human name of what is mounted (no secrets)."""
        if self.backend == "cvmfs":
            name = self.repository or "*"
            if self.tag:
                return f"{name}@{self.tag}"
            if self.hash:
                return f"{name}#{self.hash}"
            if self.date:
                return f"{name}@{self.date}"
            return name
        return f"{self.instance}:{self.path or '/'}"

    @property
    def pinned(self) -> bool:
        return any((self.tag, self.hash, self.date, self.client_config))

    @property
    def key(self) -> str:
        """Stable name of the backing mount serving this spec (safe as a file name).

        EOS volumes of one instance share a backing mount (the path is bound per
        consumer), so the path is not part of the key; a credential is.
        """
        if self.backend == "cvmfs":
            base = f"cvmfs-{self.repository or 'tree'}"
            identity: dict[str, Any] = {
                "tag": self.tag,
                "hash": self.hash,
                "date": self.date,
                "config": self.client_config,
            }
            if not self.pinned:
                return base
        else:
            base = f"eos-{self.instance}"
            if self.credential is None:
                return base
            identity = {"credential": self.credential.kind + ":" + self.credential.fingerprint}
        import hashlib

        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{base}-{digest[:12]}"

    @property
    def subpath(self) -> str:
        """Path inside the backing mount that a consumer sees ('' = its root)."""
        if self.backend == "eos" and self.path:
            return self.path.strip("/")
        return ""

    def to_public(self) -> dict[str, Any]:
        """Fields safe to store and show: everything but the credential's value."""
        data: dict[str, Any] = {
            k: v
            for k, v in {
                "backend": self.backend,
                "repository": self.repository,
                "tag": self.tag,
                "hash": self.hash,
                "date": self.date,
                "clientConfig": self.client_config,
                "instance": self.instance,
                "path": self.path,
            }.items()
            if v is not None
        }
        if self.credential is not None:
            data["credential"] = {
                "kind": self.credential.kind,
                "fingerprint": self.credential.fingerprint,
            }
        return data

    @classmethod
    def from_public(
        cls, data: Mapping[str, Any], credential: Credential | None = None
    ) -> VolumeSpec:
        """Rebuild a spec stored with :meth:`to_public` (the credential comes separately)."""
        return cls(
            backend=data["backend"],
            repository=data.get("repository"),
            tag=data.get("tag"),
            hash=data.get("hash"),
            date=data.get("date"),
            client_config=data.get("clientConfig"),
            instance=data.get("instance"),
            path=data.get("path"),
            credential=credential,
        )


def check_repository(name: object) -> str:
    if not isinstance(name, str) or len(name) > MAX_REPOSITORY or not _REPOSITORY.fullmatch(name):
        raise InvalidSpec("repository", name, REPOSITORY_RULE)
    return name


def check_date(value: str) -> str:
    rule = "must be a UTC time written YYYY-MM-DDTHH:MM:SSZ, e.g. 2024-05-01T00:00:00Z"
    if not _DATE.fullmatch(value):
        raise InvalidSpec("date", value, rule)
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise InvalidSpec("date", value, rule) from None
    return value


def check_client_config(text: str) -> str:
    rule = "must be lines of CVMFS_NAME=value (comments with #), at most 64 KiB"
    if len(text) > 65536 or "\x00" in text:
        raise InvalidSpec("clientConfig", text, rule)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not _CONFIG_LINE.fullmatch(stripped):
            raise InvalidSpec("clientConfig", line, rule)
    return text


def check_remote_path(path: str) -> str:
    rule = (
        "must be an absolute UTF-8 path such as /eos/experiment/foo, "
        "without '..' or control characters"
    )
    if (
        not path.startswith("/")
        or len(path) > 4096
        or any(ord(c) < 32 or ord(c) == 127 for c in path)
        or any(part in (".", "..") for part in path.split("/"))
        or any("\ud800" <= c <= "\udfff" for c in path)  # not UTF-8 (lone surrogates)
    ):
        raise InvalidSpec("path", path, rule)
    return path


def _option(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidSpec(name, value, "must be a string")
    return value


def from_options(
    backend: str,
    options: Mapping[str, Any],
    *,
    credential: Credential | None = None,
    ignore: tuple[str, ...] = (),
    strict: bool = True,
) -> VolumeSpec:
    """Parse the option map shared by CSI, FlexVolume and Docker ``-o`` options.

    With ``strict``, keys other than the backend's options (and those starting with
    a prefix in ``ignore``) are refused with the list of valid ones.
    """
    valid = CVMFS_OPTIONS if backend == "cvmfs" else EOS_OPTIONS
    if strict:
        for key in options:
            if key not in valid and not any(key.startswith(p) for p in ignore):
                raise InvalidSpec("option", key, f"valid options are: {', '.join(valid)}")
    if backend == "cvmfs":
        return VolumeSpec(
            backend="cvmfs",
            repository=_option(options, "repository"),
            tag=_option(options, "tag"),
            hash=_option(options, "hash"),
            date=_option(options, "date"),
            client_config=_option(options, "clientConfig"),
        )
    return VolumeSpec(
        backend="eos",
        instance=_option(options, "instance"),
        path=_option(options, "path"),
        credential=credential,
    )


def from_docker_name(backend: str, name: str, opts: Mapping[str, Any] | None = None) -> VolumeSpec:
    """Parse a Docker volume name (``repo``, ``repo@tag``, ``repo#hash``) plus ``-o`` options."""
    opts = dict(opts or {})
    if backend == "cvmfs":
        repository, tag, hash_ = name, None, None
        if "@" in name:
            repository, _, tag = name.partition("@")
        elif "#" in name:
            repository, _, hash_ = name.partition("#")
        if tag == "" or hash_ == "":
            raise InvalidSpec("volume name", name, "use repo, repo@tag or repo#hash")
        if "repository" in opts:
            raise InvalidSpec("option", "repository", "the repository is the volume name")
        merged: dict[str, Any] = {"repository": repository, **opts}
        for pin, value in (("tag", tag), ("hash", hash_)):
            if value is not None:
                if merged.get(pin) not in (None, value):
                    raise InvalidSpec(pin, opts[pin], f"conflicts with the {pin} in the name")
                merged[pin] = value
        return from_options("cvmfs", merged)
    return from_options("eos", opts)
