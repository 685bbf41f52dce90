"""Deeply nested JSON and paths that are not UTF-8: a clear refusal on every front.

Issue #14 item 13 (first half): such requests answered "internal error" (a
RecursionError, or a string SQLite cannot store). Each front now refuses them
with one line saying what was wrong, and nothing is mounted or recorded.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.conftest import HepvolEnv
from tests.e2e.dockerd import Plugin, _UnixConnection
from tests.integration.test_csi_node import CsiProcess, mounts_under
from tests.integration.test_flexvolume import Kubelet, kubelet_options

#: Deep enough for any JSON parser's recursion limit; one argv string holds 128 KiB.
DEPTH = 50_000
DEEP = "[" * DEPTH + "]" * DEPTH


def _raw_docker(plugin: Plugin, method: str, body: bytes) -> tuple[int, dict[str, object]]:
    connection = _UnixConnection(str(plugin.socket))
    try:
        connection.request("POST", f"/{method}", body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    except http.client.HTTPException as exc:
        raise AssertionError(f"no HTTP reply: {exc!r}") from None
    finally:
        connection.close()


def _clear(message: object) -> str:
    text = str(message)
    assert text and "internal error" not in text and "\n" not in text, text
    return text


def _nothing_changed(world: HepvolEnv, kubelet: Kubelet) -> None:
    assert mounts_under(world) == []
    assert kubelet.status() == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"Name": "sample.hepvol.org", "Opts": ' + DEEP.encode() + b"}",
        DEEP.encode(),
        b'{"Name": "sample.hepvol.org\\udcff"}',
        b'{"Name": "sample.hepvol.org", "Opts": {"tag": "v\\ud800"}}',
        b'{"Name": "sample.hepvol.org\xff\xfe"}',
    ],
    ids=["deep opts", "deep body", "lone surrogate name", "lone surrogate tag", "bad utf-8"],
)
def test_docker_refuses_deep_json_and_bad_text_clearly(
    world: HepvolEnv, plugin: Plugin, kubelet: Kubelet, body: bytes
) -> None:
    for method in ("VolumeDriver.Create", "VolumeDriver.Mount"):
        status, reply = _raw_docker(plugin, method, body)
        assert status == 500 and _clear(reply.get("Err")), reply
    _nothing_changed(world, kubelet)


def _flex(kubelet: Kubelet, *args: str | bytes) -> dict[str, object]:
    result = subprocess.run([kubelet.driver(), *args], env={}, capture_output=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.stderr == b""
    [line] = result.stdout.decode().splitlines()
    reply: dict[str, object] = json.loads(line)
    return reply


@pytest.mark.parametrize("through", ["in-process", "node daemon"])
def test_flexvolume_refuses_deep_json_and_non_utf8_paths_clearly(
    world: HepvolEnv, kubelet: Kubelet, through: str, request: pytest.FixtureRequest
) -> None:
    if through == "node daemon":
        request.getfixturevalue("csi")  # hepvol csi serves the launcher's hand-over
    pod = kubelet.pod_dir()
    options = json.dumps(kubelet_options(repository="sample.hepvol.org"))
    reply = _flex(kubelet, "mount", str(pod), DEEP)
    assert reply["status"] == "Failure" and "mount options" in _clear(reply["message"]), reply
    deep_value = json.dumps(kubelet_options(repository="sample.hepvol.org"))[:-1] + (
        ', "x": ' + DEEP + "}"
    )
    reply = _flex(kubelet, "mount", str(pod), deep_value)
    assert reply["status"] == "Failure" and "mount options" in _clear(reply["message"]), reply

    bad = bytes(pod.parent) + b"/caf\xe9"
    Path(bad.decode("utf-8", "surrogateescape")).mkdir()
    for args in (("mount", bad, options), ("unmount", bad)):
        reply = _flex(kubelet, *args)
        assert reply["status"] == "Failure", reply
        assert "not valid UTF-8" in _clear(reply["message"]), reply
    _nothing_changed(world, kubelet)


def _raw_csi(csi: CsiProcess, method: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(csi.endpoint) as channel:
        call = channel.unary_unary(method)
        try:
            call(body, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    raise AssertionError(f"{method} accepted {body[:40]!r}")


def test_csi_refuses_deep_messages_and_non_utf8_paths_clearly(
    world: HepvolEnv, csi: CsiProcess, kubelet: Kubelet
) -> None:
    target = str(world.targets / "pod").encode()
    bad_target = b"\x22" + bytes([len(target) + 2]) + target + b"\xff\xfe"
    deep_group = b"\x7b" * 5_000 + b"\x7c" * 5_000  # nested unknown groups (field 15)
    for body in (b"\x0a\x03vol" + bad_target, b"\x0a\x03vol" + deep_group):
        for method in ("/csi.v1.Node/NodePublishVolume", "/csi.v1.Node/NodeUnpublishVolume"):
            code, details = _raw_csi(csi, method, body)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            _clear(details)
    _nothing_changed(world, kubelet)
