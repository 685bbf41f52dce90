"""EOS instances from the hepvol config, and the ``fuse.<name>.conf`` eosxd reads.

An instance is one table of ``eos.instances``::

    [[eos.instances]]
    name = "eospublic"               # what volumes give as `instance`
    hostport = "eospublic.cern.ch"   # the MGM
    remotemountdir = "/eos/"         # what the mount shows at its root (default /eos/)
    auth = { krb5 = 1, sss = 0 }     # eosxd's auth settings, passed through

A volume's ``path`` is relative to the instance's ``remotemountdir``: with
``/eos/`` above, ``path = "/experiment/cms"`` is ``/eos/experiment/cms``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mount_core.errors import ConfigError, InvalidSpec

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?")
_HOSTPORT = re.compile(
    r"[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?(?:,[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?)*"
)
_AUTH_KEY = re.compile(r"[a-z0-9-]{1,64}")
#: What each credential kind enables in eosxd's auth section, and its file's name.
CREDENTIAL_AUTH = {
    "krb5": ({"krb5": 1}, "krb5cc"),
    "oauth2": ({"oauth2": 1}, "oauth2.token"),
    "eostoken": ({"ztn": 1}, "eos.token"),
}


@dataclass(frozen=True)
class Instance:
    """One EOS instance this node may mount."""

    name: str
    hostport: str
    remotemountdir: str = "/eos/"
    auth: Mapping[str, Any] = field(default_factory=dict)


def parse_instances(tables: tuple[Mapping[str, Any], ...]) -> dict[str, Instance]:
    """Validate ``eos.instances``; raises ConfigError naming the bad entry and field."""
    found: dict[str, Instance] = {}
    for index, table in enumerate(tables):
        where = f"eos.instances[{index}]"
        unknown = set(table) - {"name", "hostport", "remotemountdir", "auth"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; "
                              "known: name, hostport, remotemountdir, auth")  # fmt: skip
        name, hostport = table.get("name"), table.get("hostport")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}.name {name!r} must be lowercase letters, digits, . and -")
        if name in found:
            raise ConfigError(f"{where}.name {name!r} is given twice")
        if not isinstance(hostport, str) or not _HOSTPORT.fullmatch(hostport):
            raise ConfigError(f"{where}.hostport {hostport!r} must be an MGM host[:port]")
        remote = table.get("remotemountdir", "/eos/")
        if (
            not isinstance(remote, str)
            or not remote.startswith("/")
            or any(ord(c) < 32 for c in remote)
            or ".." in remote.split("/")
        ):
            raise ConfigError(f"{where}.remotemountdir {remote!r} must be an absolute path")
        auth = table.get("auth", {})
        if not isinstance(auth, Mapping) or not all(
            isinstance(k, str) and _AUTH_KEY.fullmatch(k) and isinstance(v, str | int | bool)
            for k, v in auth.items()
        ):
            raise ConfigError(f"{where}.auth must be a table of eosxd auth settings")
        found[name] = Instance(name, hostport, remote.rstrip("/") + "/", dict(auth))
    return found


def lookup(instances: Mapping[str, Instance], name: str | None) -> Instance:
    """The configured instance ``name``; InvalidSpec listing the configured ones otherwise."""
    if name is not None and name in instances:
        return instances[name]
    known = ", ".join(sorted(instances)) or "none: add [[eos.instances]] to the hepvol config"
    raise InvalidSpec(
        "instance", name or "", f"is not configured on this node (configured: {known})"
    )


def render(
    instance: Instance,
    fsname: str,
    mount_point: str,
    cache_dir: str,
    credential: tuple[str, str] | None = None,
) -> str:
    """The JSON of ``fuse.<fsname>.conf``.

    ``credential`` is (kind, file) for a private mount: its auth section then
    uses that credential alone (no shared mount, the caller's environment ignored).
    """
    auth: dict[str, Any] = dict(instance.auth)
    if credential is not None:
        kind, path = credential
        enable, _ = CREDENTIAL_AUTH[kind]
        auth.update({"shared-mount": 0, "ignore-containerization": 1, **enable})
        auth["credential-store"] = os.path.dirname(path) + "/"
    document = {
        "name": fsname,
        "hostport": instance.hostport,
        "remotemountdir": instance.remotemountdir,
        "localmountdir": mount_point,
        "mdcachedir": os.path.join(cache_dir, "md"),
        "cache": {
            "location": os.path.join(cache_dir, "data"),
            "journal": os.path.join(cache_dir, "journal"),
        },
        "auth": auth,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
