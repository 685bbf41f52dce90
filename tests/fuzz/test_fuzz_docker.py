"""Fuzzing the Docker plugin daemon through its Unix socket, as dockerd talks to it.

A real ``hepvol docker-plugin`` (gunicorn master and workers) serves a private world;
hypothesis posts random, malformed and hostile bodies to every endpoint. After
each case the daemon must still answer, every reply must be the protocol's JSON
(a failure: HTTP 500 with a non-empty, readable ``Err``), hostile names must be
refused, and nothing may appear outside the configured roots.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from docker_plugin.app import CONTENT_TYPE
from docker_plugin.volumes import NAME_MAX, VALID_OPTIONS
from tests.conftest import HepvolEnv
from tests.e2e.dockerd import Dockerd, Plugin, _UnixConnection, make_plugin
from tests.fuzz.conftest import (
    HOSTILE,
    PLANTED_SECRET,
    Budget,
    WorldSnapshot,
    assert_readable,
    hostile_text,
    json_values,
    names,
)

METHODS = (
    "Plugin.Activate",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
    "VolumeDriver.Capabilities",
)
#: Replies that never carry ``Err`` (the handshake).
NO_ERR = {"Plugin.Activate", "VolumeDriver.Capabilities"}
EOS_INSTANCE = "eosdemo"
#: A repository no fuzz case names, mounted once the fuzzing is over.
AFTER = "after.hepvol.org"


@pytest.fixture(params=["cvmfs", "eos"])
def plugin(
    request: pytest.FixtureRequest, hepvol_env: HepvolEnv, tmp_path: Path
) -> Iterator[Plugin]:
    """A live plugin daemon; no Docker engine (the fuzz cases are dockerd)."""
    hepvol_env.make_repo(EOS_INSTANCE, {"experiment/file.txt": "eos file\n"})
    hepvol_env.make_repo(AFTER, {"README": "after\n"})
    no_engine = Dockerd(tmp_path / "no-engine")
    yield from make_plugin(hepvol_env, no_engine, backend=request.param)


def post_raw(plugin: Plugin, method: str, body: bytes) -> tuple[int, str, bytes]:
    """POST raw bytes; (status, content type, body)."""
    connection = _UnixConnection(str(plugin.socket))
    try:
        connection.request("POST", f"/{method}", body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def options(backend: str) -> st.SearchStrategy[object]:
    keys = st.one_of(st.sampled_from((*VALID_OPTIONS[backend], "repository")), hostile_text())
    values = st.one_of(
        st.sampled_from((EOS_INSTANCE, "/experiment", "v1", "krb5")), hostile_text(), json_values()
    )
    # Only the credential option carries the planted secret: no reply may echo it.
    planted = st.builds(
        lambda opts, plant: {**opts, "credential": PLANTED_SECRET} if plant else opts,
        st.dictionaries(keys, values, max_size=5),
        st.booleans(),
    )
    return st.one_of(st.none(), json_values(), planted)


def bodies(backend: str) -> st.SearchStrategy[bytes]:
    """What a broken or hostile client might post: mostly objects with the protocol's fields."""
    fields = st.fixed_dictionaries(
        {},
        optional={
            "Name": st.one_of(names(), json_values()),
            "ID": st.one_of(st.sampled_from(("a" * 64, "m1")), hostile_text(), json_values()),
            "Opts": options(backend),
        },
    )
    extra = st.dictionaries(hostile_text(), json_values(), max_size=2)
    objects = st.builds(lambda f, e: json.dumps({**e, **f}).encode(), fields, extra)
    return st.one_of(
        objects,
        objects,
        json_values().map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


def hostile_name(name: object) -> bool:
    return isinstance(name, str) and (
        "/" in name or ".." in name or not name.isprintable() or len(name) > NAME_MAX
    )


def hostile_id(ident: object) -> bool:
    return isinstance(ident, str) and (len(ident) > NAME_MAX or not ident.isprintable())


def check_case(plugin: Plugin, snapshot: WorldSnapshot, method: str, body: bytes) -> None:
    status, content_type, raw = post_raw(plugin, method, body)
    assert content_type == CONTENT_TYPE, (status, raw[:200])
    reply = json.loads(raw)
    assert isinstance(reply, dict), reply
    err = reply.get("Err")
    if status == 500:
        assert isinstance(err, str)
        assert_readable(err)
    else:
        assert status == 200, (status, reply)
        assert err == ("" if method not in NO_ERR else None), reply
    mountpoint = reply.get("Mountpoint")
    if mountpoint:  # dockerd binds whatever path it gets: only ever a backing mount
        assert mountpoint.startswith(plugin.env.config.mount_root + "/"), mountpoint
    try:
        sent = json.loads(body)
    except ValueError:
        sent = None
    if (
        isinstance(sent, dict)
        and method == "VolumeDriver.Create"
        and hostile_name(sent.get("Name"))
    ):
        assert status == 500, f"hostile name {sent['Name']!r} was accepted"
    if isinstance(sent, dict) and method == "VolumeDriver.Mount" and hostile_id(sent.get("ID")):
        assert status == 500, f"mount ID {sent['ID']!r} was accepted"
    assert plugin.answers(), "the plugin must survive every request"
    snapshot.check()


@pytest.mark.slow
def test_random_bodies_to_every_endpoint(plugin: Plugin, hepvol_env: HepvolEnv) -> None:
    snapshot = WorldSnapshot.take(hepvol_env)

    budget = Budget(ci=300)

    @budget.settings
    @given(method=st.sampled_from(METHODS), body=bodies(plugin.backend))
    @example(method="VolumeDriver.Create", body=json.dumps({"Name": "a" * 1_000_000}).encode())
    @example(
        method="VolumeDriver.Mount", body=json.dumps({"Name": "x", "ID": "i" * 100_000}).encode()
    )
    @example(method="VolumeDriver.Create", body=b"\x00" * 100_000)
    @example(method="VolumeDriver.Get", body=b'{"Name": "\\u0000"}')
    def case(method: str, body: bytes) -> None:
        budget.ran_one()
        check_case(plugin, snapshot, method, body)

    case()
    budget.check()
    for name in HOSTILE:
        check_case(plugin, snapshot, "VolumeDriver.Create", json.dumps({"Name": name}).encode())
    listed = plugin.call("VolumeDriver.List")["Volumes"]
    assert isinstance(listed, list)
    shown = json.dumps(listed)
    assert PLANTED_SECRET not in shown
    for volume in listed:
        assert not hostile_name(volume["Name"]), volume
    snapshot.check_ledger_matches_targets()
    # Still working, not only alive: a real volume mounts and reads.
    opts = {"instance": EOS_INSTANCE, "path": "/experiment"} if plugin.backend == "eos" else {}
    name = "after-fuzz" if plugin.backend == "eos" else AFTER
    assert plugin.call("VolumeDriver.Create", {"Name": name, "Opts": opts}) == {"Err": ""}
    mounted = plugin.call("VolumeDriver.Mount", {"Name": name, "ID": "last"})
    readable = "file.txt" if plugin.backend == "eos" else "README"
    assert Path(str(mounted["Mountpoint"]), readable).exists(), mounted
    assert plugin.call("VolumeDriver.Unmount", {"Name": name, "ID": "last"}) == {"Err": ""}
