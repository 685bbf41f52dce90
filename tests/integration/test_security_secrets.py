"""A planted EOS credential, passed through each front, is only ever in its 0600 file.

Each test starts the real daemon (or installed FlexVolume driver) on the eos backend
with the stand-in eosxd, logs at DEBUG, passes a credential the way its users do
(Docker: a registered ``-o credential-name=`` through a real dockerd, the raw
``-o credential=`` refused; a pod's ``kubernetes.io/secret/krb5``, CSI node
publish secrets), makes the front refuse a few bad requests that carry it too,
then greps everything a person or a scraper could read: every file of the test's
world (state dir, ledger, logs, daemon output, generated eosxd configs, the
stand-in's record of its argv), ``hepvol status`` in text and JSON, and the
Prometheus metrics. The credential files themselves must be 0600, root's, in 0700
directories, and gone once the volume is released.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from csi_driver.client import Client
from mount_core.config import dumps
from tests.conftest import REPO, HepvolEnv, hepvol_cli, wait_for
from tests.e2e.dockerd import Dockerd, make_plugin
from tests.integration.test_csi_node import start_csi
from tests.integration.test_flexvolume import Kubelet, kubelet_options
from tests.standins.world import EOS_INSTANCE, install

SECRET = b"planted-krb5-ticket-cache-5e1f0c"
INSTANCE = EOS_INSTANCE["name"]
EOS_PATH = "/experiment/cms"


@pytest.fixture
def eos_world(hepvol_env: HepvolEnv) -> HepvolEnv:
    """The test's world on the eos backend (stand-in eosxd), logging at DEBUG."""
    standins = install(hepvol_env)
    (standins.eos_dir(EOS_INSTANCE["hostport"], "/eos" + EOS_PATH) / "README").write_text("cms\n")
    hepvol_env.config = replace(hepvol_env.config, log_level="DEBUG")
    (hepvol_env.workdir / "config.toml").write_text(dumps(hepvol_env.config))
    return hepvol_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def credential_files(env: HepvolEnv) -> list[Path]:
    root = Path(env.config.state_dir) / "credentials"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_secret_only_in_credential_files(env: HepvolEnv, *shown: str) -> None:
    """Grep the whole world and everything shown; credential files must be root-only."""
    forms = (SECRET, base64.b64encode(SECRET))
    for text in shown:
        assert not any(form.decode() in text for form in forms), text[:300]
    for text in (hepvol_cli(env, "status").stdout, hepvol_cli(env, "status", "--json").stdout):
        assert text and not any(form.decode() in text for form in forms)
    kept = set(credential_files(env))
    for directory, _dirs, files in os.walk(env.workdir.parent):
        for name in files:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            if path in kept:
                info = path.stat()
                assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0, path
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
                continue
            data = path.read_bytes()
            assert not any(form in data for form in forms), f"the secret leaked into {path}"


def assert_released(env: HepvolEnv) -> None:
    assert credential_files(env) == [], "credential files go with their volume"
    assert_secret_only_in_credential_files(env)


@pytest.fixture
def watch_metrics(eos_world: HepvolEnv) -> Iterator[int]:
    """``hepvol watch`` (the FlexVolume nodes' daemon) serving metrics on a free port."""
    port = free_port()
    with open(eos_world.workdir / "watch.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hepvol", "watch", "--metrics-port", str(port),
             "--metrics-address", "127.0.0.1"],
            env=eos_world.environ(), stdout=log, stderr=log, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for(lambda: _answers(port), 30), (eos_world.workdir / "watch.log").read_text()
        yield port
    finally:
        process.kill()
        process.wait(10)


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def _grep_tree(root: Path, needle: bytes) -> list[Path]:
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            with contextlib.suppress(OSError):
                if not path.is_symlink() and path.is_file() and needle in path.read_bytes():
                    found.append(path)
    return found


