"""``hepvol docker-plugin``: the Docker volume plugin (:mod:`docker_plugin`) on the daemon scaffold.

The ``hepvol`` process runs the start-up checks and claims the socket, then
replaces itself by a lean interpreter running :func:`main` (:func:`exec_lean`):
the CLI has imported every front to build its parser, and every page the
gunicorn master holds is also counted in its worker. In that worker
:class:`~hepvol.daemon.Daemon` runs the start-up reconcile, the health loop and
the metrics endpoint; gunicorn handles SIGTERM and SIGINT.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mount_core.config import Config

if TYPE_CHECKING:
    from docker_plugin.settings import Settings

#: How long a socket may keep answering after its plugin was stopped (a worker
#: finishing its last calls) before it counts as served by another process.
SOCKET_WAIT_SECONDS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from docker_plugin.command import add_arguments as add_plugin_arguments
    from hepvol.daemon import add_metrics_arguments

    add_plugin_arguments(parser)
    add_metrics_arguments(parser, 0)


def run(args: argparse.Namespace, config: Config) -> int:
    from docker_plugin.command import settings as plugin_settings
    from docker_plugin.settings import prepare_socket_dir
    from hepvol.daemon import claim_socket, preflight

    settings = replace(plugin_settings(args), metrics_port=args.metrics_port,
                       metrics_address=args.metrics_address)  # fmt: skip
    preflight(config, metrics_port=args.metrics_port, metrics_address=args.metrics_address)
    prepare_socket_dir(settings.socket_path)
    claim_socket(settings.socket_path, "--socket", wait=SOCKET_WAIT_SECONDS)
    exec_lean(config, settings)
    return 0  # not reached: exec_lean replaces this process


def exec_lean(config: Config, settings: Settings) -> None:
    """Replace this process by a fresh interpreter that only serves the plugin."""
    from docker_plugin.settings import HANDOVER, handover

    env = dict(os.environ, **{HANDOVER: handover(config, settings)})
    # glibc gives each thread its own malloc arena; two are plenty for this daemon
    # and keep a worker full of threads from growing its RSS arena by arena.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    os.execve(sys.executable, [sys.executable, "-m", "hepvol.docker"], env)  # noqa: S606


def collect_garbage(manager: Any) -> dict[str, Any]:
    """``hepvol gc``: drop Docker consumers no container can hold ($DOCKER_HOST engine)."""
    from docker_plugin.stale import drop_stale

    found: dict[str, Any] = drop_stale(manager, os.environ.get("DOCKER_HOST")).as_dict()
    return found


def main() -> int:
    """The re-executed daemon: gunicorn serving the plugin until SIGTERM/SIGINT."""
    from docker_plugin.serve import PluginServer
    from docker_plugin.settings import take_handover
    from mount_core import logs

    config, settings = take_handover()
    logs.configure(config.log_level)

    def background() -> Any:
        # Called in the worker: the master never opens the ledger nor starts threads.
        from hepvol.daemon import Daemon

        return Daemon(config, f"docker-{settings.driver}", metrics_port=settings.metrics_port,
                      metrics_address=settings.metrics_address)  # fmt: skip

    PluginServer(config, settings, background).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
