"""Install the FlexVolume drivers into kubelet's plugin directory, atomically.

Each driver ``cern/NAME`` is the executable ``<plugin dir>/cern~NAME/NAME``: a
small Python script whose ``#!`` line names this installation's interpreter by
absolute path (kubelet's PATH is minimal) with ``-IS``: isolated from the
caller's environment and without site processing, which costs more than the
whole call otherwise. The script puts the directories holding hepvol and its
site-packages on ``sys.path`` itself, so it works from a venv and under ``env -i``.

kubelet watches the plugin directory and ignores dot-files, so each launcher is
written as ``.tmp_NAME.<random>``, made executable and renamed over ``NAME``.
"""

from __future__ import annotations

import contextlib
import os
import sys

from mount_core.atomicfile import write_atomically
from mount_core.errors import ConfigError

DEFAULT_PLUGIN_DIR = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
VENDOR = "cern"
BACKENDS = ("cvmfs", "eos")
#: How long a launcher waits for the node daemon's reply before it runs the call
#: itself (a hung daemon costs a call this much, never a failure). A cold mount by
#: the daemon can take longer: the call then waits for it on the volume's lock.
RELAY_TIMEOUT = 10.0
# Linux reads at most 255 bytes of a #! line (127 before 5.1).
_MAX_SHEBANG = 127

_TEMPLATE = """#!{python} -IS
# hepvol FlexVolume driver {vendor}/{backend}: written by `hepvol flexvolume install`.
# Reinstall rather than edit. Logs: <state dir>/logs/flexvolume.log.
import sys

# After the standard library, as site would put them: nothing here can shadow it.
sys.path += {paths!r}
try:
    # A running node daemon serves mount/unmount (this returns when none can).
    from flexvolume.handoff import hand_over

    hand_over(sys.argv[1:], {backend!r}, {relay!r}, {relay_timeout!r})
except Exception:
    pass
import os

try:
    from flexvolume.driver import main
except BaseException as exc:
    import json

    message = "hepvol is not importable by " + sys.executable + ": " + repr(exc)
    print(json.dumps({{"status": "Failure", "message": message}}))
    sys.exit(1)
# The reply is written and every log line flushed: skip the interpreter's teardown,
# which costs a FlexVolume call about as much as its work.
os._exit(main(sys.argv[1:], {backend!r}, {config!r}))
"""


def driver_path(plugin_dir: str, backend: str) -> str:
    return os.path.join(plugin_dir, f"{VENDOR}~{backend}", backend)


def launcher(
    backend: str,
    config_path: str | None,
    python: str | None = None,
    relay: str | None = None,
    relay_timeout: float = RELAY_TIMEOUT,
) -> str:
    """The text of the launcher for ``backend`` (``relay``: the node daemon's socket)."""
    python = python or sys.executable
    if not os.path.isabs(python) or len(python) + 5 > _MAX_SHEBANG:
        raise ConfigError(
            f"interpreter path {python!r} must be absolute and shorter than "
            f"{_MAX_SHEBANG - 5} characters to be named on a #! line"
        )
    import sysconfig

    import flexvolume
    import mount_core

    paths: list[str] = []
    for package in (flexvolume, mount_core):
        root = os.path.dirname(os.path.abspath(next(iter(package.__path__))))
        if root not in paths:
            paths.append(root)
    for directory in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")):
        if directory not in paths:
            paths.append(directory)
    config = os.path.abspath(config_path) if config_path else None
    return _TEMPLATE.format(python=python, vendor=VENDOR, backend=backend, paths=paths,
                            config=config, relay=relay, relay_timeout=relay_timeout)  # fmt: skip


def _write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomically(path, text, 0o755, prefix=".tmp_")  # kubelet executes it


def install(
    plugin_dir: str,
    config_path: str | None,
    relay: str | None = None,
    relay_timeout: float = RELAY_TIMEOUT,
) -> list[str]:
    """Write every driver's launcher; returns their paths.

    ``relay`` is the node daemon's socket (:func:`flexvolume.relay.socket_path` of the
    configured state dir); the launchers hand mount/unmount to it when it answers.
    """
    written = []
    for backend in BACKENDS:
        path = driver_path(plugin_dir, backend)
        _write_atomically(path, launcher(backend, config_path, relay=relay,
                                         relay_timeout=relay_timeout))  # fmt: skip
        written.append(path)
    return written


def uninstall(plugin_dir: str) -> list[str]:
    """Remove the launchers (and their directories when empty); returns what was removed."""
    removed = []
    for backend in BACKENDS:
        path = driver_path(plugin_dir, backend)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))
    return removed
