"""The ``hepvol`` command.

Core commands live here; each front registers its own subcommand through
:data:`FRONTS` and is imported only when chosen (a FlexVolume call must not pay for
gRPC or Flask imports).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from mount_core import config as config_module
from mount_core.errors import HepvolError

#: (subcommand, module, help). The module has ``add_arguments(parser)`` and
#: ``run(args, config) -> int``.
FRONTS: list[tuple[str, str, str]] = [
    ("demo", "hepvol.demo", "serve a sample repository through the core and show it"),
    ("csi", "hepvol.csi", "Kubernetes CSI driver (Identity, Node, Controller) on a socket"),
    ("flexvolume", "flexvolume.command", "same as `hepvol install|uninstall flexvolume`"),
    ("watch", "hepvol.watch", "node daemon: health/repair loop and metrics for FlexVolume"),
    ("docker-plugin", "hepvol.docker", "Docker volume plugin daemon (cvmfs or eos)"),
    (
        "credential",
        "hepvol.credential",
        "register EOS credentials by name for Docker volumes (-o credential-name=NAME)",
    ),
    (
        "install",
        "hepvol.install",
        "docker: systemd units, config, state dirs; flexvolume: kubelet's drivers",
    ),
    (
        "uninstall",
        "hepvol.install",
        "undo `hepvol install docker|flexvolume` (keeps config and state)",
    ),
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


def _as_text(data: Mapping[str, Any], indent: str = "") -> list[str]:
    """A report (lists of keys, failures by key, a front's sub-report) as aligned lines."""
    lines = []
    for name, value in data.items():
        label = name.replace("_", " ")
        if isinstance(value, Mapping | list) and not value:
            lines.append(f"{indent}{label}: none")
        elif isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
            lines.append(f"{indent}{label}: {len(value)}")
            lines += [f"{indent}  {key}: {why}" for key, why in value.items()]
        elif isinstance(value, Mapping):
            lines.append(f"{indent}{label}:")
            lines += _as_text(value, indent + "  ")
        elif isinstance(value, list):
            lines.append(f"{indent}{label}: {len(value)}")
            lines += [f"{indent}  {item}" for item in value]
        elif value:
            lines.append(f"{indent}{label}: {value}")
    return lines


def _show(args: argparse.Namespace, title: str, data: Mapping[str, Any]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    if all(not value for value in data.values()):
        print(f"{title}: nothing to do")
        return
    print(f"{title}:")
    for line in _as_text(data):
        print("  " + line)


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
    _show(args, "reconcile", report.as_dict())
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
    _show(args, "gc", found)
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("hepvol")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The settings every command shares; given before or after the command."""
    parser.add_argument("--config", default=default, help="TOML config file (default "
                        f"$HEPVOL_CONFIG or {config_module.DEFAULT_FILE})")  # fmt: skip
    parser.add_argument("--state-dir", default=default,
                        help="state directory (ledger, locks, logs)")  # fmt: skip
    parser.add_argument("--mount-root", default=default, help="where backing mounts are made")
    parser.add_argument("--local-root", default=default,
                        help="repositories root of the local backend")  # fmt: skip
    parser.add_argument("--target-root", action="append", default=default,
                        help="allowed target root (repeat for several)")  # fmt: skip
    parser.add_argument("--log-level", default=default, help="DEBUG, INFO, WARNING or ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hepvol",
        description="CVMFS and EOS volumes for Docker, Kubernetes FlexVolume and CSI.",
    )
    parser.add_argument("--version", action="version", version=f"hepvol {_version()}")
    _add_global_options(parser, None)
    # The same options after the command; SUPPRESS keeps them from resetting the
    # values given before it.
    shared = argparse.ArgumentParser(add_help=False)
    _add_global_options(shared, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, parents=[shared])

    for name, text, handler in (
        ("status", "backing mounts, conditions and consumers", cmd_status),
        ("reconcile", "make the ledger and the mount table agree (safe at any time)",
         cmd_reconcile),
        ("gc", "unmount backing mounts idle for longer than idle_unmount_seconds", cmd_gc),
    ):  # fmt: skip
        sub = command(name, text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(handler=handler)

    for name, module, text in FRONTS:
        sub = command(name, text)
        sub.set_defaults(front_module=module)
        importlib.import_module(module).add_arguments(sub)
    return parser


#: Commands that only root can run (the state dir is root's and private; mounts).
ROOT_ONLY = {"status", "reconcile", "gc", "credential", "csi", "docker-plugin", "watch", "demo"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ROOT_ONLY and os.geteuid() != 0:
            from hepvol.daemon import ROOT_REFUSAL
            from mount_core.errors import ConfigError

            raise ConfigError(ROOT_REFUSAL)
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
    except OSError as exc:  # an ordinary mistake (permissions, a path), not a crash
        where = f" ({exc.filename})" if exc.filename else ""
        fix = " (run hepvol as root)" if isinstance(exc, PermissionError) else ""
        print(f"hepvol: {exc.strerror or exc}{where}{fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
