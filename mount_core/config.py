"""The one configuration object: defaults < TOML file < environment < flags.

The file is ``$HEPVOL_CONFIG`` or ``/etc/hepvol/config.toml`` (absent is fine).
Every key has an environment override ``HEPVOL_<KEY>`` (sections joined with
``_``, e.g. ``HEPVOL_LOCAL_ROOT``). Unknown keys are refused so that a typo in a
config file is an error at start-up, not a silently ignored setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from mount_core import cgroups
from mount_core.errors import ConfigError
from mount_core.statedir import StateDir

DEFAULT_FILE = "/etc/hepvol/config.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LocalConfig:
    """The embedded read-only FUSE backend."""

    root: str = "/var/lib/hepvol/repositories"


@dataclass(frozen=True)
class CvmfsConfig:
    """How CVMFS repositories are served on this node."""

    client: str = "local"
    automount: bool = False
    root: str = "/cvmfs"
    config_dir: str = "/etc/cvmfs"
    mount_helper: str = "/sbin/mount.cvmfs"
    cvmfs2: str = "/usr/bin/cvmfs2"
    automount_program: str = "/usr/sbin/automount"
    automount_timeout_seconds: int = 300
    #: The autofs program map: "" is hepvol's own, /etc/auto.cvmfs the client's.
    automount_map: str = ""
    #: Config, cache and reload sockets of private (pinned) cvmfs2 mounts, one
    #: directory per mount; cvmfs2 reads them as CVMFS_USER, so not in state_dir.
    cache_root: str = "/var/lib/cvmfs/hepvol"


@dataclass(frozen=True)
class EosConfig:
    """How EOS instances are served on this node."""

    client: str = "local"
    eosxd: str = "/usr/bin/eosxd"
    config_dir: str = "/etc/eos"
    instances: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Config:
    """Settings shared by the core, every front and the CLI."""

    state_dir: str = "/var/lib/hepvol"
    mount_root: str = "/var/lib/hepvol/mounts"
    target_roots: tuple[str, ...] = ("/var/lib/kubelet",)
    server_cgroups: tuple[str, ...] = ()
    idle_unmount_seconds: float = 0.0
    health_interval_seconds: float = 3.0
    mount_timeout_seconds: float = 30.0
    lock_timeout_seconds: float = 60.0
    probe_timeout_seconds: float = 2.0
    log_level: str = "INFO"
    local: LocalConfig = field(default_factory=LocalConfig)
    cvmfs: CvmfsConfig = field(default_factory=CvmfsConfig)
    eos: EosConfig = field(default_factory=EosConfig)

    @property
    def ledger_path(self) -> str:
        return StateDir(self.state_dir).ledger

    def validate(self) -> Config:
        """Check cross-field rules; returns self for chaining."""
        self._check_paths()
        self._check_choices()
        for name in ("idle_unmount_seconds", "health_interval_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more")
        for name in ("mount_timeout_seconds", "lock_timeout_seconds", "probe_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be more than 0")
        return self

    def _check_paths(self) -> None:
        for name in ("state_dir", "mount_root"):
            _absolute(name, getattr(self, name))
        _absolute("local.root", self.local.root)
        _absolute("cvmfs.root", self.cvmfs.root)
        _absolute("cvmfs.cache_root", self.cvmfs.cache_root)
        if self.cvmfs.automount_map:
            _absolute("cvmfs.automount_map", self.cvmfs.automount_map)
        if not self.target_roots:
            raise ConfigError("target_roots is empty: give at least one directory for targets")
        for root in self.target_roots:
            _absolute("target_roots", root)
            for owned in (self.mount_root, self.state_dir):
                if _inside(root, owned) or _inside(owned, root):
                    raise ConfigError(
                        f"target_roots entry {root!r} overlaps {owned!r}: "
                        "targets must live apart from hepvol's own directories"
                    )

    def _check_choices(self) -> None:
        if self.cvmfs.client not in ("local", "cvmfs2"):
            raise ConfigError(f"cvmfs.client is {self.cvmfs.client!r}: use 'local' or 'cvmfs2'")
        if self.eos.client not in ("local", "eosxd"):
            raise ConfigError(f"eos.client is {self.eos.client!r}: use 'local' or 'eosxd'")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"log_level is {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}"
            )
        for item in self.server_cgroups:
            if not cgroups.NAME.fullmatch(item) and not _is_absolute(item):
                raise ConfigError(
                    f"server_cgroups entry {item!r} is neither an absolute cgroup directory "
                    "nor a cgroup name (letters, digits, '.', '_', '-')"
                )


def _is_absolute(value: str) -> bool:
    return value.startswith("/") and "\x00" not in value and "\n" not in value


def _absolute(name: str, value: str) -> None:
    if not _is_absolute(value):
        raise ConfigError(f"{name} must be an absolute path, got {value!r}")


def _inside(child: str, parent: str) -> bool:
    child, parent = os.path.normpath(child), os.path.normpath(parent)
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int | float):
        return "a number"
    if isinstance(default, tuple):
        return "a list of strings"
    return "a string"


def _bad(name: str, value: Any, default: Any) -> ConfigError:
    return ConfigError(
        f"config key {name} has a bad value {value!r}: expected {_type_name(default)}"
    )


def _typed(name: str, value: Any, default: Any) -> Any:
    """A value from the TOML file, which has types: it must already be the right one."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise _bad(name, value, default)
    return tuple(value) if isinstance(default, tuple) else type(default)(value)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert an environment or flag value (a string, or a flag's list) to the field's type."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if isinstance(default, int | float):
            return type(default)(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(p for p in value.split(":") if p)
            return tuple(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise _bad(name, value, default) from None
    return value


def _apply(obj: Any, values: Mapping[str, Any], prefix: str = "", typed: bool = False) -> Any:
    """``values`` over ``obj``; ``typed``: they come from the TOML file and must have
    the field's type already (``target_roots = "/x"`` is not a list)."""
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key {prefix}{key}; known keys: {', '.join(sorted(known))}"
            )
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {prefix}{key} must be a table")
            changes[key] = _apply(current, value, f"{prefix}{key}.", typed)
        elif key == "instances":
            if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                raise ConfigError(f"config key {prefix}{key} must be a list of tables")
            changes[key] = tuple(dict(v) for v in value)
        elif typed:
            changes[key] = _typed(prefix + key, value, current)
        else:
            changes[key] = _coerce(prefix + key, value, current)
    return replace(obj, **changes)


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for f in fields(Config):
        default = getattr(Config(), f.name)
        if is_dataclass(default):
            for sub in fields(default):
                var = f"HEPVOL_{f.name}_{sub.name}".upper()
                if var in env and sub.name != "instances":
                    found.setdefault(f.name, {})[sub.name] = env[var]
        else:
            var = f"HEPVOL_{f.name}".upper()
            if var in env:
                found[f.name] = env[var]
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an EOS instance's auth settings
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise ConfigError(f"cannot write {value!r} as TOML")


def dumps(config: Config) -> str:
    """``config`` as a TOML file that :func:`load` reads back to an equal Config.

    For handing a whole configuration to another process (a FlexVolume launcher,
    a test's child process) through ``HEPVOL_CONFIG``.
    """
    top: list[str] = []
    tables: list[str] = []
    for f in fields(config):
        value = getattr(config, f.name)
        if not is_dataclass(value):
            top.append(f"{f.name} = {_toml_value(value)}")
            continue
        tables.append(f"\n[{f.name}]")
        for sub in fields(value):
            item = getattr(value, sub.name)
            if sub.name == "instances":
                for instance in item:
                    rows = [f"{k} = {_toml_value(v)}" for k, v in instance.items()]
                    tables.append(f"\n[[{f.name}.instances]]\n" + "\n".join(rows))
                continue
            tables.append(f"{sub.name} = {_toml_value(item)}")
    return "\n".join(top + tables) + "\n"


def load(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration. ``overrides`` are CLI flags (nested dicts for sections)."""
    env = os.environ if env is None else env
    config = Config()
    file_path = path or env.get("HEPVOL_CONFIG") or DEFAULT_FILE
    try:
        handle = open(file_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        if path or env.get("HEPVOL_CONFIG"):
            raise ConfigError(f"config file {file_path} does not exist") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {file_path}: {exc.strerror} (run hepvol as root)"
        ) from None
    else:
        import tomllib  # here: FlexVolume calls pay for every import

        with handle:
            try:
                config = _apply(config, tomllib.load(handle), typed=True)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {file_path} is not valid TOML: {exc}") from None
    config = _apply(config, _from_environment(env))
    if overrides:
        config = _apply(config, {k: v for k, v in overrides.items() if v is not None})
    assert isinstance(config, Config)
    return config.validate()
