"""The eosxd backend: instance configs, shared and per-credential mounts (stand-in eosxd)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
from pathlib import Path

import pytest

from mount_core.backends.eos_config import parse_instances
from mount_core.consumer import Consumer
from mount_core.errors import ConfigError, InvalidSpec, MountFailed, NotFound
from mount_core.health import HealthMonitor
from mount_core.mountinfo import MountTable
from mount_core.probe import Condition
from mount_core.spec import Credential, VolumeSpec
from tests.conftest import HepvolEnv, hepvol_cli, readme_errno, wait_for
from tests.standins.world import EOS_INSTANCE, Standins, install

HOST = EOS_INSTANCE["hostport"]
SECRET_A = b"krb5-ticket-cache-of-alice-\x00\x01 not for logs"
SECRET_B = b"krb5-ticket-cache-of-bob"


@pytest.fixture
def clients(hepvol_env: HepvolEnv) -> Standins:
    s = install(hepvol_env)
    (s.eos_dir(HOST, "/eos/experiment/cms") / "README").write_text("cms data\n")
    (s.eos_dir(HOST, "/eos/theory") / "README").write_text("theory\n")
    return s


def eos(path: str, credential: Credential | None = None) -> VolumeSpec:
    return VolumeSpec(backend="eos", instance="eostest", path=path, credential=credential)


def csi(target: Path) -> Consumer:
    return Consumer("csi", str(target))


def test_one_shared_mount_per_instance_from_a_generated_config(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    manager = hepvol_env.manager()
    cms, theory = hepvol_env.targets / "cms", hepvol_env.targets / "theory"
    manager.publish(eos("/experiment/cms"), csi(cms), str(cms))
    manager.publish(eos("/theory"), csi(theory), str(theory))
    assert (cms / "README").read_text() == "cms data\n"
    assert (theory / "README").read_text() == "theory\n"
    path = os.path.join(hepvol_env.config.mount_root, "eos-eostest")
    [call] = clients.calls("eosxd")
    assert call["argv"] == ["-ofsname=eostest", path]
    assert call["config_path"] == str(clients.eos_config_dir / "fuse.eostest.conf")
    cache = os.path.join(hepvol_env.config.state_dir, "eos", "eos-eostest")
    assert json.loads(call["config"]) == {
        "name": "eostest",
        "hostport": HOST,
        "remotemountdir": "/eos/",
        "localmountdir": path,
        "mdcachedir": f"{cache}/md",
        "cache": {"location": f"{cache}/data", "journal": f"{cache}/journal"},
        "auth": {"krb5": 1, "sss": 0},
    }
    entry = MountTable().at(path)
    assert entry is not None and (entry.fstype, entry.source) == ("fuse", "eostest")
    manager.unpublish(str(cms))
    manager.unpublish(str(theory))
    assert not (clients.eos_config_dir / "fuse.eostest.conf").exists()
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


def test_each_credential_gets_a_private_mount_and_a_0600_file_removed_after_release(
    hepvol_env: HepvolEnv, clients: Standins, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manager = hepvol_env.manager()
    alice = eos("/experiment/cms", Credential("krb5", SECRET_A))
    bob = eos("/experiment/cms", Credential("krb5", SECRET_B))
    a, b = hepvol_env.targets / "a", hepvol_env.targets / "b"
    manager.publish(alice, csi(a), str(a))
    manager.publish(bob, csi(b), str(b))
    assert alice.key != bob.key and len(manager.status()) == 2
    assert (a / "README").read_text() == (b / "README").read_text() == "cms data\n"
    files = {}
    for spec, secret in ((alice, SECRET_A), (bob, SECRET_B)):
        store = Path(hepvol_env.config.state_dir) / "credentials" / spec.key
        file = store / "krb5cc"
        info = file.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
        assert stat.S_IMODE(store.stat().st_mode) == 0o700
        assert file.read_bytes() == secret
        files[spec.key] = file
        config = json.loads(
            (clients.eos_config_dir / f"fuse.{spec.key[len('eos-') :]}.conf").read_text()
        )
        assert config["auth"]["credential-store"] == f"{store}/"
        assert config["auth"]["shared-mount"] == 0 and config["auth"]["krb5"] == 1
    argv = [c["argv"][0] for c in clients.calls("eosxd")]
    assert argv == [f"-ofsname={alice.key[4:]}", f"-ofsname={bob.key[4:]}"]
    _assert_secret_nowhere(hepvol_env)
    manager.unpublish(str(a))
    assert not files[alice.key].parent.exists(), "the credential goes with its mount"
    assert files[bob.key].exists()
    manager.unpublish(str(b))
    assert not files[bob.key].parent.exists()
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "eos mounted" in logged and "alice" not in logged and "bob" not in logged
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


def _assert_secret_nowhere(env: HepvolEnv) -> None:
    shown = hepvol_cli(env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert "alice" not in shown.stdout and "bob" not in shown.stdout
    for path in Path(env.config.state_dir).rglob("*"):
        if path.is_file() and "credentials" not in path.parts:
            data = path.read_bytes()
            assert SECRET_A not in data and SECRET_B not in data, path


def test_unknown_instance_and_bad_paths_are_refused(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    manager = hepvol_env.manager()
    target = hepvol_env.targets / "t"
    with pytest.raises(InvalidSpec, match=r'instance "eosnope".*configured: eostest'):
        manager.publish(
            VolumeSpec(backend="eos", instance="eosnope", path="/x"), csi(target), str(target)
        )
    with pytest.raises(InvalidSpec, match="path"):
        eos("/experiment/../../etc")
    with pytest.raises(NotFound, match="does not exist in the volume"):
        manager.publish(eos("/experiment/atlas"), csi(target), str(target))
    assert clients.calls("eosxd")[-1]["argv"][0] == "-ofsname=eostest"
    assert manager.status() == [] and not target.exists()
    assert list(MountTable().under(str(hepvol_env.workdir))) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "Bad Name", "hostport": "h"}, "name"),
        ({"name": "ok", "hostport": "h; rm -rf /"}, "hostport"),
        ({"name": "ok", "hostport": "h", "remotemountdir": "eos"}, "remotemountdir"),
        ({"name": "ok", "hostport": "h", "colour": "blue"}, "unknown keys"),
        ({"name": "ok", "hostport": "h", "auth": {"krb5": [1]}}, "auth"),
    ],
)
def test_instance_config_is_validated(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_instances((table,))


def test_eosxd_failure_is_surfaced(hepvol_env: HepvolEnv, clients: Standins) -> None:
    clients.fail("eosxd", "connection refused by MGM")
    target = hepvol_env.targets / "t"
    with pytest.raises(MountFailed, match="failed to mount \\(connection refused by MGM\\)"):
        hepvol_env.manager().publish(eos("/theory"), csi(target), str(target))
    assert not (clients.eos_config_dir / "fuse.eostest.conf").exists()
    assert hepvol_env.manager().status() == []


@pytest.mark.parametrize("credential", [None, Credential("oauth2", b"token-xyz")])
def test_dead_eosxd_is_repaired_with_its_credential(
    hepvol_env: HepvolEnv, clients: Standins, credential: Credential | None
) -> None:
    manager = hepvol_env.manager()
    spec = eos("/theory", credential)
    target = hepvol_env.targets / "t"
    manager.publish(spec, csi(target), str(target))
    [server] = clients.server_pids()
    os.kill(server, signal.SIGKILL)

    assert wait_for(lambda: readme_errno(target) == errno.ENOTCONN, timeout=5)
    # A new process (a restarted daemon) repairs it: the credential comes from its file.
    results = HealthMonitor(hepvol_env.manager()).run_once()
    assert results[spec.key].dead
    assert (target / "README").read_text() == "theory\n"
    assert manager.status()[0].condition == Condition.HEALTHY
    if credential is not None:
        file = Path(hepvol_env.config.state_dir) / "credentials" / spec.key / "oauth2.token"
        assert file.read_bytes() == b"token-xyz" and stat.S_IMODE(file.stat().st_mode) == 0o600


def test_failed_repair_keeps_the_credential_for_the_next_attempt(
    hepvol_env: HepvolEnv, clients: Standins
) -> None:
    manager = hepvol_env.manager()
    spec = eos("/theory", Credential("eostoken", b"zteos64:token"))
    target = hepvol_env.targets / "t"
    manager.publish(spec, csi(target), str(target))
    [server] = clients.server_pids()
    os.kill(server, signal.SIGKILL)
    clients.fail("eosxd", "MGM unreachable")
    monitor = HealthMonitor(hepvol_env.manager())
    monitor.run_once()
    condition, message = manager.condition(spec.key)
    assert (
        condition == "failed"
        and "exit code 1: 'error: failed to mount (MGM unreachable)'" in message
    )
    file = Path(hepvol_env.config.state_dir) / "credentials" / spec.key / "eos.token"
    assert file.read_bytes() == b"zteos64:token"
    clients.fail("eosxd", None)
    monitor.run_once()
    assert (target / "README").read_text() == "theory\n"
    assert manager.status()[0].condition == Condition.HEALTHY
