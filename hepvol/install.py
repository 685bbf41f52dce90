"""``hepvol install docker`` / ``hepvol uninstall docker``: set up a Docker host.

(``hepvol install|uninstall flexvolume [--plugin-dir DIR]`` is the same verb for
kubelet's FlexVolume drivers: it hands over to :mod:`flexvolume.command`, whose
older spelling ``hepvol flexvolume install [--uninstall]`` still works.)

Installs the systemd unit of each driver, ``hepvol-docker-<driver>.service``,
rendered from the one source of those units, ``deploy/docker/systemd/`` (shipped
in the wheel under ``<prefix>/share/hepvol/systemd``): only ``ExecStart``'s
program becomes this installation's ``hepvol``. Each unit is enabled for
``multi-user.target`` and ``docker.service`` (the units order themselves
``Before=docker.service``: dockerd asks its volume plugins about known volumes as
soon as it starts). Then ``/etc/hepvol/config.toml`` is written unless one exists,
and the state directories are created. ``--root DIR`` renders everything under
DIR instead of ``/`` and touches no running system (for packaging and tests).

Uninstall stops and disables the units and removes them; it keeps the
configuration and the state directory, whose ledger still describes the mounts
of running containers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

from flexvolume.install import DEFAULT_PLUGIN_DIR
from mount_core.atomicfile import write_atomically
from mount_core.config import Config
from mount_core.errors import ConfigError

DRIVERS = ("cvmfs", "eos")
UNIT_DIR = "etc/systemd/system"
WANTED_BY = ("multi-user.target", "docker.service")
CONFIG_PATH = "/etc/hepvol/config.toml"
#: Where the unit sources are: the wheel's data files, then a source checkout.
UNIT_SOURCES = (
    os.path.join(sys.prefix, "share", "hepvol", "systemd"),
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 "deploy", "docker", "systemd"),
)  # fmt: skip

_CONFIG_TEXT = """\
# hepvol configuration, written by `hepvol install docker` (kept on reinstall and
# uninstall). Keys: see the README's Configuration section.
state_dir = {state_dir}
mount_root = {mount_root}

[cvmfs]
# cvmfs2: the CVMFS client installed on this host; local: the embedded server.
client = "cvmfs2"

[eos]
client = "eosxd"
"""


def unit_name(driver: str) -> str:
    return f"hepvol-docker-{driver}.service"


@dataclass(frozen=True)
class Layout:
    """Where an installation goes: ``/`` on a host, any directory for tests."""

    root: str

    def path(self, absolute: str) -> str:
        return os.path.join(self.root, absolute.lstrip("/"))

    @property
    def unit_dir(self) -> str:
        return os.path.join(self.root, UNIT_DIR)

    @property
    def live(self) -> bool:
        """True when installing onto the running system (start/stop units)."""
        return os.path.realpath(self.root) == "/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["docker", "flexvolume"],
                        help="docker: systemd units of the plugin daemons; "
                        "flexvolume: the cern/cvmfs and cern/eos drivers for kubelet")  # fmt: skip
    parser.add_argument("--plugin-dir", default=DEFAULT_PLUGIN_DIR,
                        help=f"flexvolume: kubelet's --volume-plugin-dir "
                        f"(default {DEFAULT_PLUGIN_DIR})")  # fmt: skip
    parser.add_argument("--drivers", default=",".join(DRIVERS),
                        help="comma-separated drivers to serve (default cvmfs,eos)")  # fmt: skip
    parser.add_argument("--root", default="/",
                        help="render into this directory instead of / (nothing is started)")  # fmt: skip


def parse_drivers(text: str) -> list[str]:
    """``"cvmfs,eos"`` -> ``["cvmfs", "eos"]``; refuses unknown or no drivers."""
    drivers = [d.strip() for d in text.split(",") if d.strip()]
    unknown = sorted(set(drivers) - set(DRIVERS))
    if unknown or not drivers:
        raise ConfigError(
            f"--drivers {text!r}: give a comma-separated list of {', '.join(DRIVERS)}"
        )
    return list(dict.fromkeys(drivers))


def hepvol_command() -> str:
    """The absolute command that runs this installation's ``hepvol``."""
    script = os.path.join(os.path.dirname(sys.executable), "hepvol")
    if os.access(script, os.X_OK):
        return script
    return f"{sys.executable} -m hepvol"


