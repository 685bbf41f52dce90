"""FlexVolume drivers given bad input, secrets and broken configs, as separate processes.

Every case must answer one Failure JSON object with a message naming what was
wrong, print nothing else, and leave nothing mounted (checked in mountinfo and
the ledger). The kubelet replay helpers live in ``test_flexvolume``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from flexvolume import install
from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv
from tests.integration.test_flexvolume import Kubelet, kubelet_options


@pytest.fixture
def kubelet(hepvol_env: HepvolEnv) -> Kubelet:
    return Kubelet(hepvol_env)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"repository": ', "mount options"),
        ("[1, 2]", "options"),
        (json.dumps(kubelet_options()), "repository"),
        (json.dumps(kubelet_options(repositry=SAMPLE)), "unknown options given: repositry"),
        (json.dumps(kubelet_options(repository="../../etc")), 'invalid repository "../../etc"'),
        (json.dumps(kubelet_options(repository=SAMPLE + "/../x")), "invalid repository"),
        (json.dumps(kubelet_options(repository="sample\x00.hepvol.org")), "invalid repository"),
        (json.dumps(kubelet_options(repository="a" * 10240 + ".org")), "invalid repository"),
        (json.dumps(kubelet_options(repository=SAMPLE, tag="v1/../../x")), "invalid tag"),
        (json.dumps(kubelet_options(repository=SAMPLE, tag="x" * 10240)), "invalid tag"),
        (json.dumps({**kubelet_options(repository=SAMPLE), "kubernetes.io/readwrite": "yes"}),
         "kubernetes.io/readwrite"),
        (json.dumps({**kubelet_options(repository=SAMPLE), "kubernetes.io/pod.name": "x\x00y"}),
         "kubernetes.io/pod.name"),
        (json.dumps({**kubelet_options(repository=SAMPLE), "kubernetes.io/pod.name": "p" * 10240}),
         "kubernetes.io/pod.name"),
        (json.dumps({**kubelet_options(), "repository": ["a"]}), "must be a string"),
        (json.dumps({**kubelet_options(repository=SAMPLE), "kubernetes.io/secret/krb5": "eA=="}),
         "CVMFS volumes take no secret"),
        (json.dumps(kubelet_options(repository="missing.hepvol.org")), "missing.hepvol.org"),
    ],
)  # fmt: skip
def test_bad_options_fail_once_clearly_and_mount_nothing(
    kubelet: Kubelet, raw: str, message: str
) -> None:
    pod = kubelet.pod_dir()
    reply = kubelet.call("mount", str(pod), raw)
    assert reply["status"] == "Failure"
    assert message in reply["message"]
    assert len(reply["message"]) < 600, "a 10 KB value is not echoed back"
    assert kubelet.mounts() == []
    assert kubelet.status() == []
    assert pod.is_dir(), "kubelet's dir is left for kubelet to remove"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{root}/pods/uid/volumes/cern~cvmfs/../../../../escape", "must not contain"),
        ("{root}/pods/uid/volumes/cern~cvmfs/nul\x01x", "control characters"),
        ("/etc/elsewhere", "outside the allowed target roots"),
        ("relative/dir", "must be absolute"),
        ("{root}/" + "d" * 10240, "longer than"),
    ],
)
def test_bad_pod_dirs_fail_and_mount_nothing(kubelet: Kubelet, target: str, message: str) -> None:
    target = target.format(root=kubelet.root)
    reply = kubelet.call("mount", target, json.dumps(kubelet_options(repository=SAMPLE)))
    assert reply["status"] == "Failure"
    assert message in reply["message"]
    assert kubelet.mounts() == []
    assert kubelet.status() == []
    assert not os.path.exists("/etc/elsewhere")


def test_usage_errors_are_failures(kubelet: Kubelet) -> None:
    assert "usage" in kubelet.call()["message"]
    assert "usage" in kubelet.call("mount", "/only-a-dir")["message"]
    assert "usage" in kubelet.call("unmount")["message"]


def test_eos_volume_with_a_secret_from_the_pods_secret_ref(kubelet: Kubelet) -> None:
    kubelet.env.make_repo("eospublic", {"experiment/alice/data.txt": "alice\n"})
    pod = kubelet.pod_dir(driver="eos", name="eos")
    secret = base64.b64encode(b"not-a-real-token-0123").decode()
    options = {
        **kubelet_options(instance="eospublic", path="/experiment/alice"),
        "kubernetes.io/readwrite": "rw",
        "kubernetes.io/secret/eostoken": secret,
    }
    reply = kubelet.mount(pod, options, driver="eos")
    assert reply["status"] == "Success", reply
    assert (pod / "data.txt").read_text() == "alice\n"
    state = Path(kubelet.env.config.state_dir)
    for path in state.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".db", ".db-wal"):
            assert b"not-a-real-token" not in path.read_bytes(), f"secret leaked into {path}"
    assert kubelet.unmount(pod, driver="eos")["status"] == "Success"
    assert kubelet.mounts() == []


def test_the_reply_names_the_mode_the_core_bound(kubelet: Kubelet) -> None:
    """An EOS volume asked read-write of the embedded (read-only) server is bound read-only,
    and the reply says so (it said "read-write" while the core had bound it read-only)."""
    kubelet.env.make_repo("eospublic", {"data.txt": "x\n"})
    pod = kubelet.pod_dir(driver="eos", name="eos")
    options = {**kubelet_options(instance="eospublic"), "kubernetes.io/readwrite": "rw"}
    reply = kubelet.mount(pod, options, driver="eos")
    assert reply["status"] == "Success", reply
    entry = MountTable().at(str(pod))
    assert entry is not None and entry.readonly
    assert "mounted read-only at" in reply["message"], reply
    assert kubelet.unmount(pod, driver="eos")["status"] == "Success"


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"kubernetes.io/secret/eostoken": "***not base64***"}, "kubernetes.io/secret/eostoken"),
        ({"kubernetes.io/secret/password": "eA=="}, "exactly one of the keys krb5, oauth2, eostoken"),
        ({"kubernetes.io/secret/krb5": "eA==", "kubernetes.io/secret/oauth2": "eA=="},
         "exactly one"),
    ],
)  # fmt: skip
def test_bad_eos_secrets_fail_without_showing_the_secret(
    kubelet: Kubelet, secrets: dict[str, str], message: str
) -> None:
    kubelet.env.make_repo("eospublic", {"a/b": "x"})
    pod = kubelet.pod_dir(driver="eos", name="eos")
    reply = kubelet.mount(pod, {**kubelet_options(instance="eospublic"), **secrets}, driver="eos")
    assert reply["status"] == "Failure"
    assert message in reply["message"]
    assert "not base64" not in reply["message"]
    assert kubelet.mounts() == []


def test_crashes_and_bad_config_still_answer_one_failure(kubelet: Kubelet, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state-is-a-file"
    not_a_dir.write_text("")
    odd_state = tmp_path / "odd-state"
    (odd_state / "logs" / "flexvolume.log").mkdir(parents=True)  # an unexpected crash
    broken = {
        "bad-toml.toml": "state_dir = [",
        "file-state.toml": f'state_dir = "{not_a_dir}"\n',
        "odd-state.toml": f'state_dir = "{odd_state}"\n',
    }
    expected = {
        "bad-toml.toml": "is not valid TOML",
        "file-state.toml": "is not a directory; move it away",
        "odd-state.toml": "internal error: IsADirectoryError",
    }
    for name, text in broken.items():
        config = tmp_path / name
        config.write_text(text)
        plugins = tmp_path / name.replace(".toml", "")
        install.install(str(plugins), str(config))
        result = subprocess.run(
            [install.driver_path(str(plugins), "cvmfs"), "unmount", str(kubelet.root / "x")],
            env={}, capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        assert result.stderr == b""
        [line] = result.stdout.decode().splitlines()
        reply = json.loads(line)
        assert reply["status"] == "Failure" and result.returncode == 1
        assert expected[name] in reply["message"]
    assert kubelet.mounts() == []
