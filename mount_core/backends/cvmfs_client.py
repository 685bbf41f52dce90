"""What a cvmfs2 mount needs beyond its command line, and cleaning up after one.

* :func:`client_user`: the site's ``CVMFS_USER``. ``mount.cvmfs`` starts cvmfs2
  with ``uid=``/``gid=`` of that user and the user's groups (cvmfs2 drops to it
  before it opens ``/dev/fuse``, which is often group ``fuse`` only); a private
  mount gets the same, and its cache and reload-socket directories belong to it.
* :func:`client_pids`: the cvmfs2 processes serving a mount point, or using a
  private mount's config file (found by their command line, which cvmfs2 keeps
  as ``... -o OPTIONS <repo> <mount point>`` after it daemonises), so that a
  failed or given-up mount leaves no process behind.
* :func:`missing`: after the client failed, what does not exist (a tag, a date,
  a root hash, the repository), decided from the client's words and, where they
  are ambiguous ("file catalog failure" is also what a dead server gives), from
  the server's own answer (HTTP 404) to the files the client asked for.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from mount_core.errors import Unavailable
from mount_core.spec import VolumeSpec

#: fsname of a private mount: ``hepvol:<key>`` (a bare ``cvmfs2 -o config=`` mount
#: would show ``/dev/fuse``), so that hepvol recognises it in mountinfo.
PRIVATE_PREFIX = "hepvol:"
#: How long the server is asked, in all, whether a repository, tag or hash exists.
LOOKUP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ClientUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def client_user(settings: dict[str, str]) -> ClientUser:
    """The user cvmfs2 runs as (``CVMFS_USER``, default ``cvmfs``) and its groups."""
    name = settings.get("CVMFS_USER") or "cvmfs"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise Unavailable(
            f"CVMFS_USER {name!r} does not exist on this node: install the CVMFS client "
            "(it creates the user) or fix CVMFS_USER in the site configuration"
        ) from None
    groups = set(os.getgrouplist(name, entry.pw_gid))
    # mount.cvmfs adds the group owning /dev/fuse (Debian: fuse) the same way.
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam("fuse").gr_gid)
    return ClientUser(name, entry.pw_uid, entry.pw_gid, tuple(sorted(groups)))


def mount_options(config_file: str, key: str, user: ClientUser) -> str:
    """``-o`` of a private cvmfs2 mount: what mount.cvmfs gives a system mount."""
    return (
        f"config={config_file},fsname={PRIVATE_PREFIX}{key},allow_other,"
        f"uid={user.uid},gid={user.gid}"
    )


def _cmdline(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def client_pids(*, mount_point: str | None = None, config_file: str | None = None) -> list[int]:
    """cvmfs2 processes serving ``mount_point`` or reading ``config_file``."""
    found = []
    point = os.fsencode(mount_point) if mount_point else None
    config = os.fsencode(f"config={config_file}") if config_file else None
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        argv = _cmdline(pid)
        if len(argv) < 3 or not any(b"cvmfs2" in arg for arg in argv[:-2]):
            continue
        if (point is not None and argv[-1] == point) or (
            config is not None and any(arg.startswith(config) for arg in argv)
        ):
            found.append(int(pid))
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def stop(pids: list[int], grace: float) -> None:
    """Let clients whose mount is gone exit by themselves for ``grace`` s, then kill them."""
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    kill(pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _urls(settings: dict[str, str], repository: str) -> list[str]:
    org = repository.split(".", 1)[0]
    raw = settings.get("CVMFS_SERVER_URL", "")
    return [
        url.replace("@fqrn@", repository).replace("@org@", org).rstrip("/")
        for url in raw.split(";")
        if url.strip()
    ]


def _status(url: str, proxies: list[str], deadline: float) -> int | None:
    """HTTP status of ``url`` through the first proxy that answers (None: none did)."""
    if not url.startswith(("http://", "https://")):
        return None
    for proxy in proxies:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        handler = urllib.request.ProxyHandler({} if proxy == "DIRECT" else {"http": proxy})
        opener = urllib.request.build_opener(handler)
        try:
            request = urllib.request.Request(url, method="HEAD")  # noqa: S310 - http(s) only
            with opener.open(request, timeout=left):
                return 200
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            continue
    return None


def _all_missing(urls: list[str], suffix: str, proxies: list[str], deadline: float) -> bool:
    statuses = [_status(url + suffix, proxies, deadline) for url in urls]
    return bool(statuses) and all(status == 404 for status in statuses)


def missing(spec: VolumeSpec, output: str, settings: dict[str, str]) -> str | None:
    """What the failed mount of ``spec`` lacked, or None when nothing is missing."""
    assert spec.repository is not None
    repo = spec.repository
    if "no such tag" in output:
        return f"repository {repo} has no tag {spec.tag!r}"
    if "no repository state as early as" in output:
        return f"repository {repo} has no revision as early as {spec.date}"
    if "(16 - " not in output and "(15 - " not in output:
        return None
    urls = _urls(settings, repo)
    if not urls:
        return (f"repository {repo} is not known on this node (the client's configuration "
                "has no CVMFS_SERVER_URL for it)")  # fmt: skip
    first_group = settings.get("CVMFS_HTTP_PROXY", "DIRECT").split(";")[0]
    proxies = [p.strip() for p in first_group.split("|") if p.strip()] or ["DIRECT"]
    deadline = time.monotonic() + LOOKUP_TIMEOUT
    if _all_missing(urls, "/.cvmfspublished", proxies, deadline):
        return f"repository {repo} does not exist on {', '.join(urls)}"
    catalog = f"/data/{spec.hash[:2]}/{spec.hash[2:]}C" if spec.hash else ""
    if catalog and _all_missing(urls, catalog, proxies, deadline):
        return f"repository {repo} has no revision with root hash {spec.hash}"
    return None
