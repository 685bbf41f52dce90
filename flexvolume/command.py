"""``hepvol flexvolume install [--plugin-dir DIR] [--uninstall]``: the FlexVolume subcommand."""

from __future__ import annotations

import argparse
import os

from flexvolume import install
from flexvolume.install import DEFAULT_PLUGIN_DIR
from mount_core.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["install"], help="install the cern/cvmfs and cern/eos drivers"
    )
    parser.add_argument("--plugin-dir", default=DEFAULT_PLUGIN_DIR,
                        help=f"kubelet's --volume-plugin-dir (default {DEFAULT_PLUGIN_DIR})")  # fmt: skip
    parser.add_argument("--uninstall", action="store_true", help="remove the drivers instead")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.uninstall:
        for path in install.uninstall(args.plugin_dir):
            print(f"removed {path}")
        return 0
    # The launcher names the config file this command used, so that a driver run
    # by kubelet (whose environment has no HEPVOL_CONFIG) sees the same settings.
    config_path = args.config or os.environ.get("HEPVOL_CONFIG")
    from flexvolume.relay import socket_path

    for path in install.install(args.plugin_dir, config_path, socket_path(config.state_dir)):
        print(f"installed {path}")
    if not config_path:
        print("the drivers read /etc/hepvol/config.toml (or the built-in defaults)")
    if any((args.state_dir, args.mount_root, args.local_root, args.target_root)):
        print("note: command-line settings are not carried into the drivers; "
              "put them in the config file")  # fmt: skip
    return 0
