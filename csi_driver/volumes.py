"""From a CSI volume context (and secrets) to a :class:`~mount_core.spec.VolumeSpec`.

The volume context is the only source of the spec, whichever way the volume came:
PersistentVolume ``volumeAttributes``, StorageClass parameters returned by
CreateVolume, or inline ephemeral attributes. The volume id is an opaque handle,
recorded with the consumer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mount_core import spec as spec_module
from mount_core.errors import InvalidSpec
from mount_core.spec import Credential, VolumeSpec

#: Keys kubelet and the provisioner add; recorded with the consumer, never parsed.
K8S_PREFIX = "csi.storage.k8s.io/"
#: Every prefix of keys that belong to Kubernetes, not to the volume: kubelet's
#: pod info, and csi-provisioner's ``storage.kubernetes.io/csiProvisionerIdentity``
#: in the volumeAttributes of every PersistentVolume it creates.
KUBERNETES_PREFIXES = (K8S_PREFIX, "storage.kubernetes.io/")
#: Node publish secret keys: the key names the kind of EOS credential.
CREDENTIAL_KEYS = ("krb5", "oauth2", "eostoken")


def credential_from(backend: str, secrets: Mapping[str, str]) -> Credential | None:
    """The EOS credential in node publish secrets; errors never show secret values."""
    if not secrets:
        return None
    if backend != "eos":
        raise InvalidSpec("secrets", "<secret>", "CVMFS volumes take no secrets; remove "
                          "nodePublishSecretRef")  # fmt: skip
    unknown = sorted(k for k in secrets if k not in CREDENTIAL_KEYS)
    if unknown or len(secrets) != 1:
        raise InvalidSpec(
            "secrets", ",".join(sorted(secrets)),
            f"give exactly one key, one of {', '.join(CREDENTIAL_KEYS)}",
        )  # fmt: skip
    [(kind, value)] = secrets.items()
    return Credential(kind, value.encode())


def kubernetes_info(context: Mapping[str, str]) -> dict[str, str]:
    """The ``csi.storage.k8s.io/*`` keys without their prefix (service account tokens dropped)."""
    return {
        key[len(K8S_PREFIX) :]: value
        for key, value in context.items()
        if key.startswith(K8S_PREFIX) and "token" not in key.lower()
    }


#: kubelet publishes a pod's CSI volume at ``<kubelet dir>/pods/<pod uid>/volumes/...``.
_POD_TARGET = re.compile(r"/pods/([0-9A-Za-z-]{1,64})/volumes/")


def pod_info(context: Mapping[str, str], target: str) -> dict[str, str]:
    """The pod that holds a target, as FlexVolume consumers record it.

    ``pod`` (namespace/name) and ``pod_uid`` from kubelet's pod info (the CSIDriver's
    ``podInfoOnMount``); the uid from the target path when kubelet sent none.
    """
    info: dict[str, str] = {}
    name = context.get(K8S_PREFIX + "pod.name", "")
    if name and len(name) <= 253 and name.isprintable():
        namespace = context.get(K8S_PREFIX + "pod.namespace", "") or "default"
        info["pod"] = f"{namespace[:63]}/{name}"
    uid = context.get(K8S_PREFIX + "pod.uid", "")
    if not (uid and len(uid) <= 64 and uid.isprintable()):
        found = _POD_TARGET.search(target)
        uid = found.group(1) if found else ""
    if uid:
        info["pod_uid"] = uid
    return info


def spec_from_context(
    backend: str, context: Mapping[str, str], secrets: Mapping[str, str] | None = None
) -> VolumeSpec:
    """Parse a volume context; unknown keys are refused with the list of valid ones."""
    credential = credential_from(backend, secrets or {})
    return spec_module.from_options(
        backend, context, credential=credential, ignore=KUBERNETES_PREFIXES
    )


def parameters(context: Mapping[str, str]) -> dict[str, Any]:
    """The volume's own keys: what CreateVolume stores and returns as its context."""
    return {k: v for k, v in sorted(context.items()) if not k.startswith(KUBERNETES_PREFIXES)}


def is_ephemeral(context: Mapping[str, str]) -> bool:
    return context.get(K8S_PREFIX + "ephemeral") == "true"
