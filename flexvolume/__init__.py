"""Kubernetes FlexVolume drivers ``cern/cvmfs`` and ``cern/eos``.

kubelet runs the driver once per call as a fresh process: :mod:`flexvolume.driver`
speaks the call protocol, :mod:`flexvolume.options` turns kubelet's option map
into a volume spec, and :mod:`flexvolume.install` writes the launchers into
kubelet's plugin directory. Nothing here imports more than a call needs.
"""
