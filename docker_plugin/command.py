"""The options of ``hepvol docker-plugin`` and the :class:`Settings` they make.

Imported by the CLI to build its parser, so Flask, gunicorn and the ``docker``
package are never imported here. The daemon itself is :mod:`hepvol.docker`.
"""

from __future__ import annotations

import argparse
import os
import re

from docker_plugin.settings import PLUGIN_DIR, Settings
from mount_core.errors import ConfigError

_DRIVER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--driver", required=True, choices=("cvmfs", "eos"),
                        help="what the volumes are: CVMFS repositories or EOS instances")  # fmt: skip
    parser.add_argument("--name", help="driver name users pass to -d (default: the --driver value)")
    parser.add_argument("--socket", help="Unix socket to serve on "
                        "(default /run/docker/plugins/<name>.sock, where dockerd finds it)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=16,
                        help="concurrent calls, over all workers (default 16)")  # fmt: skip
    parser.add_argument("--workers", type=int,
                        help="worker processes (default 2, one per core of a small node; 1 with "
                        "--metrics-port: only the lead worker serves metrics)")  # fmt: skip
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST"),
                        help="Docker engine to ask about stale mounts "
                        "(default $DOCKER_HOST, else unix:///var/run/docker.sock)")  # fmt: skip


def settings(args: argparse.Namespace) -> Settings:
    """The daemon's settings from the parsed options; one line naming the option if wrong."""
    name = args.name or args.driver
    if not _DRIVER_NAME.match(name):
        raise ConfigError(f"driver name {name!r}: use 1-63 of a-z 0-9 . _ - (e.g. cvmfs)")
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    # Operation metrics are counted in the worker that served the call, and only the
    # lead worker serves /metrics: with metrics on, one worker counts every call.
    workers = args.workers or (1 if getattr(args, "metrics_port", 0) else 2)
    if not 1 <= workers <= args.threads:
        raise ConfigError("--workers must be at least 1 and at most --threads")
    return Settings(
        driver=name,
        backend=args.driver,
        socket_path=os.path.abspath(args.socket or os.path.join(PLUGIN_DIR, f"{name}.sock")),
        workers=workers,
        threads=-(-args.threads // workers),  # per worker, rounded up
        docker_host=args.docker_host,
    )
