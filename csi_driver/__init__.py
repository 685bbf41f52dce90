"""Kubernetes CSI driver: Identity, Node and Controller services over the core.

Run with ``hepvol csi`` (see :mod:`csi_driver.server`). The gRPC stubs in
``csi_driver.generated`` are produced from ``proto/`` at install time.
"""

#: Default CSI driver name per backend (``--driver``).
DRIVER_NAMES = {"cvmfs": "cvmfs.csi.cern.ch", "eos": "eos.csi.cern.ch"}
