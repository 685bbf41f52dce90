"""Fuzzing the installed FlexVolume launcher: random argv and option JSON, one process per case.

Each case runs the installed ``cern~cvmfs/cvmfs`` (or ``cern~eos/eos``) exactly as
kubelet does, through the replay helper of ``test_flexvolume`` that checks the
protocol: exactly one JSON object on stdout, nothing on stderr, the exit status
matching the status, a one-line message. On top: hostile targets are refused,
the message is readable and never echoes the planted secret, and nothing appears
outside the configured roots. A process per case costs 40-200 ms, so CI runs a few
hundred cases; the documented run takes ``HEPVOL_FUZZ_EXAMPLES=10000``.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SAMPLE, HepvolEnv
from tests.fuzz.conftest import (
    CANARIES,
    PLANTED_SECRET,
    Budget,
    WorldSnapshot,
    assert_readable,
    hostile_text,
    is_control,
    json_values,
    names,
)
from tests.integration.test_flexvolume import Kubelet, kubelet_options

CALLS = ("init", "mount", "unmount", "getvolumename", "attach", "mountdevice", "expandvolume")
USER_KEYS = ("repository", "tag", "hash", "date", "clientConfig", "instance", "path")
KUBELET_KEYS = (
    "kubernetes.io/readwrite",
    "kubernetes.io/pod.name",
    "kubernetes.io/secret/eostoken",
    "kubernetes.io/secret/krb5",
    "kubernetes.io/secret/other",
)
PLANTED = base64.b64encode(PLANTED_SECRET.encode()).decode()
_pods = itertools.count()


@pytest.fixture
def kubelet(hepvol_env: HepvolEnv) -> Kubelet:
    return Kubelet(hepvol_env)


class Places:
    """Pod dirs kubelet would make, and hostile targets (symlinks out, outside the roots)."""

    def __init__(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet
        self.targets = kubelet.env.targets
        self.outside = kubelet.env.workdir / "outside"
        self.outside.mkdir()
        (self.targets / "link").symlink_to(self.outside)
        self.hostile = [
            f"{self.targets}/link/vol",
            f"{self.targets}/link",
            f"{self.outside}/vol",
            f"{self.targets}/kubelet/../../outside/vol",
            str(self.targets),
            "relative/pod/vol",
            *CANARIES,
        ]

    def fresh_pod(self) -> str:
        return str(self.kubelet.pod_dir(uid=f"fuzz-{next(_pods)}"))

    def refused(self, target: str) -> bool:
        """Targets every mount must refuse."""
        parts = target.split("/")
        return (
            target in self.hostile
            or is_control(target)
            or not target.startswith(str(self.targets) + "/")
            or any(p in (".", "..") for p in parts)
        )


def no_nul(text: str) -> str:
    return text.replace("\x00", "")  # argv cannot carry NUL; the JSON escapes it


def option_maps(backend: str) -> st.SearchStrategy[str]:
    """The JSON argument of ``mount``: kubelet's map with fuzzed user keys, or anything else."""
    values = st.one_of(
        st.sampled_from((SAMPLE, f"{SAMPLE}@v1", "v1", "eosdemo", "/experiment")), names()
    )
    user = st.dictionaries(st.one_of(st.sampled_from(USER_KEYS), hostile_text()), values,
                           max_size=4)  # fmt: skip
    kubelet_keys = st.dictionaries(
        st.sampled_from(KUBELET_KEYS),
        st.one_of(st.sampled_from(("ro", "rw", PLANTED)), hostile_text()),
        max_size=2,
    )
    maps = st.builds(lambda u, k: json.dumps({**kubelet_options(), **u, **k}), user, kubelet_keys)
    return st.one_of(
        maps,
        maps,
        st.builds(lambda r: json.dumps(kubelet_options(repository=r)), names()),
        json_values().map(json.dumps),
        st.text(max_size=100).map(no_nul),
    )


def argvs(places: Places, backend: str) -> st.SearchStrategy[list[str]]:
    target = st.one_of(
        st.builds(lambda _: places.fresh_pod(), st.none()),
        st.sampled_from(places.hostile),
        hostile_text().map(no_nul),
        st.builds(lambda s: f"{places.targets}/kubelet/{no_nul(s)}", hostile_text()),
    )
    call = st.one_of(st.sampled_from(CALLS), hostile_text().map(no_nul))
    return st.one_of(
        st.tuples(st.just("mount"), target, option_maps(backend)).map(list),
        st.tuples(st.just("mount"), target, st.just("/dev/null"), option_maps(backend)).map(list),
        st.tuples(st.just("unmount"), target).map(list),
        st.lists(st.one_of(call, hostile_text().map(no_nul)), max_size=4),
    )


def check_call(kubelet: Kubelet, places: Places, argv: list[str], backend: str) -> None:
    reply = kubelet.call(*argv, driver=backend)  # asserts the protocol itself
    assert PLANTED not in json.dumps(reply), "the secret's base64 was echoed back"
    if reply["status"] == "Failure":
        assert_readable(str(reply.get("message", "")), limit=1001)
    mounts = argv[:1] == ["mount"] and len(argv) in (3, 4)
    if mounts and places.refused(argv[1]):
        assert reply["status"] == "Failure", f"mount at {argv[1]!r} was accepted"
    if mounts and reply["status"] == "Success":
        assert kubelet.unmount(Path(argv[1]), driver=backend)["status"] == "Success"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cvmfs", "eos"])
def test_random_calls_to_the_installed_driver(
    kubelet: Kubelet, hepvol_env: HepvolEnv, backend: str
) -> None:
    hepvol_env.make_repo("eosdemo", {"experiment/file.txt": "eos file\n"})
    places = Places(kubelet)
    snapshot = WorldSnapshot.take(hepvol_env)
    pods_dir = hepvol_env.targets / "kubelet" / "pods"

    budget = Budget(ci=250)

    @budget.settings
    @given(argv=argvs(places, backend))
    def one(argv: list[str]) -> None:
        budget.ran_one()
        check_call(kubelet, places, argv, backend)
        snapshot.check()

    one()
    budget.check()
    assert kubelet.mounts() == [], "every successful mount was unmounted by the case"
    assert list(places.outside.iterdir()) == []
    snapshot.check_ledger_matches_targets()
    assert pods_dir.is_dir()
