"""Client configuration for private cvmfs2 mounts (pinned or with their own settings).

A private mount (``cvmfs2 -o config=FILE``) reads only FILE, so the file carries
everything: the site's settings as the client itself resolves them for the
repository (``cvmfs2 -o parse REPO /``, what ``cvmfs_config showconfig`` runs:
every site file in the client's order, shell conditionals and ``@fqrn@``
included), then the volume's ``clientConfig``, then what hepvol must control for
the mount to be private and pinned (its own cache and reload-socket directories,
and the pin key). Later assignments win, as when the client sources its files
one after another.
"""

from __future__ import annotations

import os
import shlex

from mount_core.backends.external import client_message, run_client
from mount_core.errors import InvalidSpec, MountFailed
from mount_core.spec import VolumeSpec

#: Keys hepvol sets itself; a volume's clientConfig may not set them.
OWNED_KEYS = (
    "CVMFS_CACHE_BASE",
    "CVMFS_CACHE_DIR",
    "CVMFS_WORKSPACE",
    "CVMFS_RELOAD_SOCKETS",
    "CVMFS_REPOSITORY_TAG",
    "CVMFS_REPOSITORY_DATE",
    "CVMFS_ROOT_HASH",
    "CVMFS_ALIEN_CACHE",
    "CVMFS_CONFIG_REPOSITORY",
)

#: The only keys a volume's clientConfig may set: network and cache tuning. A
#: clientConfig comes from whoever writes the pod (FlexVolume options, inline CSI
#: volumes), while cvmfs2 runs as root: keys naming host paths, users, helper
#: programs or trust anchors (CVMFS_DEBUGLOG, CVMFS_USYSLOG, CVMFS_USER,
#: CVMFS_AUTHZ_HELPER, CVMFS_KEYS_DIR, CVMFS_SUID, ...) stay the site's.
VOLUME_KEYS = (
    "CVMFS_HTTP_PROXY", "CVMFS_FALLBACK_PROXY", "CVMFS_PAC_URLS", "CVMFS_SERVER_URL",
    "CVMFS_USE_GEOAPI", "CVMFS_USE_CDN", "CVMFS_TIMEOUT", "CVMFS_TIMEOUT_DIRECT",
    "CVMFS_MAX_RETRIES", "CVMFS_BACKOFF_INIT", "CVMFS_BACKOFF_MAX", "CVMFS_LOW_SPEED_LIMIT",
    "CVMFS_PROXY_RESET_AFTER", "CVMFS_HOST_RESET_AFTER", "CVMFS_MAX_IPADDR_PER_PROXY",
    "CVMFS_IPFAMILY_PREFER", "CVMFS_DNS_RETRIES", "CVMFS_DNS_TIMEOUT", "CVMFS_DNS_MIN_TTL",
    "CVMFS_DNS_MAX_TTL", "CVMFS_KCACHE_TIMEOUT", "CVMFS_MAX_TTL", "CVMFS_AUTO_UPDATE",
    "CVMFS_FOLLOW_REDIRECTS", "CVMFS_SEND_INFO_HEADER", "CVMFS_QUOTA_LIMIT",
    "CVMFS_MEMCACHE_SIZE", "CVMFS_NFILES", "CVMFS_CLIENT_PROFILE",
)  # fmt: skip


def parse_assignments(text: str) -> dict[str, str]:
    """The ``CVMFS_NAME=value`` assignments of a shell config fragment, in order."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        name, sep, raw = line.partition("=")
        if not sep or not name.startswith("CVMFS_") or not name.replace("_", "").isalnum():
            continue
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            continue
        found[name] = " ".join(words)
    return found


def client_settings(cvmfs2: str, repository: str, timeout: float) -> dict[str, str]:
    """The site's settings for ``repository`` as the client resolves them."""
    result = run_client([cvmfs2, "-o", "parse", repository, "/"], timeout=timeout, what=repository)
    if result.returncode != 0:
        raise MountFailed(
            f"cannot mount {repository}: the client could not read the site configuration: "
            f"{client_message(result.stderr + result.stdout)!r}"
        )
    return parse_assignments(result.stdout)


def volume_settings(spec: VolumeSpec) -> dict[str, str]:
    """The volume's own ``clientConfig`` assignments; hepvol's keys are refused."""
    if not spec.client_config:
        return {}
    values = parse_assignments(spec.client_config)
    for name in values:
        if name in OWNED_KEYS:
            raise InvalidSpec(
                "clientConfig",
                name,
                "is set by hepvol for private mounts; pin with the tag, hash or date options "
                f"and leave out {', '.join(OWNED_KEYS)}",
            )
        if name not in VOLUME_KEYS:
            raise InvalidSpec(
                "clientConfig",
                name,
                "cannot be set per volume (host paths, users and programs are the site's); "
                f"a volume may set {', '.join(VOLUME_KEYS)}",
            )
    return values


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render(
    spec: VolumeSpec, site: dict[str, str], config_dir: str, cache_base: str, reload_sockets: str
) -> str:
    """The config file of the private mount serving ``spec``, from the site's ``site``."""
    assert spec.repository is not None
    # The site's own pins and cache placement are not this mount's.
    settings = {name: value for name, value in site.items() if name not in OWNED_KEYS}
    settings.update(volume_settings(spec))
    if not settings.get("CVMFS_HTTP_PROXY"):
        raise MountFailed(
            f"cannot mount {spec.source}: CVMFS_HTTP_PROXY is not set (set it in "
            f"{os.path.join(config_dir, 'default.local')} or in the volume's clientConfig)"
        )
    settings.update(
        CVMFS_CACHE_BASE=cache_base,
        CVMFS_RELOAD_SOCKETS=reload_sockets,
        CVMFS_SHARED_CACHE="no",
    )
    if spec.tag:
        settings["CVMFS_REPOSITORY_TAG"] = spec.tag
    elif spec.date:
        settings["CVMFS_REPOSITORY_DATE"] = spec.date
    elif spec.hash:
        settings["CVMFS_ROOT_HASH"] = spec.hash
        settings["CVMFS_AUTO_UPDATE"] = "no"
    lines = [f"# hepvol private mount of {spec.source}; generated, do not edit"]
    lines += [f"{name}={_quote(value)}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"