def unit_text(driver: str, command: str | None = None) -> str:
    """The unit of ``driver`` from its source, running this installation's hepvol."""
    for directory in UNIT_SOURCES:
        path = os.path.join(directory, unit_name(driver))
        if os.path.exists(path):
            break
    else:
        raise ConfigError(f"the unit source {unit_name(driver)} is missing from this "
                          f"installation (looked in {', '.join(UNIT_SOURCES)})")  # fmt: skip
    with open(path) as handle:
        source = handle.read()
    lines = source.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(starts) != 1:
        raise ConfigError(f"{path} must have exactly one ExecStart= line")
    argv = shlex.split(lines[starts[0]].removeprefix("ExecStart="))
    lines[starts[0]] = "ExecStart=" + " ".join([command or hepvol_command(), *argv[1:]])
    origin = f"# Installed by `hepvol install docker` from {unit_name(driver)}; reinstall rather than edit."
    return "\n".join([origin, *lines]) + "\n"


def config_text(config: Config) -> str:
    """The initial config file: the state and mount dirs in effect, real clients."""
    # JSON strings are valid TOML basic strings.
    return _CONFIG_TEXT.format(state_dir=json.dumps(config.state_dir),
                               mount_root=json.dumps(config.mount_root))  # fmt: skip


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomically(path, text, mode)


def _systemctl(*args: str) -> None:
    """Run systemctl on a booted systemd host; elsewhere say what to run."""
    if not os.path.isdir("/run/systemd/system") or not shutil.which("systemctl"):
        print(f"systemd is not running here: run `systemctl {' '.join(args)}` on boot")
        return
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")


def install(layout: Layout, drivers: list[str], config: Config) -> list[str]:
    """Write and enable one unit per driver, the config file and the state dirs."""
    texts = {unit_name(d): unit_text(d) for d in drivers}  # all sources found before writing
    done = []
    for name, text in texts.items():
        unit = os.path.join(layout.unit_dir, name)
        _write(unit, text, 0o644)
        done.append(f"wrote {unit}")
        for target in WANTED_BY:
            wants = os.path.join(layout.unit_dir, f"{target}.wants")
            os.makedirs(wants, mode=0o755, exist_ok=True)
            link = os.path.join(wants, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(os.path.join("..", name), link)
            done.append(f"enabled {name} for {target}")
    config_file = layout.path(CONFIG_PATH)
    if os.path.exists(config_file):
        done.append(f"kept {config_file}")
    else:
        _write(config_file, config_text(config), 0o644)
        done.append(f"wrote {config_file}")
    for directory in (config.state_dir, config.mount_root):
        os.makedirs(layout.path(directory), mode=0o700, exist_ok=True)
        done.append(f"created {layout.path(directory)}")
    if layout.live:
        _systemctl("daemon-reload")
        _systemctl("restart", *texts)
        done.append(f"started {', '.join(texts)}")
    return done


def uninstall(layout: Layout) -> list[str]:
    """Stop, disable and remove every driver's unit; keep config and state."""
    done = []
    units = [unit_name(d) for d in DRIVERS]
    present = [u for u in units if os.path.exists(os.path.join(layout.unit_dir, u))]
    if layout.live and present:
        _systemctl("stop", *present)
    for target in WANTED_BY:
        for name in units:
            link = os.path.join(layout.unit_dir, f"{target}.wants", name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
                done.append(f"disabled {name} for {target}")
    for name in present:
        os.unlink(os.path.join(layout.unit_dir, name))
        done.append(f"removed {os.path.join(layout.unit_dir, name)}")
    if layout.live:
        _systemctl("daemon-reload")
    done.append(f"kept {layout.path(CONFIG_PATH)} and the state directory (mounts may be in use)")
    return done


def run(args: argparse.Namespace, config: Config) -> int:
    if args.what == "flexvolume":
        from flexvolume import command

        args.uninstall = args.command == "uninstall"
        done: int = command.run(args, config)
        return done
    if not os.path.isabs(args.root):
        raise ConfigError(f"--root {args.root!r} must be an absolute directory")
    layout = Layout(args.root)
    if args.command == "install":
        lines = install(layout, parse_drivers(args.drivers), config)
    else:
        lines = uninstall(layout)
    for line in lines:
        print(line)
    return 0
