"""The plugin's Flask app through its test client, on real FUSE mounts: every endpoint and error rule."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from docker_plugin.app import CONTENT_TYPE, create_app
from docker_plugin.volumes import DockerVolumes
from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv

CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SECRET = "s3cr3t-Kerberos-ticket"


@pytest.fixture
def client(hepvol_env: HepvolEnv) -> Iterator[FlaskClient]:
    yield create_app(DockerVolumes(hepvol_env.manager(), "cvmfs", "cvmfs")).test_client()


@pytest.fixture
def eos_client(hepvol_env: HepvolEnv) -> Iterator[FlaskClient]:
    hepvol_env.make_repo("eosdemo", {"experiment/file.txt": "eos file\n"})
    yield create_app(DockerVolumes(hepvol_env.manager(), "eos", "eos")).test_client()


def post(client: FlaskClient, method: str, body: Any = None, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else json.dumps(body or {})
    response = client.post(f"/{method}", data=data)
    assert response.content_type == CONTENT_TYPE
    reply = json.loads(response.data)
    failed = bool(reply.get("Err"))
    assert response.status_code == (500 if failed else 200), reply
    return reply


def test_activate_and_capabilities(client: FlaskClient) -> None:
    assert post(client, "Plugin.Activate", raw=b"") == {"Implements": ["VolumeDriver"]}
    assert post(client, "VolumeDriver.Capabilities") == {"Capabilities": {"Scope": "local"}}


def test_implicit_create_get_list_and_remove(client: FlaskClient, hepvol_env: HepvolEnv) -> None:
    assert post(client, "VolumeDriver.Create", {"Name": SAMPLE, "Opts": None}) == {"Err": ""}
    got = post(client, "VolumeDriver.Get", {"Name": SAMPLE})
    assert got["Err"] == ""
    assert set(got["Volume"]) == {"Name", "Mountpoint", "CreatedAt", "Status"}
    assert got["Volume"]["Name"] == SAMPLE and got["Volume"]["Mountpoint"] == ""
    assert CREATED_AT.match(got["Volume"]["CreatedAt"])
    assert got["Volume"]["Status"] == {"source": SAMPLE}
    listed = post(client, "VolumeDriver.List")
    assert listed == {"Volumes": [{"Name": SAMPLE, "Mountpoint": ""}], "Err": ""}
    assert post(client, "VolumeDriver.Path", {"Name": SAMPLE}) == {"Mountpoint": "", "Err": ""}
    assert post(client, "VolumeDriver.Remove", {"Name": SAMPLE}) == {"Err": ""}
    assert post(client, "VolumeDriver.List") == {"Volumes": [], "Err": ""}
    assert "no cvmfs volume named" in post(client, "VolumeDriver.Get", {"Name": SAMPLE})["Err"]
    assert post(client, "VolumeDriver.Remove", {"Name": SAMPLE}) == {"Err": ""}, "idempotent"
    assert hepvol_env.manager().status() == []


def test_volume_records_outlive_the_app(client: FlaskClient, hepvol_env: HepvolEnv) -> None:
    post(client, "VolumeDriver.Create", {"Name": f"{SAMPLE}@v1", "Opts": {}})
    restarted = create_app(DockerVolumes(hepvol_env.manager(), "cvmfs", "cvmfs")).test_client()
    assert post(restarted, "VolumeDriver.Get", {"Name": f"{SAMPLE}@v1"})["Err"] == ""
    other_driver = create_app(DockerVolumes(hepvol_env.manager(), "other", "cvmfs")).test_client()
    assert post(other_driver, "VolumeDriver.List")["Volumes"] == [], "records are per driver"


def test_create_again_same_options_is_fine_other_options_conflict(client: FlaskClient) -> None:
    body = {"Name": SAMPLE, "Opts": {"tag": "v1"}}
    assert post(client, "VolumeDriver.Create", body)["Err"] == ""
    assert post(client, "VolumeDriver.Create", body)["Err"] == ""
    err = post(client, "VolumeDriver.Create", {"Name": SAMPLE, "Opts": None})["Err"]
    assert "already exists with other options (sample.hepvol.org@v1)" in err
    assert "docker volume rm" in err


def test_mount_is_a_multiset_and_path_shows_the_mountpoint_only_while_mounted(
    client: FlaskClient, hepvol_env: HepvolEnv
) -> None:
    post(client, "VolumeDriver.Create", {"Name": SAMPLE})
    first = post(client, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "a" * 64})
    assert first["Err"] == ""
    path = first["Mountpoint"]
    assert Path(path, "README").read_text() == "sample trunk\n"
    again = post(client, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "a" * 64})
    assert again["Mountpoint"] == path
    assert post(client, "VolumeDriver.Path", {"Name": SAMPLE})["Mountpoint"] == path
    got = post(client, "VolumeDriver.Get", {"Name": SAMPLE})["Volume"]
    assert got["Mountpoint"] == path
    assert got["Status"] == {"source": SAMPLE, "mounts": 2, "condition": "healthy"}
    err = post(client, "VolumeDriver.Remove", {"Name": SAMPLE})["Err"]
    assert "in use by 2 mounts" in err and "stop or remove those containers" in err
    post(client, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "a" * 64})
    assert Path(path, "README").read_text() == "sample trunk\n", "one hold is left"
    post(client, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "a" * 64})
    assert post(client, "VolumeDriver.Path", {"Name": SAMPLE})["Mountpoint"] == ""
    assert MountTable().at(path) is None
    assert post(client, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "a" * 64}) == {"Err": ""}
    assert post(client, "VolumeDriver.Remove", {"Name": SAMPLE}) == {"Err": ""}


def test_pinned_volume_mounts_the_tag(client: FlaskClient) -> None:
    post(client, "VolumeDriver.Create", {"Name": f"{SAMPLE}@v1"})
    path = post(client, "VolumeDriver.Mount", {"Name": f"{SAMPLE}@v1", "ID": "x"})["Mountpoint"]
    assert Path(path, "README").read_text() == "sample v1\n"
    post(client, "VolumeDriver.Unmount", {"Name": f"{SAMPLE}@v1", "ID": "x"})


@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        (SAMPLE, {"foo": "bar"}, 'invalid option "foo": valid options are: tag, hash, date'),
        (SAMPLE, {"repository": "x.cern.ch"}, "the repository is the volume name"),
        (SAMPLE, {"tag": 3}, "must be a string"),
        (SAMPLE, ["tag=v1"], "Opts"),
        ("a/b.cern.ch", None, "invalid volume name"),
        ("..", None, "invalid volume name"),
        ("x.cern.ch\n", None, "invalid volume name"),
        ("x\x00.cern.ch", None, "invalid volume name"),
        ("a" * 256, None, "invalid volume name"),
        ("UPPER.cern.ch", None, "invalid repository"),
        (f"{SAMPLE}@", None, "use repo, repo@tag or repo#hash"),
        (f"{SAMPLE}@v1", {"tag": "v2"}, "conflicts with the tag in the name"),
    ],
)
def test_bad_names_and_options_are_refused_and_nothing_is_kept(
    client: FlaskClient, hepvol_env: HepvolEnv, name: str, opts: Any, message: str
) -> None:
    err = post(client, "VolumeDriver.Create", {"Name": name, "Opts": opts})["Err"]
    assert message in err
    assert post(client, "VolumeDriver.List")["Volumes"] == []
    assert "invalid" in post(client, "VolumeDriver.Mount", {"Name": name, "ID": "x"})["Err"] or (
        "no cvmfs volume" in post(client, "VolumeDriver.Mount", {"Name": name, "ID": "x"})["Err"]
    )
    assert hepvol_env.manager().status() == []


@pytest.mark.parametrize(
    ("method", "raw", "message"),
    [
        ("VolumeDriver.Create", b"{not json", "not JSON"),
        ("VolumeDriver.Create", b"[]", "must be a JSON object"),
        ("VolumeDriver.Get", b"{}", "field 'Name'"),
        ("VolumeDriver.Mount", json.dumps({"Name": SAMPLE}).encode(), "field 'ID'"),
        ("VolumeDriver.Remove", json.dumps({"Name": 5}).encode(), "field 'Name'"),
    ],
)
def test_malformed_requests_get_an_err(
    client: FlaskClient, method: str, raw: bytes, message: str
) -> None:
    assert message in post(client, method, raw=raw)["Err"]


def test_mount_of_an_unknown_repository_fails_and_leaves_nothing(
    client: FlaskClient, hepvol_env: HepvolEnv
) -> None:
    post(client, "VolumeDriver.Create", {"Name": "missing.cern.ch"})
    err = post(client, "VolumeDriver.Mount", {"Name": "missing.cern.ch", "ID": "x"})["Err"]
    assert "missing.cern.ch is not available on this node" in err
    assert hepvol_env.manager().status() == []
    assert os.listdir(hepvol_env.config.mount_root) == []


def _secret_file(directory: Path, value: str) -> str:
    path = directory / "token"
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


def test_eos_volume_with_a_credential_file_never_shows_it(
    eos_client: FlaskClient, hepvol_env: HepvolEnv, caplog: pytest.LogCaptureFixture
) -> None:
    opts = {"instance": "eosdemo", "path": "/experiment", "credential-type": "krb5",
            "credential-file": _secret_file(hepvol_env.workdir, SECRET)}  # fmt: skip
    assert post(eos_client, "VolumeDriver.Create", {"Name": "my-data", "Opts": opts})["Err"] == ""
    Path(opts["credential-file"]).write_text("second-Secret")
    again = post(eos_client, "VolumeDriver.Create", {"Name": "my-data", "Opts": opts})["Err"]
    assert "already exists" in again and SECRET not in again and "second-Secret" not in again
    stored = list((Path(hepvol_env.config.state_dir) / "credentials").rglob("*"))
    files = [p for p in stored if p.is_file()]
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    mounted = post(eos_client, "VolumeDriver.Mount", {"Name": "my-data", "ID": "m"})
    assert Path(mounted["Mountpoint"], "file.txt").read_text() == "eos file\n"
    shown = json.dumps(
        [post(eos_client, "VolumeDriver.Get", {"Name": "my-data"}),
         post(eos_client, "VolumeDriver.List")]
    )  # fmt: skip
    assert SECRET not in shown and SECRET not in caplog.text
    assert SECRET.encode() not in Path(hepvol_env.config.ledger_path).read_bytes()
    post(eos_client, "VolumeDriver.Unmount", {"Name": "my-data", "ID": "m"})
    assert post(eos_client, "VolumeDriver.Remove", {"Name": "my-data"})["Err"] == ""
    assert not files[0].exists(), "the volume's copy of the credential goes with it"


def test_a_credential_file_others_can_read_is_refused(
    eos_client: FlaskClient, hepvol_env: HepvolEnv
) -> None:
    path = _secret_file(hepvol_env.workdir, SECRET)
    os.chmod(path, 0o644)
    opts = {"instance": "eosdemo", "credential-type": "krb5", "credential-file": path}
    err = post(eos_client, "VolumeDriver.Create", {"Name": "v", "Opts": opts})["Err"]
    assert f"chown root:root {path} && chmod 0600 {path}" in err and SECRET not in err
    link = hepvol_env.workdir / "link"
    link.symlink_to(path)
    os.chmod(path, 0o600)
    err = post(eos_client, "VolumeDriver.Create",
               {"Name": "v", "Opts": {**opts, "credential-file": str(link)}})["Err"]  # fmt: skip
    assert "cannot open it" in err
    assert post(eos_client, "VolumeDriver.List")["Volumes"] == []


@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        ("v", None, "instance"),
        (
            "v",
            {"instance": "eosdemo", "tag": "x"},
            "valid options are: instance, path, credential-type, credential-file, credential-name",
        ),
        ("v", {"instance": "eosdemo", "credential": SECRET}, "hepvol credential add NAME"),
        ("v", {"instance": "eosdemo", "credential-file": "/etc/hostname"}, "give both"),
        (
            "v",
            {"instance": "eosdemo", "credential-type": "nope", "credential-file": "/x"},
            "credential type",
        ),
        ("v", {"instance": "eosdemo", "credential-name": "absent"}, "no credential named"),
        ("v", {"instance": "eosdemo", "credential-name": "../x"}, "invalid credential name"),
        ("v", {"instance": "eosdemo", "path": "/a/../b"}, "invalid path"),
        ("a/b", {"instance": "eosdemo"}, "invalid volume name"),
        ("..", {"instance": "eosdemo"}, "invalid volume name"),
    ],
)
def test_eos_bad_options_are_refused_without_echoing_secrets(
    eos_client: FlaskClient, name: str, opts: Any, message: str
) -> None:
    err = post(eos_client, "VolumeDriver.Create", {"Name": name, "Opts": opts})["Err"]
    assert message in err and SECRET not in err
    assert post(eos_client, "VolumeDriver.List")["Volumes"] == []


def test_mounts_wait_for_the_start_up_reconcile_but_get_answers(hepvol_env: HepvolEnv) -> None:
    ready = threading.Event()
    volumes = DockerVolumes(hepvol_env.manager(), "cvmfs", "cvmfs", ready=ready, ready_timeout=0.2)
    client = create_app(volumes).test_client()
    post(client, "VolumeDriver.Create", {"Name": SAMPLE})
    assert post(client, "VolumeDriver.Get", {"Name": SAMPLE})["Err"] == ""
    err = post(client, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "x"})["Err"]
    assert "still reconciling" in err
    assert hepvol_env.manager().status() == []
    ready.set()
    assert post(client, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "x"})["Err"] == ""
    post(client, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "x"})


def test_an_unexpected_failure_is_an_err_without_internals(hepvol_env: HepvolEnv) -> None:
    class Broken(DockerVolumes):
        def list(self) -> Any:
            raise RuntimeError("/secret/internal/path exploded")

    client = create_app(Broken(hepvol_env.manager(), "cvmfs", "cvmfs")).test_client()
    err = post(client, "VolumeDriver.List")["Err"]
    assert "internal error in the hepvol Docker plugin (RuntimeError)" in err
    assert "/secret/internal/path" not in err


@pytest.mark.parametrize("opts", [{"date": "2024-01-01T00:00:00Z"}, {"clientConfig": "CVMFS_X=1"}])
def test_options_the_embedded_client_cannot_serve_are_refused_at_create(
    client: FlaskClient, opts: dict[str, str]
) -> None:
    err = post(client, "VolumeDriver.Create", {"Name": SAMPLE, "Opts": opts})["Err"]
    assert "date pins and clientConfig need the real client" in err, err
    assert 'cvmfs.client = "cvmfs2"' in err
    assert post(client, "VolumeDriver.List")["Volumes"] == [], "nothing recorded"


def test_inspect_names_the_containers_that_hold_a_mount_replaced_under_them(
    client: FlaskClient, hepvol_env: HepvolEnv
) -> None:
    import signal

    from mount_core.health import HealthMonitor

    post(client, "VolumeDriver.Create", {"Name": SAMPLE})
    path = post(client, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "old"})["Mountpoint"]
    for pid in hepvol_env.server_pids():
        os.kill(pid, signal.SIGKILL)
    assert HealthMonitor(hepvol_env.manager()).run_once()[f"cvmfs-{SAMPLE}"].dead
    assert Path(path, "README").read_text() == "sample trunk\n", "repaired on the host"
    post(client, "VolumeDriver.Mount", {"Name": SAMPLE, "ID": "new"})
    status = post(client, "VolumeDriver.Get", {"Name": SAMPLE})["Volume"]["Status"]
    assert status["mounts"] == 2 and status["stale_mounts"] == 1
    assert (
        status["message"].startswith("1 of the mounts: ")
        and "restart the container" in (status["message"])
    )
    post(client, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "old"})
    status = post(client, "VolumeDriver.Get", {"Name": SAMPLE})["Volume"]["Status"]
    assert status == {"source": SAMPLE, "mounts": 1, "condition": "healthy"}
    post(client, "VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "new"})
