"""Stand-in for ``eosxd -ofsname=<name> <mountpoint>``.

Loads ``<config dir>/fuse.<name>.conf`` (JSON) like eosxd, checks the keys it
needs and, for a credential store, that the credential file is owned by root
with no group/other bits (eosxd refuses it otherwise). Serves
``<eos root>/<hostport><remotemountdir>`` as a real FUSE mount whose source is
the fsname, type ``fuse``.
"""

from __future__ import annotations

import getopt
import json
import stat
import sys
from pathlib import Path

from tests.standins import common


def main(argv: list[str]) -> None:
    try:
        options, args = getopt.gnu_getopt(argv, "fo:")
    except getopt.GetoptError as exc:
        common.die(f"error: {exc}", 1)
    flat = ",".join(value for flag, value in options if flag == "-o").split(",")
    fsname = next((o.split("=", 1)[1] for o in flat if o.startswith("fsname=")), "")
    config_path = Path(common.settings()["eos_config_dir"]) / f"fuse.{fsname}.conf"
    text = config_path.read_text() if config_path.is_file() else None
    common.record("eosxd", argv, config=text, config_path=str(config_path))
    if len(args) != 1 or not fsname:
        common.die("usage: eosxd -ofsname=<name> <mountpoint>", 1)
    if text is None:
        common.die(f"error: cannot read {config_path} and fsname is not <host>:<path>", 1)
    try:
        config = json.loads(text)
    except ValueError as exc:
        common.die(f"error: invalid json in {config_path}: {exc}", 1)
    for key in ("name", "hostport", "remotemountdir"):
        if not config.get(key):
            common.die(f"error: '{key}' missing in {config_path}", 1)
    store = config.get("auth", {}).get("credential-store")
    if store:
        files = [p for p in Path(store).iterdir()] if Path(store).is_dir() else []
        if not files:
            common.die(f"error: no credential in the credential store {store}", 1)
        for path in files:
            info = path.stat()
            if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o077:
                common.die(f"error: credential file {path} must be owned by root, mode 0600", 1)
    forced = common.forced_failure("eosxd")
    if forced is not None:
        common.die(f"error: failed to mount ({forced})", 1)
    remote = Path(common.settings()["eos_root"]) / config["hostport"]
    source = remote / config["remotemountdir"].strip("/")
    if not source.is_dir():
        common.die(f"error: MGM {config['hostport']} has no {config['remotemountdir']}", 1)
    if common.is_mounted(args[0]):
        common.die(f"error: {args[0]} is already a mount point", 1)
    common.serve(str(source), args[0], fsname, f"eosxd-{fsname}")


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
