"""Point a test's hepvol world at the stand-in clients.

:func:`install` writes, under the test's directory, executable wrappers named like
the real tools (``mount.cvmfs``, ``cvmfs2``, ``eosxd``), a CVMFS site config
(``default.conf``, ``default.local``, ``domain.d/``), an EOS tree per MGM, and
switches the test's config to ``cvmfs.client = "cvmfs2"`` / ``eos.client = "eosxd"``.
Nothing outside the test's directory is touched.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mount_core.config import CvmfsConfig, EosConfig, dumps
from tests.conftest import REPO, HepvolEnv

SITE_DEFAULT_CONF = """\
CVMFS_CACHE_BASE=/var/lib/cvmfs
CVMFS_QUOTA_LIMIT=4000
CVMFS_USER=cvmfs
"""
SITE_DEFAULT_LOCAL = """\
# site settings
CVMFS_HTTP_PROXY='http://squid1.example.org:3128|http://squid2.example.org:3128;DIRECT'
CVMFS_QUOTA_LIMIT=20000
export CVMFS_CLIENT_PROFILE=single
"""
SITE_DOMAIN_CONF = """\
CVMFS_SERVER_URL="http://stratum1.example.org/cvmfs/@fqrn@"
CVMFS_KEYS_DIR=/etc/cvmfs/keys/hepvol.org
"""
EOS_INSTANCE = {
    "name": "eostest",
    "hostport": "eostest.example.org",
    "remotemountdir": "/eos/",
    "auth": {"krb5": 1, "sss": 0},
}
_WRAPPER = """\
#!/bin/sh
HEPVOL_STANDIN='{control}' PYTHONPATH='{repo}' exec '{python}' -m {module} "$@"
"""


@dataclass
class Standins:
    """The stand-in clients of one test."""

    control: Path
    bin: Path
    cvmfs_config_dir: Path
    eos_config_dir: Path
    eos_root: Path

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        path = self.control / "calls.jsonl"
        records = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        return [r for r in records if tool is None or r["tool"] == tool]

    def fail(self, tool: str, reason: str | None) -> None:
        """Make ``tool`` fail with ``(reason)`` (None: succeed again)."""
        path = self.control / "fail" / tool
        if reason is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(reason)

    def server_pids(self) -> list[int]:
        pids = []
        for pidfile in (self.control / "run").glob("*.pid"):
            try:
                pids.append(int(pidfile.read_text()))
            except (OSError, ValueError):
                continue
        return pids

    def wrapper(self, tool: str, module: str) -> Path:
        path = self.bin / tool
        path.write_text(
            _WRAPPER.format(control=self.control, repo=REPO, python=sys.executable, module=module)
        )
        path.chmod(0o755)
        return path

    def eos_dir(self, hostport: str, remote: str) -> Path:
        """The directory the stand-in serves for ``remote`` on MGM ``hostport``."""
        path = self.eos_root / hostport / remote.strip("/")
        path.mkdir(parents=True, exist_ok=True)
        return path


def install(
    env: HepvolEnv,
    *,
    automount: bool = False,
    instances: tuple[dict[str, Any], ...] = (EOS_INSTANCE,),
    idle_timeout: int = 300,
) -> Standins:
    """Create the stand-ins for ``env`` and switch its config to the real clients."""
    base = env.workdir / "standins"
    s = Standins(base / "control", base / "bin", base / "etc-cvmfs", base / "etc-eos", base / "eos")
    for directory in (s.control / "fail", s.control / "run", s.bin, s.eos_config_dir, s.eos_root):
        directory.mkdir(parents=True, exist_ok=True)
    (s.cvmfs_config_dir / "domain.d").mkdir(parents=True)
    (s.cvmfs_config_dir / "default.conf").write_text(SITE_DEFAULT_CONF)
    (s.cvmfs_config_dir / "default.local").write_text(SITE_DEFAULT_LOCAL)
    (s.cvmfs_config_dir / "domain.d" / "hepvol.org.conf").write_text(SITE_DOMAIN_CONF)
    settings = {
        "repos": str(env.repos),
        "cvmfs_config_dir": str(s.cvmfs_config_dir),
        "eos_config_dir": str(s.eos_config_dir),
        "eos_root": str(s.eos_root),
        "python": sys.executable,
        "repo": str(REPO),
    }
    (s.control / "settings.json").write_text(json.dumps(settings))
    helper = s.wrapper("mount.cvmfs", "tests.standins.cvmfs_tools mount.cvmfs")
    cvmfs2 = s.wrapper("cvmfs2", "tests.standins.cvmfs_tools cvmfs2")
    eosxd = s.wrapper("eosxd", "tests.standins.eosxd_tool")
    cvmfs = CvmfsConfig(
        client="cvmfs2",
        automount=automount,
        root=str(env.workdir / "cvmfs"),
        config_dir=str(s.cvmfs_config_dir),
        mount_helper=str(helper),
        cvmfs2=str(cvmfs2),
        automount_program="/usr/sbin/automount",
        automount_timeout_seconds=idle_timeout,
        cache_root=str(env.workdir / "cvmfs-private"),
    )
    eos = EosConfig(
        client="eosxd", eosxd=str(eosxd), config_dir=str(s.eos_config_dir), instances=instances
    )
    env.config = replace(env.config, cvmfs=cvmfs, eos=eos).validate()
    (env.workdir / "config.toml").write_text(dumps(env.config))
    return s
