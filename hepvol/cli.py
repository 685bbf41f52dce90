"""The ``hepvol`` command.

Core commands live here; each front registers its own subcommand through
:data:`FRONTS` and is imported only when chosen (a FlexVolume call must not pay for
gRPC or Flask imports).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from mount_core import config as config_module
from mount_core.errors import HepvolError

#: (subcommand, module, help). The module has ``add_arguments(parser)`` and
#: ``run(args, config) -> int``.
FRONTS: list[tuple[str, str, str]] = [
    ("demo", "hepvol.demo", "serve a sample repository through the core and show it"),
    ("csi", "hepvol.csi", "Kubernetes CSI driver (Identity, Node, Controller) on a socket"),
    ("flexvolume", "flexvolume.command", "install or remove the Kubernetes FlexVolume drivers"),
    ("watch", "hepvol.watch", "node daemon: health/repair loop and metrics for FlexVolume"),
    ("docker-plugin", "hepvol.docker", "Docker volume plugin daemon (cvmfs or eos)"),
    (
        "credential",
        "hepvol.credential",
        "register EOS credentials by name for Docker volumes (-o credential-name=NAME)",
    ),
    ("install", "hepvol.install", "set up a Docker host: systemd units, config, state dirs"),
    ("uninstall", "hepvol.install", "undo `hepvol install` (keeps config and state)"),
]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {
        "state_dir": args.state_dir,
        "mount_root": args.mount_root,
        "target_roots": tuple(args.target_root) if args.target_root else None,
        "log_level": args.log_level,
    }
    if args.local_root:
        found["local"] = {"root": args.local_root}
    return found


def load_config(args: argparse.Namespace) -> config_module.Config:
    return config_module.load(args.config, overrides=_overrides(args))


def _manager(args: argparse.Namespace) -> Any:
    from mount_core.manager import MountManager

    return MountManager(load_config(args))


def cmd_status(args: argparse.Namespace) -> int:
    from hepvol import namespaces, status

    statuses = _manager(args).status()
    namespace = namespaces.check()
    if args.json:
        print(json.dumps(status.as_json(statuses, namespace), indent=2, sort_keys=True))
    else:
        print(status.as_table(statuses, namespace))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    report = _manager(args).reconcile()
    print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    return 1 if report.failed else 0


def cmd_gc(args: argparse.Namespace) -> int:
    manager = _manager(args)
    found: dict[str, Any] = {}
    # A front module may define collect_garbage(manager) -> dict, e.g. to drop
    # consumers its orchestrator has forgotten; it runs before idle mounts go.
    for name, module, _help in FRONTS:
        collect = getattr(importlib.import_module(module), "collect_garbage", None)
        if collect is not None:
            found[name] = collect(manager)
    found["unmounted_idle"] = manager.gc_idle()
    print(json.dumps(found, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hepvol",
        description="CVMFS and EOS volumes for Docker, Kubernetes FlexVolume and CSI.",
    )
    parser.add_argument("--config", help="TOML config file (default $HEPVOL_CONFIG or "
                        f"{config_module.DEFAULT_FILE})")  # fmt: skip
    parser.add_argument("--state-dir", help="state directory (ledger, locks, logs)")
    parser.add_argument("--mount-root", help="where backing mounts are made")
    parser.add_argument("--local-root", help="repositories root of the local backend")
    parser.add_argument("--target-root", action="append",
                        help="allowed target root (repeat for several)")  # fmt: skip
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="backing mounts, conditions and consumers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)
    commands.add_parser(
        "reconcile", help="make the ledger and the mount table agree (safe at any time)"
    ).set_defaults(handler=cmd_reconcile)
    commands.add_parser(
        "gc", help="unmount backing mounts idle for longer than idle_unmount_seconds"
    ).set_defaults(handler=cmd_gc)

    for name, module, text in FRONTS:
        sub = commands.add_parser(name, help=text)
        sub.set_defaults(front_module=module)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "front_module"):
            from mount_core import logs

            config = load_config(args)
            logs.configure(config.log_level)
            result: int = importlib.import_module(args.front_module).run(args, config)
            return result
        handler_result: int = args.handler(args)
        return handler_result
    except HepvolError as exc:
        text = str(exc)
        # A message may name hepvol itself ("hepvol must run as root (...)").
        print(text if text.startswith("hepvol ") else f"hepvol: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
