"""Backends, chosen per spec from the configuration."""

from __future__ import annotations

from mount_core.backends.base import Backend
from mount_core.backends.local import LocalBackend
from mount_core.config import Config
from mount_core.errors import Unavailable
from mount_core.mountinfo import MountEntry
from mount_core.spec import VolumeSpec

__all__ = ["Backend", "Backends", "LocalBackend"]


class Backends:
    """The backend instances of one process, built from the configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._by_name: dict[str, Backend] = {
            "local": LocalBackend(
                config.mount_root, config.local.root, config.state_dir,
                config.mount_timeout_seconds,
            ),
        }  # fmt: skip
        self._by_name["local"].server_cgroups = config.server_cgroups
        if config.cvmfs.client == "cvmfs2":
            from mount_core.backends.cvmfs import Cvmfs2Backend

            self.register(Cvmfs2Backend(config))
        if config.eos.client == "eosxd":
            from mount_core.backends.eos import EosxdBackend

            self.register(EosxdBackend(config))

    def check_available(self) -> None:
        """Raise Unavailable (saying what to install) when a configured client is missing.

        Daemons call this at start-up, so a node without its clients fails at once.
        """
        for backend in self._by_name.values():
            backend.check_available()

    def register(self, backend: Backend) -> None:
        backend.server_cgroups = self.config.server_cgroups
        self._by_name[backend.name] = backend

    def for_spec(self, spec: VolumeSpec) -> Backend:
        """The backend that serves ``spec`` under this node's configuration."""
        client = self.config.cvmfs.client if spec.backend == "cvmfs" else self.config.eos.client
        return self.named(client)

    def named(self, name: str) -> Backend:
        try:
            return self._by_name[name]
        except KeyError:
            raise Unavailable(f"backend {name!r} is not available in this hepvol") from None

    def owner_of(self, entry: MountEntry) -> Backend | None:
        """The backend that made a mountinfo entry, if any of ours did."""
        for backend in self._by_name.values():
            if backend.owns(entry):
                return backend
        return None

    def remove_stray(self, entry: MountEntry) -> bool:
        """Remove a mount named like one of ours that no backend owns; True when removed."""
        return any(backend.remove_stray(entry) for backend in self._by_name.values())

    @property
    def local(self) -> LocalBackend:
        backend = self._by_name["local"]
        assert isinstance(backend, LocalBackend)
        return backend
