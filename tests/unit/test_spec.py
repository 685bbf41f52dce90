"""VolumeSpec parsing: what users type, and the errors they see when it is wrong."""

from __future__ import annotations

import pytest

from mount_core.errors import InvalidSpec
from mount_core.spec import Credential, VolumeSpec, from_docker_name, from_options


def test_docker_names_parse_into_pins() -> None:
    assert from_docker_name("cvmfs", "atlas.cern.ch").source == "atlas.cern.ch"
    tagged = from_docker_name("cvmfs", "atlas.cern.ch@trunk-previous")
    assert (tagged.repository, tagged.tag) == ("atlas.cern.ch", "trunk-previous")
    hashed = from_docker_name("cvmfs", "lhcb.cern.ch#" + "a" * 40)
    assert hashed.hash == "a" * 40
    dated = from_docker_name("cvmfs", "atlas.cern.ch", {"date": "2024-05-01T00:00:00Z"})
    assert dated.date == "2024-05-01T00:00:00Z"


@pytest.mark.parametrize(
    ("name", "opts", "field"),
    [
        ("Atlas.cern.ch", None, "repository"),
        ("atlas", None, "repository"),
        ("atlas..cern.ch", None, "repository"),
        ("-atlas.cern.ch", None, "repository"),
        ("../etc/passwd", None, "repository"),
        ("atlas.cern.ch/..", None, "repository"),
        ("a" * 250 + ".ch", None, "repository"),
        ("atlas.cern.ch\n", None, "repository"),
        ("atlas.cern.ch@", None, "volume name"),
        ("atlas.cern.ch@bad tag", None, "tag"),
        ("atlas.cern.ch#nothex", None, "hash"),
        ("atlas.cern.ch", {"date": "yesterday"}, "date"),
        ("atlas.cern.ch", {"tag": "a", "hash": "b" * 40}, "hash"),
        ("atlas.cern.ch", {"colour": "blue"}, "option"),
        ("atlas.cern.ch@v1", {"tag": "v2"}, "tag"),
    ],
)
def test_bad_names_and_options_name_the_field_and_the_rule(
    name: str, opts: dict[str, str] | None, field: str
) -> None:
    with pytest.raises(InvalidSpec) as info:
        from_docker_name("cvmfs", name, opts)
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"invalid {field} ")
    assert "\n" not in message and len(message) < 400


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidSpec, match="valid options are: repository, tag, hash"):
        from_options("cvmfs", {"repository": "atlas.cern.ch", "tga": "v1"})


def test_lenient_parsing_ignores_unknown_keys() -> None:
    spec = from_options(
        "cvmfs", {"repository": "lhcb.cern.ch", "kubernetes.io/pod.name": "p"}, strict=False
    )
    assert spec.repository == "lhcb.cern.ch"


def test_keys_are_stable_distinct_and_safe_as_file_names() -> None:
    trunk = VolumeSpec(backend="cvmfs", repository="atlas.cern.ch")
    assert trunk.key == "cvmfs-atlas.cern.ch"
    tag = VolumeSpec(backend="cvmfs", repository="atlas.cern.ch", tag="v1")
    assert tag.key == VolumeSpec(backend="cvmfs", repository="atlas.cern.ch", tag="v1").key
    other = VolumeSpec(backend="cvmfs", repository="atlas.cern.ch", tag="v2")
    assert len({trunk.key, tag.key, other.key}) == 3
    for key in (trunk.key, tag.key):
        assert "/" not in key and len(key) < 255


def test_clientconfig_accepts_cvmfs_lines_only() -> None:
    spec = from_options(
        "cvmfs",
        {"repository": "a.cern.ch", "clientConfig": "# site\nCVMFS_HTTP_PROXY=DIRECT\n"},
    )
    assert spec.pinned
    with pytest.raises(InvalidSpec, match="clientConfig"):
        from_options("cvmfs", {"repository": "a.cern.ch", "clientConfig": "rm -rf /"})


def test_eos_instance_and_path_rules() -> None:
    spec = from_options("eos", {"instance": "eospublic", "path": "/eos/opendata/cms"})
    assert spec.subpath == "eos/opendata/cms"
    assert spec.key == "eos-eospublic", "EOS volumes of one instance share one mount"
    for path in ("relative", "/eos/../etc", "/eos/./x", "/eos/\x00"):
        with pytest.raises(InvalidSpec, match="path"):
            from_options("eos", {"instance": "eospublic", "path": path})
    with pytest.raises(InvalidSpec, match="instance"):
        from_options("eos", {"instance": "EOS Public"})
    with pytest.raises(InvalidSpec, match="instance"):
        from_options("eos", {"path": "/eos"})


def test_credentials_split_mounts_but_never_show() -> None:
    one = Credential("eostoken", b"zteos64:SECRET-ONE")
    two = Credential("eostoken", b"zteos64:SECRET-TWO")
    a = VolumeSpec(backend="eos", instance="eospublic", credential=one)
    b = VolumeSpec(backend="eos", instance="eospublic", credential=two)
    assert a.key != b.key
    for text in (repr(a), a.key, str(a.to_public()), a.source):
        assert "SECRET" not in text
    assert VolumeSpec.from_public(a.to_public()).credential is None


def test_error_values_are_quoted_escaped_and_truncated() -> None:
    with pytest.raises(InvalidSpec) as info:
        VolumeSpec(backend="cvmfs", repository="x" * 1000 + "\x00")
    message = str(info.value)
    assert "x" * 61 not in message and "…" in message
    assert "\x00" not in message