def test_docker_takes_credentials_by_reference_and_never_shows_them(
    eos_world: HepvolEnv, dockerd: Dockerd
) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "hepvol", "credential", "add", "cms-krb5", "--type", "krb5",
         "--file", "-"], input=SECRET, env=eos_world.environ(), capture_output=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert b"credential-name=cms-krb5" in added.stdout
    for plugin in make_plugin(eos_world, dockerd, backend="eos"):
        where = ["-o", f"instance={INSTANCE}", "-o", f"path={EOS_PATH}"]
        create = ["volume", "create", "-d", plugin.driver, *where]
        raw = dockerd.docker(*create, "-o", "credential-type=krb5", "-o",
                             f"credential={SECRET.decode()}", "cms-raw", check=False)  # fmt: skip
        assert raw.returncode != 0
        assert "hepvol credential add NAME --type KIND --file FILE" in raw.stderr, raw.stderr
        assert "credential-name=NAME" in raw.stderr and len(raw.stderr.strip().splitlines()) == 1
        replies = [
            plugin.call("VolumeDriver.Create", {"Name": "bad", "Opts": {"credential": SECRET.decode(),
                        "credential-type": "krb5", "instance": INSTANCE}}),
            plugin.call("VolumeDriver.Create", {"Name": "bad", "Opts": {"credential-name": "nope",
                        "instance": INSTANCE}}),
        ]  # fmt: skip
        assert all(reply["Err"] for reply in replies), replies
        refused = [raw.stderr, str(replies)]
        dockerd.docker(*create, "-o", "credential-name=cms-krb5", "cms")
        out = plugin.run(["-v", "cms:/eos/cms", "--volume-driver", plugin.driver],
                         "cat", "/eos/cms/README")  # fmt: skip
        assert out == "cms\n"
        inspected = dockerd.docker("volume", "inspect", "cms").stdout
        assert '"credential-name": "cms-krb5"' in inspected
        listed = dockerd.docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout
        assert listed.split() == ["cms"], "the refused volume is not kept"
        assert len(credential_files(eos_world)) == 2, "the registered one and the volume's copy"
        assert_secret_only_in_credential_files(eos_world, str(refused), inspected)
        dockerd.docker("volume", "rm", "cms")
        assert _grep_tree(dockerd.root, SECRET) == [], "dockerd keeps no secret"
    removed = hepvol_cli(eos_world, "credential", "rm", "cms-krb5")
    assert removed.returncode == 0, removed.stderr
    assert_released(eos_world)


def test_flexvolume_secret_ref_is_never_shown(eos_world: HepvolEnv, watch_metrics: int) -> None:
    kubelet = Kubelet(eos_world)
    secret = {"kubernetes.io/secret/krb5": base64.b64encode(SECRET).decode()}
    pod = kubelet.pod_dir(driver="eos", name="cms")
    refused = [
        kubelet.mount(pod, {**kubelet_options(instance=INSTANCE, path="/a/../b"), **secret},
                      driver="eos"),
        kubelet.mount(pod, {**kubelet_options(instance="nope"), **secret}, driver="eos"),
        kubelet.mount(pod, {**kubelet_options(instance=INSTANCE),
                            "kubernetes.io/secret/password": secret["kubernetes.io/secret/krb5"]},
                      driver="eos"),
        kubelet.call("mount", str(pod), '{"kubernetes.io/secret/krb5": "' +
                     secret["kubernetes.io/secret/krb5"], driver="eos"),
    ]  # fmt: skip
    assert all(reply["status"] == "Failure" for reply in refused), refused
    options = {**kubelet_options(instance=INSTANCE, path=EOS_PATH), **secret}
    assert kubelet.mount(pod, options, driver="eos")["status"] == "Success"
    assert (pod / "README").read_text() == "cms\n"
    assert len(credential_files(eos_world)) == 1
    assert_secret_only_in_credential_files(eos_world, str(refused), scrape(watch_metrics))
    assert kubelet.unmount(pod, driver="eos")["status"] == "Success"
    assert_released(eos_world)


def test_csi_node_publish_secrets_are_never_shown(eos_world: HepvolEnv) -> None:
    port = free_port()
    args = ("--driver", "eos", "--mode", "all", "--node-id", "n1", "--metrics-port", str(port),
            "--metrics-address", "127.0.0.1")  # fmt: skip
    for csi in start_csi(eos_world, *args):
        client: Client = csi.client
        target = eos_world.targets / "pod" / "vol"
        target.parent.mkdir()
        context = {"instance": INSTANCE, "path": EOS_PATH}
        refused = []
        for bad_context, secrets in (
            ({**context, "path": "/a/../b"}, {"krb5": SECRET.decode()}),
            (context, {"krb5": SECRET.decode(), "oauth2": SECRET.decode()}),
            (context, {"password": SECRET.decode()}),
            ({**context, "tag": "x"}, {"krb5": SECRET.decode()}),
        ):
            with pytest.raises(grpc.RpcError) as info:
                client.publish("vol", str(target), bad_context, secrets=secrets)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            refused.append(info.value.details())
        client.publish("vol", str(target), context, secrets={"krb5": SECRET.decode()})
        assert (target / "README").read_text() == "cms\n"
        stats = client.stats("vol", str(target))
        assert len(credential_files(eos_world)) == 1
        assert_secret_only_in_credential_files(eos_world, str(refused), str(stats), scrape(port))
        client.unpublish("vol", str(target))
        assert_released(eos_world)
