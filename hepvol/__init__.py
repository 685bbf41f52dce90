"""hepvol, the application: the ``hepvol`` command, its daemons, the demo and installation.

The layers, outermost first: this package (CLI, daemon scaffold, demo, status
rendering, host installation) → the fronts (``docker_plugin``, ``flexvolume``,
``csi_driver``: one orchestrator protocol each) → ``mount_core`` (volumes, mounts,
ledger, health). Imports only go inward; ``make lint`` checks it.
"""
