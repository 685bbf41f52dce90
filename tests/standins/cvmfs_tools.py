"""Stand-ins for ``mount.cvmfs`` and ``cvmfs2``: the real command lines, checks and exit codes.

``mount.cvmfs <repo> <dir> [-o opts]`` (as mount(8) runs it) reads the site
config in the client's order and exits 1 with the helper's own words when a check
fails before the client would start (``Invalid repository: X``, ``CVMFS_HTTP_PROXY
required``, ``Repository X is already mounted on Y``). ``cvmfs2 -o config=FILE
<repo> <dir>`` reads only FILE and needs its cache, sockets and proxy settings; it
shows the ``fsname=`` given in ``-o`` (``/dev/fuse`` without one). ``cvmfs2 -o parse
<repo> /`` prints the resolved site config as ``NAME=value    # from FILE`` lines.
Both then serve ``<repositories>/<repo>`` (``<repo>@<tag>``, ``<repo>#<hash>``,
``<repo>@<date>`` when pinned) as a real FUSE mount showing ``cvmfs2`` of type
``fuse``, or fail as the real client does: a tag or date the repository lacks is
``(22 - history init failure)``, anything else missing ``(16 - file catalog
failure)``; cvmfs2 exits with that code, the helper with 32. A cvmfs2 on a cache
that a running one holds says "already mounted" and exits 0 without mounting.
tests/realclient/test_standin_drift.py compares them with the real client.
"""

from __future__ import annotations

import getopt
import os
import re
import shlex
import sys
from pathlib import Path

from tests.standins import common

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CATALOG_FAILURE = "Failed to initialize root file catalog (16 - file catalog failure)"


