"""How one plugin daemon runs, and how its settings reach a fresh interpreter.

The daemon re-executes itself as a lean process (see :func:`hepvol.docker.exec_lean`)
and runs the stale-consumer check in a short-lived child; both get the configuration
and these settings as one JSON blob in the environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from mount_core import config as config_module
from mount_core.config import Config

PLUGIN_DIR = "/run/docker/plugins"
HANDOVER = "HEPVOL_DOCKER_PLUGIN_HANDOVER"


@dataclass(frozen=True)
class Settings:
    """How one plugin daemon runs."""

    driver: str
    backend: str
    socket_path: str
    #: Worker processes, each with a pool of ``threads`` threads.
    workers: int = 2
    threads: int = 8
    docker_host: str | None = None
    engine_wait_seconds: float = 600.0
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"  # noqa: S104 - scraped from other hosts


def prepare_socket_dir(path: str) -> None:
    """Create the socket's directory (0755: dockerd lists the plugin directory)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.normpath(directory) == PLUGIN_DIR:
        os.chmod(directory, 0o755)  # noqa: S103 - the protocol wants it world-listable


def handover(config: Config, settings: Settings) -> str:
    """The configuration and settings as one JSON string."""
    return json.dumps({"config": asdict(config), "settings": asdict(settings)})


def take_handover() -> tuple[Config, Settings]:
    """Rebuild what :func:`handover` wrote into ``$HEPVOL_DOCKER_PLUGIN_HANDOVER``."""
    data = json.loads(os.environ.pop(HANDOVER))
    # Every key is given, so no file or environment setting can change them.
    config = config_module.load(env={"HEPVOL_CONFIG": os.devnull}, overrides=data["config"])
    return config, Settings(**data["settings"])
