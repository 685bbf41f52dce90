"""``hepvol install docker`` / ``hepvol uninstall docker``: set up a Docker host.

Writes one systemd template unit, ``hepvol-docker@.service`` (the instance name is
the driver: ``hepvol-docker@cvmfs.service`` serves ``-d cvmfs``), enables an
instance per driver for both ``multi-user.target`` and ``docker.service`` (ordered
``Before=docker.service``: dockerd asks its volume plugins about known volumes as
soon as it starts), writes ``/etc/hepvol/config.toml`` unless one exists, and
creates the state directories. ``--root DIR`` renders everything under DIR
instead of ``/`` and touches no running system (for packaging and tests).

Uninstall stops and disables the units and removes the unit file; it keeps the
configuration and the state directory, whose ledger still describes the mounts
of running containers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from mount_core.config import Config
from mount_core.errors import ConfigError

DRIVERS = ("cvmfs", "eos")
UNIT_DIR = "etc/systemd/system"
UNIT = "hepvol-docker@.service"
WANTED_BY = ("multi-user.target", "docker.service")
CONFIG_PATH = "/etc/hepvol/config.toml"

# KillMode=process: stopping or restarting the plugin must not kill the FUSE
# servers (cvmfs2, eosxd, the local server) it started: they serve the mounts of
# running containers, and the next start adopts them. systemd would otherwise
# kill the whole control group.
_UNIT_TEXT = """\
# Written by `hepvol install docker`; reinstall rather than edit.
[Unit]
Description=hepvol Docker volume plugin, driver %i
Documentation=https://github.com/cern/hepvol#deploying
Before=docker.service
After=local-fs.target network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=HEPVOL_CONFIG={config}
ExecStart={command} --config {config} docker-plugin --driver %i
KillMode=process
Restart=on-failure
RestartSec=2
TimeoutStopSec=20
LimitNOFILE=1048576

[Install]
WantedBy={wanted_by}
"""

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
    parser.add_argument("what", choices=["docker"], help="what to set up: docker (systemd units)")
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
    return f"{sys.executable} -m mount_core.cli"


def unit_text(command: str | None = None, config_path: str = CONFIG_PATH) -> str:
    """The template unit (one source for every driver instance)."""
    return _UNIT_TEXT.format(command=command or hepvol_command(), config=config_path,
                             wanted_by=" ".join(WANTED_BY))  # fmt: skip


def config_text(config: Config) -> str:
    """The initial config file: the state and mount dirs in effect, real clients."""
    # JSON strings are valid TOML basic strings.
    return _CONFIG_TEXT.format(state_dir=json.dumps(config.state_dir),
                               mount_root=json.dumps(config.mount_root))  # fmt: skip


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    temporary = f"{path}.hepvol-tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _systemctl(*args: str) -> None:
    """Run systemctl on a booted systemd host; elsewhere say what to run."""
    if not os.path.isdir("/run/systemd/system") or not shutil.which("systemctl"):
        print(f"systemd is not running here: run `systemctl {' '.join(args)}` on boot")
        return
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")


def install(layout: Layout, drivers: list[str], config: Config) -> list[str]:
    """Write the unit, enable one instance per driver, config and state dirs."""
    done = []
    unit = os.path.join(layout.unit_dir, UNIT)
    _write(unit, unit_text(), 0o644)
    done.append(f"wrote {unit}")
    instances = [UNIT.replace("@", f"@{d}") for d in drivers]
    for target in WANTED_BY:
        wants = os.path.join(layout.unit_dir, f"{target}.wants")
        os.makedirs(wants, mode=0o755, exist_ok=True)
        for instance in instances:
            link = os.path.join(wants, instance)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(os.path.join("..", UNIT), link)
            done.append(f"enabled {instance} for {target}")
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
        _systemctl("restart", *instances)
        done.append(f"started {', '.join(instances)}")
    return done


def uninstall(layout: Layout) -> list[str]:
    """Stop and disable every instance, remove the unit; keep config and state."""
    done = []
    instances: set[str] = set()
    for target in WANTED_BY:
        wants = os.path.join(layout.unit_dir, f"{target}.wants")
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(wants):
                if name.startswith("hepvol-docker@") and name.endswith(".service"):
                    instances.add(name)
                    os.unlink(os.path.join(wants, name))
                    done.append(f"disabled {name} for {target}")
    if layout.live and instances:
        _systemctl("stop", *sorted(instances))
    unit = os.path.join(layout.unit_dir, UNIT)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(unit)
        done.append(f"removed {unit}")
    if layout.live:
        _systemctl("daemon-reload")
    done.append(f"kept {layout.path(CONFIG_PATH)} and the state directory (mounts may be in use)")
    return done


def run(args: argparse.Namespace, config: Config) -> int:
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