def parse(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.strip().removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if sep and name.startswith("CVMFS_"):
            found[name] = " ".join(shlex.split(value, comments=True))
    return found


def site_files(config_dir: Path, fqrn: str) -> list[Path]:
    domain = fqrn.split(".", 1)[1]
    files = [config_dir / "default.conf", *sorted((config_dir / "default.d").glob("*.conf"))]
    files += [config_dir / "default.local", config_dir / "domain.d" / f"{domain}.conf",
              config_dir / "domain.d" / f"{domain}.local", config_dir / "config.d" / f"{fqrn}.conf",
              config_dir / "config.d" / f"{fqrn}.local"]  # fmt: skip
    return [path for path in files if path.is_file()]


def site_config(config_dir: Path, fqrn: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for path in site_files(config_dir, fqrn):
        values.update(parse(path.read_text()))
    return values


def print_parsed(fqrn: str) -> None:
    """``cvmfs2 -o parse``: the resolved settings, each with the file it came from."""
    origin: dict[str, tuple[str, Path]] = {}
    for path in site_files(Path(common.settings()["cvmfs_config_dir"]), fqrn):
        for name, value in parse(path.read_text()).items():
            origin[name] = (value.replace("@fqrn@", fqrn), path)
    print("# CernVM-FS parameters:")
    for name in sorted(origin):
        value, path = origin[name]
        print(f"{name}={shlex.quote(value)}    # from {path}")


def _source(fqrn: str, values: dict[str, str]) -> Path:
    repos = Path(common.settings()["repos"])
    if values.get("CVMFS_REPOSITORY_TAG"):
        return repos / f"{fqrn}@{values['CVMFS_REPOSITORY_TAG']}"
    if values.get("CVMFS_ROOT_HASH"):
        return repos / f"{fqrn}#{values['CVMFS_ROOT_HASH']}"
    if values.get("CVMFS_REPOSITORY_DATE"):
        return repos / f"{fqrn}@{values['CVMFS_REPOSITORY_DATE']}"
    return repos / fqrn


def _start(
    tool: str, fqrn: str, mount_point: str, values: dict[str, str], fsname: str = "cvmfs2"
) -> None:
    forced = common.forced_failure(tool)
    if forced is not None:
        # The helper reports cvmfs2's failure as 32; cvmfs2 itself exits with its code.
        code = 32 if tool == "mount.cvmfs" else int(forced.split(" ", 1)[0])
        common.die(f"CernVM-FS: loading Fuse module... Failed to mount ({forced})", code)
    source = _source(fqrn, values)
    if not source.is_dir():
        # The real client: a missing tag or date is a history failure (22), anything
        # else it cannot find a catalog failure (16); the helper reports either as 32.
        tag, date = values.get("CVMFS_REPOSITORY_TAG"), values.get("CVMFS_REPOSITORY_DATE")
        if tag and (Path(common.settings()["repos"]) / fqrn).is_dir():
            line, code = f"no such tag: {tag} (22 - history init failure)", 22
        elif date and (Path(common.settings()["repos"]) / fqrn).is_dir():
            line, code = f"no repository state as early as {date} (22 - history init failure)", 22
        else:
            line, code = _CATALOG_FAILURE, 16
        common.die(
            f"CernVM-FS: loading Fuse module... {line}", 32 if tool == "mount.cvmfs" else code
        )
    cache = values.get("CVMFS_CACHE_BASE")
    # The real client locks a repository in its cache (lock.<repo>): one per both.
    holder = common.control() / "caches" / f"{(cache or '').replace('/', '%')}%{fqrn}"
    if cache and holder.exists() and common.is_mounted(holder.read_text()):
        # The real cvmfs2 on a cache another cvmfs2 holds: says so and exits 0.
        print(f"CernVM-FS: repository {fqrn} already mounted on {holder.read_text()}")
        return
    name = f"{tool}-{os.path.basename(mount_point)}"
    common.serve(str(source), mount_point, fsname, name)
    if cache:
        holder.parent.mkdir(exist_ok=True)
        holder.write_text(mount_point)
    print(f"CernVM-FS: mounted cvmfs on {mount_point}")


def mount_helper(argv: list[str]) -> None:
    try:
        _options, args = getopt.gnu_getopt(argv, "vfnho:")
    except getopt.GetoptError:
        common.die("Mount helper for CernVM-FS.  Used by mount(8)", 1)
    common.record("mount.cvmfs", argv)
    if len(args) != 2:
        common.die("Mount helper for CernVM-FS.  Used by mount(8)", 1)
    device, mount_point = os.path.basename(args[0]), args[1]
    if not _REPO.fullmatch(device):
        common.die(f"Invalid repository: {device}", 1)
    if "." not in device:
        common.die("CVMFS_DEFAULT_DOMAIN missing", 1)
    values = site_config(Path(common.settings()["cvmfs_config_dir"]), device)
    if not os.path.exists("/dev/fuse"):
        common.die("Fuse not loaded", 1)
    if not values.get("CVMFS_HTTP_PROXY"):
        common.die("CVMFS_HTTP_PROXY required", 1)
    registry = common.control() / "mounted"
    registry.mkdir(exist_ok=True)
    previous = registry / device
    if previous.exists():
        where = previous.read_text()
        if common.is_mounted(where, "cvmfs2"):
            common.die(f"Repository {device} is already mounted on {where}", 1)
    _start("mount.cvmfs", device, mount_point, values)
    previous.write_text(mount_point)


def cvmfs2(argv: list[str]) -> None:
    try:
        options, args = getopt.gnu_getopt(argv, "fdo:")
    except getopt.GetoptError as exc:
        common.die(f"Invalid option: {exc}", 1)
    flat = ",".join(value for flag, value in options if flag == "-o").split(",")
    if "parse" in flat and len(args) == 2:
        print_parsed(args[0])
        return
    config_file = next((o.split("=", 1)[1] for o in flat if o.startswith("config=")), None)
    fsname = next((o.split("=", 1)[1] for o in flat if o.startswith("fsname=")), "/dev/fuse")
    text = Path(config_file).read_text() if config_file and Path(config_file).is_file() else None
    common.record("cvmfs2", argv, config=text)
    if len(args) != 2 or text is None:
        common.die("usage: cvmfs2 [-h] [-V] -o config=<config file> <fqrn> <mountpoint>", 1)
    values = parse(text)
    for key in ("CVMFS_CACHE_BASE", "CVMFS_RELOAD_SOCKETS", "CVMFS_HTTP_PROXY"):
        if not values.get(key):
            common.die(f"Failed to read configuration: {key} required (1 - options failure)", 1)
    if not os.path.isdir(values["CVMFS_CACHE_BASE"]):
        common.die("Failed to setup cache in {} (9 - cache directory/plugin problem)".format(
            values["CVMFS_CACHE_BASE"]), 9)  # fmt: skip
    _start("cvmfs2", args[0], args[1], values, fsname)


if __name__ == "__main__":
    {"mount.cvmfs": mount_helper, "cvmfs2": cvmfs2}[sys.argv[1]](sys.argv[2:])
