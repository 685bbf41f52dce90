"""kubelet's ``mount`` options: the user's volume options plus ``kubernetes.io/*`` keys.

All values arrive as strings. The user's keys become a :class:`VolumeSpec`
through the core's parser; kubelet's keys give the access mode, the pod that
holds the volume and, for EOS, the credential from the pod's ``secretRef``.
Unknown keys are tolerated (kubelet adds new ones over time), invalid values are
refused naming the key.
"""

from __future__ import annotations

import binascii
from typing import Any

from mount_core.errors import InvalidSpec
from mount_core.spec import CVMFS_OPTIONS, Credential, VolumeSpec, from_options

KUBERNETES = "kubernetes.io/"
SECRET = KUBERNETES + "secret/"
READWRITE = KUBERNETES + "readwrite"
#: kubelet's keys recorded with the consumer, under these names.
POD_FIELDS = {
    KUBERNETES + "pod.name": "pod_name",
    KUBERNETES + "pod.namespace": "namespace",
    KUBERNETES + "pod.uid": "pod_uid",
    KUBERNETES + "serviceAccount.name": "service_account",
    KUBERNETES + "pvOrVolumeName": "volume",
}
#: Secret keys an ``cern/eos`` Secret may hold: one credential, named by its kind.
CREDENTIAL_KEYS = ("krb5", "oauth2", "eostoken")
_MAX_FIELD = 253


class MountRequest:
    """What one ``mount`` call asks for (a plain class: a dataclass costs import time)."""

    __slots__ = ("info", "readonly", "spec")

    def __init__(self, spec: VolumeSpec, readonly: bool, info: dict[str, Any]) -> None:
        self.spec = spec
        self.readonly = readonly
        self.info = info


def parse(backend: str, options: object) -> MountRequest:
    """Validate kubelet's option map for ``backend`` (``cvmfs`` or ``eos``)."""
    if not isinstance(options, dict):
        raise InvalidSpec("options", options, "must be a JSON object of string values")
    user = {k: v for k, v in options.items() if not k.startswith(KUBERNETES)}
    if backend == "cvmfs" and not user.get("repository"):
        raise InvalidSpec("repository", user.get("repository", ""), _missing_rule(user))
    spec = from_options(backend, user, credential=_credential(backend, options), strict=False)
    return MountRequest(spec, _readonly(options), _pod_info(options))


def _missing_rule(user: dict[str, Any]) -> str:
    rule = 'is required: set options: {repository: "atlas.cern.ch"} in the flexVolume'
    unknown = sorted(k for k in user if k not in CVMFS_OPTIONS)
    if unknown:
        rule += f" (unknown options given: {', '.join(unknown)[:200]})"
    return rule


def _readonly(options: dict[str, Any]) -> bool:
    mode = options.get(READWRITE, "ro")
    if mode not in ("ro", "rw", ""):
        raise InvalidSpec(READWRITE, mode, 'must be "ro" or "rw" (set by kubelet from readOnly)')
    return bool(mode != "rw")


def _pod_info(options: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key, name in POD_FIELDS.items():
        value = options.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or len(value) > _MAX_FIELD or not value.isprintable():
            raise InvalidSpec(
                key, value, f"must be printable text of at most {_MAX_FIELD} characters"
            )
        info[name] = value
    if "pod_name" in info:
        info["pod"] = f"{info.get('namespace', 'default')}/{info['pod_name']}"
    return info


def _credential(backend: str, options: dict[str, Any]) -> Credential | None:
    secrets = {k[len(SECRET) :]: v for k, v in options.items() if k.startswith(SECRET)}
    if not secrets:
        return None
    if backend != "eos":
        raise InvalidSpec("secretRef", ", ".join(sorted(secrets)), "CVMFS volumes take no secret")
    unknown = sorted(k for k in secrets if k not in CREDENTIAL_KEYS)
    if unknown or len(secrets) > 1:
        raise InvalidSpec(
            "secretRef keys", ", ".join(sorted(secrets)),
            f"the Secret must hold exactly one of the keys {', '.join(CREDENTIAL_KEYS)}",
        )  # fmt: skip
    [(kind, encoded)] = secrets.items()
    try:
        value = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
    except (AttributeError, UnicodeEncodeError, binascii.Error):
        raise InvalidSpec(SECRET + kind, "<secret>", "is not valid base64") from None
    return Credential(kind, value)
